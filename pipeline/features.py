"""The Parquet feature store: layout, schemas, atomic shard commits, and readers.

Layout under the output folder OUT::

    features/<modality>/shard-00012.parquet   id, modality, uri, encoder, embedding [K, D]
    errors/<modality>-shard-00012.parquet     id, modality, uri, stage, error
    _progress/<modality>/run.json             what the shards were made with (resume guard)
    _progress/<modality>/shard-00012.json     commit marker: written last, names the counts
    summary.json

``embedding`` is the canonical Arrow extension ``arrow.fixed_shape_tensor`` (float16 or float32,
shape [K, D]); in Parquet it is a fixed-size list with the extension metadata, so plain pyarrow
reads it back as a tensor (``to_numpy_ndarray()`` gives (N, K, D)) and pandas as flat arrays of
K*D values. Every file appears atomically: nobody ever reads half a file.
"""
from __future__ import annotations

import io
import json
import os
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.modality import Modality
from pipeline.sources import filesystem

ERROR_SCHEMA = pa.schema([("id", pa.string()), ("modality", pa.string()), ("uri", pa.string()),
                          ("stage", pa.string()), ("error", pa.string())])
STAGES = ("read", "decode", "encode")


def feature_schema(k: int, dim: int, dtype: str) -> pa.Schema:
    """Schema of ``features/<modality>/*.parquet``."""
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([("id", pa.string()), ("modality", pa.string()), ("uri", pa.string()),
                      ("encoder", pa.string()), ("embedding", pa.fixed_shape_tensor(value, [k, dim]))])


def features_table(ids: list[str], modality: str, uris: list[str | None], encoder: str, flat: pa.Array,
                   k: int, dim: int) -> pa.Table:
    """A features table: ``flat`` is a fixed-size list array of K*D values per row (float16 or float32)."""
    dtype = "float16" if flat.type.value_type == pa.float16() else "float32"
    schema = feature_schema(k, dim, dtype)
    tensor = pa.ExtensionArray.from_storage(schema.field("embedding").type, flat)
    n = len(ids)
    return pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array([modality] * n, pa.string()),
                                 pa.array(uris, pa.string()), pa.array([encoder] * n, pa.string()), tensor], schema=schema)


def join(root: str, *parts: str) -> str:
    """Join path parts under a local or s3:// root."""
    return "/".join([root.rstrip("/"), *parts])


class FeatureStore:
    """Writes and reads one output folder (local or s3://)."""

    def __init__(self, root: str, storage: dict[str, Any]):
        self.root = root
        self.fs, self.path = filesystem(root, storage)
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        self.local = "file" in protocols

    def _p(self, *parts: str) -> str:
        return join(self.path, *parts)

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """Make ``rel`` appear whole or not at all (local: temp + rename; S3: one PUT)."""
        target = self._p(rel)
        self.fs.makedirs(os.path.dirname(target), exist_ok=True)
        if self.local:
            tmp = f"{os.path.dirname(target)}/.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, data)

    def write_table(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes_atomic(rel, buf.getvalue())

    def read_json(self, rel: str) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self._p(rel)))
        except FileNotFoundError:
            return None

    def write_json(self, rel: str, obj: dict) -> None:
        self.write_bytes_atomic(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def list(self, rel: str) -> list[str]:
        """Base names of the files in folder ``rel`` (empty when it does not exist)."""
        try:
            return sorted(os.path.basename(p.rstrip("/")) for p in self.fs.ls(self._p(rel), detail=False))
        except FileNotFoundError:
            return []

    def remove_modality(self, modality: Modality) -> None:
        """Delete every output of ``modality`` (for --overwrite); other modalities stay."""
        for rel in (f"features/{modality.value}", f"_progress/{modality.value}"):
            if self.fs.exists(self._p(rel)):
                self.fs.rm(self._p(rel), recursive=True)
        for name in self.list("errors"):
            if name.startswith(f"{modality.value}-shard-"):
                self.fs.rm(self._p("errors", name))
        self.fs.invalidate_cache()

    def remove_stale_temp_files(self, modality: Modality) -> int:
        """Delete temp files a killed run left behind (local only: S3 writes leave none)."""
        if not self.local:
            return 0
        removed = 0
        for rel in (f"features/{modality.value}", "errors", f"_progress/{modality.value}"):
            for name in self.list(rel):
                if name.startswith(".tmp-"):
                    self.fs.rm(self._p(rel, name))
                    removed += 1
        return removed

    # --- shards -------------------------------------------------------------------------------
    @staticmethod
    def shard_name(shard: int) -> str:
        return f"shard-{shard:05d}"

    def committed_shards(self, modality: Modality) -> dict[int, dict]:
        """Shard index → its commit marker, for shards already committed."""
        out = {}
        for name in self.list(f"_progress/{modality.value}"):
            if name.startswith("shard-") and name.endswith(".json"):
                marker = self.read_json(f"_progress/{modality.value}/{name}")
                if marker is not None:
                    out[int(name[6:11])] = marker
        return out

    def commit_shard(self, modality: Modality, shard: int, features: pa.Table, errors: pa.Table, dim: int) -> dict:
        """Write a shard's feature and error files, then its marker (the commit point)."""
        name = self.shard_name(shard)
        if features.num_rows:
            self.write_table(f"features/{modality.value}/{name}.parquet", features)
        if errors.num_rows:
            self.write_table(f"errors/{modality.value}-{name}.parquet", errors)
        stages = errors.column("stage").to_pylist() if errors.num_rows else []
        marker = {"features": features.num_rows, "errors": {s: stages.count(s) for s in STAGES}, "dim": dim,
                  "committed_at": time.time()}
        self.write_json(f"_progress/{modality.value}/{name}.json", marker)
        return marker


def read_features(root: str, modality: Modality | str, storage: dict[str, Any] | None = None) -> pa.Table:
    """All feature rows of ``modality`` under ``root`` as one table (plain pyarrow)."""
    store = FeatureStore(root, storage or {})
    modality = Modality.parse(str(modality))
    files = [f"features/{modality.value}/{n}" for n in store.list(f"features/{modality.value}") if n.endswith(".parquet")]
    tables = [pq.read_table(store._p(f), filesystem=store.fs) for f in files]
    return pa.concat_tables(tables) if tables else pa.table({})


def read_errors(root: str, storage: dict[str, Any] | None = None) -> pa.Table:
    """All error rows under ``root`` (every modality)."""
    store = FeatureStore(root, storage or {})
    files = [f"errors/{n}" for n in store.list("errors") if n.endswith(".parquet")]
    tables = [pq.read_table(store._p(f), filesystem=store.fs) for f in files]
    return pa.concat_tables(tables) if tables else ERROR_SCHEMA.empty_table()


def embeddings(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column of a features table as an (N, K, D) array."""
    column = table.column("embedding").combine_chunks()
    return column.to_numpy_ndarray()
