"""The Parquet feature store: layout, schemas, atomic shard commits, and readers.

Layout under the output folder OUT::

    features/<modality>/shard-00012.parquet   id, modality, uri, encoder, embedding [K, D] (, tokens)
    errors/<modality>-shard-00012.parquet     id, modality, uri, stage, error
    _progress/<modality>/run.json             what the shards were made with (resume guard)
    _progress/<modality>/shard-00012.json     commit marker: written last, names the counts
    _parts/<modality>/<uuid>.arrows           rows in flight: one file per encoder call, a piece (an Arrow
                                              IPC stream) per shard; a shard's commit reads its pieces into
                                              its two files; a part goes once all its shards are marked
    summary.json

A shard is the items of ``shard_size`` consecutive manifest rows (each modality its own).

``embedding`` is the canonical Arrow extension ``arrow.fixed_shape_tensor`` (float16 or float32,
shape [K, D]); in Parquet it is a fixed-size list with the extension metadata, so plain pyarrow
reads it back as a tensor (``to_numpy_ndarray()`` gives (N, K, D)) and pandas as flat arrays of
K*D values. With ``tokens: all`` an item keeps its own token sequence (up to ``max_tokens`` = K): its tokens, then
zero vectors up to K, and its length in an int32 ``tokens`` column; readers mask the zero vectors
(``pipeline.model.token_mask``). A padded tensor rather than a list column: every reader keeps one shape, and
``benchmarks/store_layout.py`` measures both. Every file appears atomically: nobody ever reads half a file.

Every file is checked as it is read (``pipeline.store.integrity``): a store written by another tool, damaged or
tampered with is a ``StoreError`` naming the file and what was expected. Only the store's own spelling of a
shard's name (``shard-`` and at least five ASCII digits) names a shard.
"""
from __future__ import annotations

import io
import json
import logging
import os
import time
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.modality import Modality
from pipeline.store.files import write_bytes_atomic
from pipeline.store.integrity import ShardChecks, check_marker, json_object, nonzero_tokens
from pipeline.store.integrity import StoreError  # noqa: F401  (readers and the CLI take it from here)
from pipeline.store.sources import filesystem

log = logging.getLogger(__name__)

ERROR_SCHEMA = pa.schema([("id", pa.string()), ("modality", pa.string()), ("uri", pa.string()),
                          ("stage", pa.string()), ("error", pa.string())])
STAGES = ("read", "decode", "encode")


def feature_schema(k: int, dim: int, dtype: str, sequence: bool = False) -> pa.Schema:
    """Schema of ``features/<modality>/*.parquet``; a ``sequence`` store (``tokens: all``) adds ``tokens``."""
    value = pa.float16() if dtype == "float16" else pa.float32()
    fields = [("id", pa.string()), ("modality", pa.string()), ("uri", pa.string()),
              ("encoder", pa.string()), ("embedding", pa.fixed_shape_tensor(value, [k, dim]))]
    return pa.schema(fields + ([("tokens", pa.int32())] if sequence else []))


def features_table(ids: list[str], modality: str, uris: list[str | None], encoder: str, flat: pa.Array,
                   k: int, dim: int, sequence: bool = False) -> pa.Table:
    """A features table: ``flat`` is a fixed-size list array of K*D values per row (float16 or float32). With
    ``sequence`` (``tokens: all``) each row is a token sequence padded with zero vectors to K, and the ``tokens``
    column holds its length (its leading non-zero vectors)."""
    dtype = "float16" if flat.type.value_type == pa.float16() else "float32"
    schema = feature_schema(k, dim, dtype, sequence)
    tensor = pa.ExtensionArray.from_storage(schema.field("embedding").type, flat)
    n = len(ids)
    columns = [pa.array(ids, pa.string()), pa.array([modality] * n, pa.string()),
               pa.array(uris, pa.string()), pa.array([encoder] * n, pa.string()), tensor]
    if sequence:
        columns.append(pa.array(token_counts(tensor.to_numpy_ndarray()), pa.int32()))
    return pa.Table.from_arrays(columns, schema=schema)


def token_counts(values: np.ndarray) -> np.ndarray:
    """(N,) number of non-zero token vectors of each (K, D) row of ``values`` (N, K, D): a sequence's length."""
    return nonzero_tokens(values).sum(axis=1)


