"""The decode stage: read each item (size-limited) and decode it to the array its encoder takes.

Runs as Ray Data tasks ahead of the encoder actors, so CPU decoding overlaps encoding. Every
row comes out: decoded (``ok``) or with the failing ``stage`` (read/decode) and the error.
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline.config import LimitsConfig
from pipeline.media.errors import DecodeError
from pipeline.modalities import InputSpec
from pipeline.modality import Modality
from pipeline.sources import ReadError, check_file, local_path, read_limited

DECODED_SCHEMA = pa.schema([
    ("id", pa.string()), ("uri", pa.string()), ("shard", pa.int64()), ("seq", pa.int64()),
    ("ok", pa.bool_()), ("stage", pa.string()), ("error", pa.string()),
    ("payload", pa.large_binary()), ("shape", pa.list_(pa.int32())), ("dtype", pa.string()),
])


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Everything a decode task needs; plain data, shipped to workers."""

    modality: Modality
    spec: InputSpec
    limits: LimitsConfig
    storage: dict[str, Any]
    ffmpeg: str


def decode_batch(batch: pa.Table, settings: DecodeSettings) -> pa.Table:
    """Decode a batch of items (columns id, value, pre_error, shard, seq) into DECODED_SCHEMA rows."""
    cols = {name: [] for name in DECODED_SCHEMA.names}
    rows = batch.to_pylist()
    for row in rows:
        stage, error, array = "", None, None
        if row["pre_error"]:
            stage, error = "read", row["pre_error"]
        else:
            try:
                array = decode_item(row["value"], settings)
            except ReadError as e:
                stage, error = "read", str(e)
            except DecodeError as e:
                stage, error = "decode", str(e)
            except Exception as e:  # a decoder bug must not lose the row or fail the job
                stage, error = "decode", f"{type(e).__name__}: {e}"
        ok = error is None
        payload, shape, dtype = _pack(array) if ok else (b"", [], "")
        cols["id"].append(row["id"])
        cols["uri"].append(None if settings.modality.is_inline else row["value"])
        cols["shard"].append(row["shard"])
        cols["seq"].append(row["seq"])
        cols["ok"].append(ok)
        cols["stage"].append(stage)
        cols["error"].append(None if ok else f"{settings.modality.value}: {error}")
        cols["payload"].append(payload)
        cols["shape"].append(shape)
        cols["dtype"].append(dtype)
    return pa.table(cols, schema=DECODED_SCHEMA)


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


def _pack(array: Any) -> tuple[bytes, list[int], str]:
    if isinstance(array, str):
        return array.encode("utf-8"), [], "str"
    array = np.ascontiguousarray(array)
    return array.tobytes(), list(array.shape), array.dtype.str


def unpack(payload: bytes, shape: list[int], dtype: str) -> Any:
    """Inverse of the decode stage's packing: str for text, the decoded array otherwise."""
    if dtype == "str":
        return payload.decode("utf-8")
    return np.frombuffer(payload, dtype=np.dtype(dtype)).reshape(shape)
