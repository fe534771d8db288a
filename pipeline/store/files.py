"""Local files that appear whole or not at all, and JSON beside them (torch-free: the gateway reads artifacts)."""
from __future__ import annotations

import json
import os
import uuid
from typing import Any


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Make the local file ``path`` appear whole or not at all: a temp file beside it (named after it, so a
    cleanup can tell whose leftover it is), fsync, rename."""
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