def write_parquet(table: pa.Table, where: Any) -> None:
    """``table`` as the store writes a file: zstd, dictionary encoding for every column but ``embedding``. Float16
    vectors never outgrow a dictionary (65,536 values), so pyarrow would keep one, and reading it back decodes 2.3-4.1x
    slower than plain values for 2% more bytes (``benchmarks/store_layout.py``)."""
    pq.write_table(table, where, compression="zstd", use_dictionary=[c for c in table.column_names if c != "embedding"])


def _name(modality: Modality | str) -> str:
    return modality.value if isinstance(modality, Modality) else str(modality)


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

    def where(self, rel: str) -> str:
        """``rel`` as messages name it: under the root the user gave (a local folder or s3:// URI)."""
        return join(self.root, rel)

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """Make ``rel`` appear whole or not at all (local: temp + rename; S3: one PUT)."""
        target = self._p(rel)
        self.fs.makedirs(os.path.dirname(target), exist_ok=True)
        if self.local:  # the temp file names its target: a run cleans up only its own modality's leftovers
            write_bytes_atomic(target, data)
        else:
            self.fs.pipe_file(target, data)

    def write_table(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        write_parquet(table, buf)
        self.write_bytes_atomic(rel, buf.getvalue())

    def read_json(self, rel: str) -> dict | None:
        """The JSON object in ``rel``, or None when there is no such file; StoreError when it holds none."""
        try:
            data = self.fs.cat_file(self._p(rel))
        except FileNotFoundError:
            return None
        return json_object(data, self.where(rel))

    def write_json(self, rel: str, obj: dict) -> None:
        self.write_bytes_atomic(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def list(self, rel: str) -> list[str]:
        """Base names of the files in folder ``rel`` (empty when it does not exist)."""
        try:
            return sorted(os.path.basename(p.rstrip("/")) for p in self.fs.ls(self._p(rel), detail=False))
        except FileNotFoundError:
            return []

    def remove_modality(self, modality: Modality | str) -> None:
        """Delete every output of ``modality`` (for --overwrite); other modalities stay."""
        name = _name(modality)
        for rel in (f"features/{name}", f"_progress/{name}", f"_parts/{name}"):
            if self.fs.exists(self._p(rel)):
                self.fs.rm(self._p(rel), recursive=True)
        for entry in self.list("errors"):
            if entry.startswith(f"{name}-shard-"):
                self.fs.rm(self._p("errors", entry))
        self.fs.invalidate_cache()

    def remove_stale_temp_files(self, modality: Modality | str) -> int:
        """Delete temp files a killed run of ``modality`` left behind (local only: S3 writes leave none).

        ``errors/`` is shared by every modality: there only this modality's temp files go, so a run on
        another modality of the same output keeps its files in flight.
        """
        if not self.local:
            return 0
        removed = 0
        name = _name(modality)
        for rel, prefix in ((f"features/{name}", ".tmp-"), ("errors", f".tmp-{name}-shard-"), (f"_progress/{name}", ".tmp-")):
            for entry in self.list(rel):
                if entry.startswith(prefix):
                    self.fs.rm(self._p(rel, entry))
                    removed += 1
        return removed

    # --- shards -------------------------------------------------------------------------------
    @staticmethod
    def shard_name(shard: int) -> str:
        return f"shard-{shard:05d}"

    @staticmethod
    def shard_index(name: str) -> int | None:
        """The shard number in a file name like ``shard-00012.json`` or ``image-shard-123456.parquet``. Only ASCII
        digits name a shard: ``str.isdigit`` and ``int`` also take other scripts' digits (``shard-٠٠٠١٢``)."""
        stem = name.rsplit("shard-", 1)[-1].split(".", 1)[0]
        return int(stem) if "shard-" in name and stem.isascii() and stem.isdigit() else None

    def committed_indexes(self, modality: Modality | str) -> list[int]:
        """Numbers of the shards already committed, from a listing of their markers alone (a marker appears
        whole or not at all): O(shards / 1000) requests on S3, no marker read."""
        return sorted(self._markers(modality))

    def committed_shards(self, modality: Modality | str) -> dict[int, dict]:
        """Shard index → its commit marker, for shards already committed. The markers are read in one
        ``cat`` call (on S3, many requests in flight instead of one GET after another)."""
        names = self._markers(modality)
        paths = [self._p(f"_progress/{_name(modality)}/{name}") for name in names.values()]
        found = self.fs.cat(paths, on_error="omit") if paths else {}
        by_name = {os.path.basename(path.rstrip("/")): data for path, data in found.items()}
        out = {}
        for index, name in names.items():  # StoreError for a marker that is not one (not JSON, no counts)
            if name in by_name:
                where = self.where(f"_progress/{_name(modality)}/{name}")
                out[index] = check_marker(json_object(by_name[name], where), where)
        return dict(sorted(out.items()))

    def shard_marker(self, modality: Modality | str, shard: int) -> dict:
        """Shard ``shard``'s commit marker; StoreError when it has none (not committed) or it is not one."""
        rel = f"_progress/{_name(modality)}/{self.shard_name(shard)}.json"
        data = self.read_json(rel)
        if data is None:
            raise StoreError(f"{self.where(rel)}: missing (shard {shard} of {_name(modality)} is not committed)")
        return check_marker(data, self.where(rel))

    def _markers(self, modality: Modality | str) -> dict[int, str]:
        """Shard index → its marker's file name. A name only like one (``shard-12.json``, ``shard-٠٠٠١٢.json``)
        names no shard: ignored with a warning, as if absent. Refused, a stray file would stop every reader; read
        as shard 12's marker, it could stand in for the real one or make an uncommitted shard look committed."""
        out = {}
        for name in self.list(f"_progress/{_name(modality)}"):
            if not name.startswith("shard-") or not name.endswith(".json"):
                continue  # run.json, encoder.json, temp files
            index = self.shard_index(name)
            if index is None or name != f"{self.shard_name(index)}.json":
                log.warning("%s: not a shard's marker name (expected shard- and 5 ASCII digits, e.g. "
                            "shard-00012.json); ignored", self.where(f"_progress/{_name(modality)}/{name}"))
                continue
            out[index] = name
        return out

    def feature_file(self, modality: Modality | str, shard: int) -> str:
        return f"features/{_name(modality)}/{self.shard_name(shard)}.parquet"

    def error_file(self, modality: Modality | str, shard: int) -> str:
        return f"errors/{_name(modality)}-{self.shard_name(shard)}.parquet"

    def commit_shard(self, modality: Modality | str, shard: int, features: pa.Table, errors: pa.Table, dim: int) -> dict:
        """Write a shard's feature and error files, then its marker (the commit point)."""
        self.write_shard_files(modality, shard, features, errors)
        stages = errors.column("stage").to_pylist() if errors.num_rows else []
        return self.write_marker(modality, shard, {"features": features.num_rows, "dim": dim, "unique": None,
                                                   "errors": {s: stages.count(s) for s in STAGES}})

    def write_shard_files(self, modality: Modality | str, shard: int, features: pa.Table, errors: pa.Table) -> None:
        """A shard's feature and error files, before its marker.

        Both files are replaced, or removed when the shard has no such rows: a redo after a crash
        before the marker may split the items differently, and a stale file of the crashed attempt
        must not survive beside the new one. Readers read only shards that have a marker.
        """
        for rel, table in ((self.feature_file(modality, shard), features), (self.error_file(modality, shard), errors)):
            if table.num_rows:
                self.write_table(rel, table)
            elif self.fs.exists(self._p(rel)):
                self.fs.rm(self._p(rel))

    def write_marker(self, modality: Modality | str, shard: int, counts: dict) -> dict:
        """The commit point: the shard's marker (its counts: features, errors per stage, dim, unique media)."""
        marker = {**counts, "committed_at": time.time()}
        self.write_json(f"_progress/{_name(modality)}/{self.shard_name(shard)}.json", marker)
        return marker

    def parts_dir(self, modality: Modality | str) -> str:
        """Where the encoder actors put ``modality``'s rows in flight."""
        return f"_parts/{_name(modality)}"

    def remove_parts(self, modality: Modality | str) -> None:
        """Delete every part file of ``modality`` (leftovers of a run that stopped, or at the end of a run)."""
        try:
            self.fs.rm(self._p(self.parts_dir(modality)), recursive=True)
        except FileNotFoundError:
            pass

    def remove_files(self, rels: list[str]) -> None:
        """Delete the files ``rels`` (one request per 1,000 on S3); ones already gone are not an error."""
        paths = [self._p(rel) for rel in rels]
        if not paths:
            return
        try:
            self.fs.rm(paths)
        except FileNotFoundError:  # one of them is gone: the rest one by one
            for path in paths:
                try:
                    self.fs.rm_file(path)
                except FileNotFoundError:
                    pass

    # --- per-modality records ------------------------------------------------------------------
    def run_record(self, modality: Modality | str) -> dict | None:
        """What ``modality``'s shards were made with (the resume guard), or None before its first run."""
        return self.read_json(f"_progress/{_name(modality)}/run.json")

    def encoder_record(self, modality: Modality | str) -> dict | None:
        """The frozen encoder ``modality``'s features come from (what a model artifact rebuilds), or None."""
        return self.read_json(f"_progress/{_name(modality)}/encoder.json")

    def start_run(self, modality: Modality | str, fingerprint: dict, encoder: dict) -> None:
        """Record a new run of ``modality``: its encoder, then its fingerprint (which marks the run started)."""
        self.write_json(f"_progress/{_name(modality)}/encoder.json", encoder)
        self.write_json(f"_progress/{_name(modality)}/run.json", fingerprint)

    def has_features(self, modality: Modality | str) -> bool:
        """Whether any committed shard of ``modality`` holds feature rows."""
        return bool(self.committed_files(modality, "features"))

    def modalities(self) -> list[str]:
        """Names of the modalities with a run in this store."""
        return [name for name in self.list("_progress") if self.run_record(name) is not None]

    def committed_files(self, modality: Modality | str, kind: str) -> list[str]:
        """The ``kind`` ("features" or "errors") files of committed shards of ``modality``, in shard order;
        files of shards without a marker (a crashed commit) are never read."""
        files = []
        for shard, marker in self.committed_shards(modality).items():
            rows = marker["features"] if kind == "features" else sum(marker["errors"].values())
            if rows:
                files.append(self.feature_file(modality, shard) if kind == "features" else self.error_file(modality, shard))
        return files


def read_features(root: str, modality: Modality | str, storage: dict[str, Any] | None = None) -> pa.Table:
    """All feature rows of ``modality``'s committed shards under ``root`` as one table (plain pyarrow).

    Each shard is checked as it is read (``ShardChecks``): StoreError naming the file and what was expected when
    a column is missing or of another type; when K, D, dtype or encoder name differ from what run.json,
    encoder.json, its marker or the first shard say; when it has another row count than its marker says; or
    when a row holds a NaN or Inf (the message names the first such id and how many).
    """
    tables = list(iter_features(root, modality, storage))
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def iter_features(root: str, modality: Modality | str, storage: dict[str, Any] | None = None) -> Iterator[pa.Table]:
    """``modality``'s committed feature shards under ``root``, one checked table at a time (as ``read_features``
    checks them): a whole store can be checked holding one shard."""
    store = FeatureStore(root, storage or {})
    name = _name(modality)
    checks = ShardChecks(name, store.run_record(name), store.encoder_record(name), store.where(f"_progress/{name}"))
    for shard, marker in store.committed_shards(name).items():
        if marker["features"]:
            rel, marker_rel = store.feature_file(name, shard), f"_progress/{name}/{store.shard_name(shard)}.json"
            yield checks.read(store.fs, store._p(rel), store.where(rel), marker, store.where(marker_rel))


def read_shard(store: FeatureStore, modality: Modality | str, shard: int) -> tuple[pa.Table, dict]:
    """One committed feature shard, checked as ``read_features`` checks each, and its marker."""
    name = _name(modality)
    marker = store.shard_marker(name, shard)
    checks = ShardChecks(name, store.run_record(name), store.encoder_record(name), store.where(f"_progress/{name}"))
    rel, marker_rel = store.feature_file(name, shard), f"_progress/{name}/{store.shard_name(shard)}.json"
    return checks.read(store.fs, store._p(rel), store.where(rel), marker, store.where(marker_rel)), marker


def read_errors(root: str, storage: dict[str, Any] | None = None) -> pa.Table:
    """All error rows of committed shards under ``root`` (every modality)."""
    store = FeatureStore(root, storage or {})
    files = [f for m in store.modalities() for f in store.committed_files(m, "errors")]
    tables = [pq.read_table(store._p(f), filesystem=store.fs) for f in files]
    return pa.concat_tables(tables) if tables else ERROR_SCHEMA.empty_table()


def embeddings(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column of a features table as an (N, K, D) array."""
    column = table.column("embedding").combine_chunks()
    return column.to_numpy_ndarray()
