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


def decode_item(value: str, s: DecodeSettings) -> Any:
    """Decode one manifest value with its modality's decoder: inline text as is, media from its URI
    (read into memory, size-limited, or given to ffmpeg as a local file)."""
    spec = s.modality.spec
    if spec.inline:
        return spec.decode(value, s)
    if spec.reads == "bytes":
        return spec.decode(read_limited(value, s.storage, s.limits.max_file_bytes), s)
    with _local_file(value, s) as path:
        return spec.decode(path, s)


def decode_bytes(data: bytes, s: DecodeSettings) -> Any:
    """Decode media given as bytes (an API payload) with its modality's decoder: from memory where it reads
    bytes, else through a private temporary file whose path no error message names. Raises DecodeError."""
    spec = s.modality.spec
    if spec.inline:
        raise DecodeError(f"{s.modality} is given as a string, not bytes")
    if not data:
        raise DecodeError(f"empty input (0 bytes): expected {s.modality} media")
    if len(data) > s.limits.max_file_bytes:
        raise DecodeError(f"{len(data)} bytes, over limits.max_file_bytes={s.limits.max_file_bytes}")
    if spec.reads == "bytes":
        return spec.decode(data, s)
    with _temp_copy(data) as path:
        return spec.decode(path, s)


@contextlib.contextmanager
def _local_file(uri: str, s: DecodeSettings) -> Iterator[str]:
    """A local path for ffmpeg: the file itself when local (after the same checks), else a temp copy."""
    path = local_path(uri)
    if path is not None:
        check_file(uri, s.storage, s.limits.max_file_bytes)
        yield path
        return
    with _temp_copy(read_limited(uri, s.storage, s.limits.max_file_bytes)) as copy:
        yield copy


@contextlib.contextmanager
def _temp_copy(data: bytes) -> Iterator[str]:
    """``data`` in a private temp file, removed afterwards. No suffix from a URI or MIME type: ffmpeg opens
    it only through the modality's allow-listed demuxers anyway, and no message names its path."""
    with tempfile.NamedTemporaryFile(prefix="oneencoder-", suffix=".media") as fh:
        fh.write(data)
        fh.flush()
        yield fh.name
