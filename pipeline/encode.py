"""The encode stage: a stateful Ray Data actor holding one frozen encoder."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from pipeline.config import EncoderConfig
from pipeline.decode import unpack
from pipeline.encoders.frozen import FrozenEncoder
from pipeline.encoders.presets import EncoderRef

log = logging.getLogger(__name__)


def encoded_schema(k: int, dim: int, dtype: str) -> pa.Schema:
    """Rows leaving the encoder: decode columns minus payload, plus the flat (K*D) embedding."""
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([
        ("id", pa.string()), ("uri", pa.string()), ("shard", pa.int64()), ("seq", pa.int64()),
        ("ok", pa.bool_()), ("stage", pa.string()), ("error", pa.string()),
        ("embedding", pa.list_(value, k * dim)),
    ])


class EncodeActor:
    """Loads the encoder once (in ``__init__``); each call embeds the decoded rows of a batch.

    A batch whose forward pass fails is retried item by item, so one bad input becomes one
    ``encode`` error row and its neighbours still get features.
    """

    def __init__(self, ref: EncoderRef, enc: EncoderConfig):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # this worker's console: no per-load reports or bars
        hf_logging.disable_progress_bar()
        self.ref, self.enc = ref, enc
        self.encoder = FrozenEncoder(ref, enc)
        self.schema = encoded_schema(enc.tokens, self.encoder.dim, enc.dtype)
        self.np_dtype = np.float16 if enc.dtype == "float16" else np.float32

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        width = self.enc.tokens * self.encoder.dim
        vectors: list[np.ndarray | None] = [None] * len(rows)
        errors: dict[int, str] = {}
        todo = [i for i, r in enumerate(rows) if r["ok"]]
        inputs = {i: unpack(rows[i]["payload"], rows[i]["shape"], rows[i]["dtype"]) for i in todo}
        try:
            self._embed_into(todo, inputs, vectors, errors)
        except Exception:  # isolate the failing item(s)
            for i in todo:
                try:
                    self._embed_into([i], inputs, vectors, errors)
                except Exception as e:
                    errors[i] = f"{self.ref.modality.value}: {type(e).__name__}: {str(e)[:300]}"
        out = {name: [] for name in self.schema.names}
        flat, valid = np.zeros((len(rows), width), self.np_dtype), []
        for i, row in enumerate(rows):
            ok = row["ok"] and i not in errors and vectors[i] is not None
            for name in ("id", "uri", "shard", "seq"):
                out[name].append(row[name])
            out["ok"].append(ok)
            out["stage"].append("" if ok else (row["stage"] or "encode"))
            out["error"].append(None if ok else (row["error"] or errors.get(i)))
            if ok:
                flat[i] = vectors[i]
            valid.append(ok)
        values = pa.array(flat.ravel(), type=self.schema.field("embedding").type.value_type)
        emb = pa.FixedSizeListArray.from_arrays(values, width, mask=pa.array([not v for v in valid]))
        cols = [pa.array(out[n], type=self.schema.field(n).type) for n in self.schema.names[:-1]]
        return pa.Table.from_arrays(cols + [emb], schema=self.schema)

    def _embed_into(self, idx: list[int], inputs: dict, vectors: list, errors: dict[int, str]) -> None:
        if not idx:
            return
        pooled = self.encoder.embed([inputs[i] for i in idx]).astype(self.np_dtype)
        for j, i in enumerate(idx):
            vec = pooled[j].reshape(-1)
            if not np.isfinite(vec).all():
                errors[i] = (f"{self.ref.modality.value}: encoder output is not finite"
                             + (" in float16 (use dtype: float32)" if self.np_dtype == np.float16 else ""))
            else:
                vectors[i] = vec
