"""Reading and decoding one item with its modality's decoder, from a URI/path or from bytes.

Shared by every caller through ``pipeline.item_encoder`` (the embed job's decode tasks, load_model, serving).
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from typing import Any, Iterator

from pipeline.config import LimitsConfig
from pipeline.media.errors import DecodeError
from pipeline.media.ffmpeg import pipe_ok
from pipeline.modalities import InputSpec
from pipeline.modality import Modality
from pipeline.store.sources import check_file, local_path, read_limited


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Everything a decode task needs; plain data, shipped to workers."""

    modality: Modality
    spec: InputSpec
    limits: LimitsConfig
    storage: dict[str, Any]
    ffmpeg: str
    http: dict[str, Any] | None = None  # HttpConfig as a dict: http(s) URLs are fetched; None: refused
    ffmpeg_threads: int = 0             # decoder/filter threads per ffmpeg run; 0: ffmpeg's choice (a core each)


def decode_item(value: str, s: DecodeSettings) -> Any:
    """Decode one manifest value with its modality's decoder: inline text as is, media from its URI: a local file
    is given to ffmpeg as it is (after the size checks), anything else is read into memory, size-limited (one
    ranged GET on S3), then decoded as ``decode_bytes`` does."""
    spec = s.modality.spec
    if spec.inline:
        return spec.decode(value, s)
    path = local_path(value)
    if spec.reads == "file" and path is not None:
        check_file(value, s.storage, s.limits.max_file_bytes)
        return spec.decode(path, s)
    data = read_limited(value, s.storage, s.limits.max_file_bytes, s.http)
    return spec.decode(data, s) if spec.reads == "bytes" else decode_bytes(data, s)


def decode_bytes(data: bytes, s: DecodeSettings) -> Any:
    """Decode media given as bytes (an API payload, a tar member, a fetched object) with its modality's decoder:
    from memory where it reads bytes, on ffmpeg's stdin where the container needs no seeking, else through a
    private temporary file whose path no error message names. Raises DecodeError."""
    spec = s.modality.spec
    if spec.inline:
        raise DecodeError(f"{s.modality} is given as a string, not bytes")
    if not data:
        raise DecodeError(f"empty input (0 bytes): expected {s.modality} media")
    if len(data) > s.limits.max_file_bytes:
        raise DecodeError(f"{len(data)} bytes, over limits.max_file_bytes={s.limits.max_file_bytes}")
    if spec.reads == "bytes" or pipe_ok(data):
        return spec.decode(data, s)
    with _temp_copy(data) as path:
        return spec.decode(path, s)


@contextlib.contextmanager
def _temp_copy(data: bytes) -> Iterator[str]:
    """``data`` in a private temp file, removed afterwards. No suffix from a URI or MIME type: ffmpeg opens
    it only through the modality's allow-listed demuxers anyway, and no message names its path."""
    with tempfile.NamedTemporaryFile(prefix="oneencoder-", suffix=".media") as fh:
        fh.write(data)
        fh.flush()
        yield fh.name
