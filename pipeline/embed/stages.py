"""The embed job's Ray Data stages, thin adapters over ``pipeline.item_encoder``: decode tasks, then encoder actors.

Decoding runs as tasks ahead of the actors, so CPU decoding overlaps encoding; decoded arrays travel
between them as bytes + shape + dtype. Every row comes out: with its features (``ok``), or with the
failing ``stage`` (read/decode/encode) and the error.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import EncoderConfig
from pipeline.encoders.presets import EncoderRef
from pipeline.item_encoder import ItemEncoder, ItemError, decode_raw
from pipeline.media.decode import DecodeSettings

log = logging.getLogger(__name__)

DECODED_SCHEMA = pa.schema([
    ("id", pa.string()), ("uri", pa.string()), ("shard", pa.int64()), ("seq", pa.int64()),
    ("ok", pa.bool_()), ("stage", pa.string()), ("error", pa.string()),
    ("payload", pa.large_binary()), ("shape", pa.list_(pa.int32())), ("dtype", pa.string()),
])


def decode_batch(batch: pa.Table, settings: DecodeSettings) -> pa.Table:
    """Decode a batch of items (columns id, value, pre_error, shard, seq) into DECODED_SCHEMA rows."""
    cols: dict[str, list] = {name: [] for name in DECODED_SCHEMA.names}
    for row in batch.to_pylist():
        stage, error, packed = "", None, (b"", [], "")
        if row["pre_error"]:
            stage, error = "read", row["pre_error"]
        else:
            try:
                packed = _pack(decode_raw(row["value"], settings))
            except ItemError as e:
                stage, error = e.stage, e.reason
        ok = error is None
        cols["id"].append(row["id"])
        cols["uri"].append(None if settings.modality.is_inline else row["value"])
        cols["shard"].append(row["shard"])
        cols["seq"].append(row["seq"])
        cols["ok"].append(ok)
        cols["stage"].append(stage)
        cols["error"].append(None if ok else f"{settings.modality}: {error}")
        for name, value in zip(("payload", "shape", "dtype"), packed):
            cols[name].append(value)
    return pa.table(cols, schema=DECODED_SCHEMA)


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


def encoded_schema(k: int, dim: int, dtype: str) -> pa.Schema:
    """Rows leaving the encoder: decode columns minus payload, plus the flat (K*D) embedding."""
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([
        ("id", pa.string()), ("uri", pa.string()), ("shard", pa.int64()), ("seq", pa.int64()),
        ("ok", pa.bool_()), ("stage", pa.string()), ("error", pa.string()),
        ("embedding", pa.list_(value, k * dim)),
    ])


class EncodeActor:
    """Loads the modality's ItemEncoder once (in ``__init__``); each call encodes the decoded rows of a batch
    (its own failures isolated per item by the ItemEncoder)."""

    def __init__(self, ref: EncoderRef, enc: EncoderConfig, settings: DecodeSettings):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # this worker's console: no per-load reports or bars
        hf_logging.disable_progress_bar()
        self.enc = enc
        self.np_dtype = np.float16 if enc.dtype == "float16" else np.float32
        self.items = ItemEncoder(ref, enc, settings, dtype=self.np_dtype, batch_size=enc.batch_size)
        self.schema = encoded_schema(enc.tokens, self.items.frozen.dim, enc.dtype)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        width = self.schema.field("embedding").type.list_size
        todo = [i for i, r in enumerate(rows) if r["ok"]]
        results = dict(zip(todo, self.items.encode([unpack(rows[i]["payload"], rows[i]["shape"], rows[i]["dtype"])
                                                    for i in todo])))
        out: dict[str, list] = {name: [] for name in self.schema.names[:-1]}
        flat, valid = np.zeros((len(rows), width), self.np_dtype), []
        for i, row in enumerate(rows):
            result = results.get(i)
            ok = row["ok"] and not isinstance(result, ItemError)
            for name in ("id", "uri", "shard", "seq"):
                out[name].append(row[name])
            out["ok"].append(ok)
            out["stage"].append("" if ok else (row["stage"] or "encode"))
            out["error"].append(None if ok else (row["error"] or result.reason))
            if ok:
                flat[i] = result.vector
            valid.append(ok)
        values = pa.array(flat.ravel(), type=self.schema.field("embedding").type.value_type)
        emb = pa.FixedSizeListArray.from_arrays(values, width, mask=pa.array([not v for v in valid]))
        cols = [pa.array(out[n], type=self.schema.field(n).type) for n in self.schema.names[:-1]]
        return pa.Table.from_arrays(cols + [emb], schema=self.schema)
