"""What the feature store's files must hold, checked as they are read.

A store is input like any other: written by another tool, damaged or tampered with. Every reader (training,
evaluation, the search index, the embed job's resume and summary) gets the store's files through
``pipeline.store.features``, which checks them here. A file that is not what the layout promises is a
``StoreError`` naming the file and what was expected: never a raw exception deep in a reader, and never a NaN row
that turns every weight to NaN in one optimiser step, or every search score.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

COLUMNS = {"id": pa.string(), "uri": pa.string(), "encoder": pa.string()}  # besides `embedding`, what readers use
LABELS = {"K": "K (tokens per item)", "D": "D (embedding size)", "dtype": "dtype", "encoder": "encoder"}


class StoreError(Exception):
    """A feature store file that is not what the store's layout promises; the message names the file and what was
    expected. The CLI exits 2 on it. Not a ValueError on purpose: readers take a ValueError from ``load_features``
    for "this modality has no features" and go on without it, which a damaged store must never pass for."""


def json_object(data: bytes, where: str) -> dict[str, Any]:
    """The JSON object in ``data``, the bytes of the file ``where``; StoreError when they hold none."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:  # a UnicodeDecodeError is a ValueError too
        raise StoreError(f"{where}: not JSON ({type(e).__name__}: {e}); expected a JSON object") from None
    if not isinstance(obj, dict):
        raise StoreError(f"{where}: holds {_short(obj)}, expected a JSON object")
    return obj


def check_marker(marker: dict[str, Any], where: str) -> dict[str, Any]:
    """``marker``, the commit marker in the file ``where``, when it holds the counts readers use; else StoreError."""
    features, errors, dim = marker.get("features"), marker.get("errors"), marker.get("dim")
    for key, ok, expected in (
            ("features", _count(features), "its number of feature rows (an integer >= 0)"),
            ("errors", isinstance(errors, dict) and all(map(_count, errors.values())),
             'its error rows per stage (e.g. {"read": 0, "decode": 1, "encode": 0})'),
            ("dim", dim is None or (_count(dim) and dim > 0), "the embedding size D (an integer > 0)")):
        if not ok:
            raise StoreError(f"{where}: {key!r} is {_short(marker.get(key))}, expected {expected} "
                             "(a shard's commit marker)")
    return marker


class ShardChecks:
    """The checks of one modality's feature shards as they are read: the columns and their types, and K, D, dtype
    and encoder name against what run.json, encoder.json, each shard's marker and the first shard read say; the
    row count its marker says; an id and finite values in every row."""

    def __init__(self, modality: str, run: dict[str, Any] | None, encoder: dict[str, Any] | None, progress: str):
        """``run`` and ``encoder``: the modality's run.json and encoder.json (None when absent), in the folder
        ``progress`` (for messages)."""
        run, record = run or {}, encoder or {}
        settings = record.get("encoder") if isinstance(record.get("encoder"), dict) else {}
        if record.get("modality", modality) != modality:
            raise StoreError(f"{progress}/encoder.json: 'modality' is {_short(record['modality'])}, expected "
                             f"{modality!r} (the folder it is in)")
        said = [("K", _stored_k(run), "run.json 'tokens'"), ("dtype", run.get("dtype"), "run.json 'dtype'"),
                ("encoder", run.get("encoder"), "run.json 'encoder'"),
                ("encoder", record.get("name"), "encoder.json 'name'"),
                ("K", _stored_k(settings), "encoder.json 'encoder.tokens'"),
                ("dtype", settings.get("dtype"), "encoder.json 'encoder.dtype'"),
                ("D", record.get("dim"), "encoder.json 'dim'")]  # not written by the embed job; another tool's may be
        self.claims = [(what, value, f"{progress}/{source}") for what, value, source in said if value is not None]
        # tokens: all → every shard has the `tokens` column (checked against its padding)
        self.sequence = "all" in (run.get("tokens"), settings.get("tokens"))
        self.first: str | None = None  # the first shard read: the ones after it must match it

    def read(self, fs: Any, path: str, where: str, marker: dict[str, Any], marker_where: str) -> pa.Table:
        """The feature shard at ``path`` on ``fs`` (``where`` in messages), read and checked against its ``marker``
        (in ``marker_where``); StoreError when it is missing, not Parquet, or fails ``check``."""
        try:
            table = pq.read_table(path, filesystem=fs)
        except FileNotFoundError:
            raise StoreError(f"{where}: missing, but its marker {marker_where} says {marker['features']} "
                             "rows") from None
        except pa.ArrowInvalid as e:
            raise StoreError(f"{where}: not a readable Parquet file ({e}); expected the shard's feature rows") from None
        self.check(table, where, marker, marker_where)
        return table

    def check(self, table: pa.Table, where: str, marker: dict[str, Any], marker_where: str) -> None:
        """StoreError unless the shard ``table``, read from ``where``, is what its marker (in ``marker_where``), the
        modality's records and the shards read before it say."""
        k, dim, dtype = embedding_shape(table, where)
        if table.num_rows != marker["features"]:
            raise StoreError(f"{where}: {table.num_rows} rows, but its marker {marker_where} says {marker['features']}")
        actual = {"K": k, "D": dim, "dtype": dtype, "encoder": _encoder(table, where)}
        own = [("D", marker["dim"], f"{marker_where} 'dim'")] if marker.get("dim") is not None else []
        for what, value, source in self.claims + own:
            if actual[what] != value:
                raise StoreError(f"{where}: {LABELS[what]} is {actual[what]!r}, expected {value!r} as {source} says")
        if self.first is None:
            self.first = where
            self.claims += [(what, actual[what], f"the first shard read, {where}") for what in LABELS]
        if self.sequence and "tokens" not in table.column_names:
            raise StoreError(f"{where}: no 'tokens' column, expected one (int32, each item's token count) in a store "
                             "made with tokens: all")
        check_rows(table, where)


def _stored_k(settings: dict[str, Any]) -> Any:
    """K of the store's embedding as an encoder's settings (or run.json) say: ``tokens``, or ``max_tokens`` when
    ``tokens`` is ``all``; None when they say nothing."""
    return settings.get("max_tokens") if settings.get("tokens") == "all" else settings.get("tokens")


def embedding_shape(table: pa.Table, where: str) -> tuple[int, int, str]:
    """(K, D, dtype) of the features table ``table`` read from ``where``; StoreError when a column readers use is
    missing or of another type."""
    names = table.column_names
    for name, kind in COLUMNS.items():
        found = table.schema.field(name).type if name in names else None
        if found != kind:
            raise StoreError(f"{where}: column {name!r} is {found or 'missing'}, expected {kind} "
                             "(a feature shard's columns: id, modality, uri, encoder, embedding)")
    found = table.schema.field("embedding").type if "embedding" in names else None
    if not (isinstance(found, pa.FixedShapeTensorType) and found.value_type in (pa.float16(), pa.float32())
            and len(found.shape) == 2 and found.permutation in (None, [0, 1])):
        raise StoreError(f"{where}: column 'embedding' is {found or 'missing'}, expected arrow.fixed_shape_tensor "
                         "of float16 or float32 with shape [K, D]")
    return found.shape[0], found.shape[1], "float16" if found.value_type == pa.float16() else "float32"


def check_rows(table: pa.Table, where: str) -> None:
    """StoreError naming the first bad row (and how many) when a row of ``table`` (read from ``where``) has no id,
    no embedding, or a non-finite value (NaN, Inf) in it: one such row turns every weight to NaN in one step."""
    ids, column = table.column("id"), table.column("embedding")
    if ids.null_count:
        raise StoreError(f"{where}: {ids.null_count} rows have no id; expected an id in every row")
    if column.null_count:
        bad = np.asarray(column.is_null().to_numpy(zero_copy_only=False))
        first = ids[int(np.argmax(bad))].as_py()
        raise StoreError(f"{where}: {int(bad.sum())} rows have no embedding, the first id {first!r}; expected a "
                         "[K, D] embedding in every row")
    values = column.combine_chunks().to_numpy_ndarray()
    # a row's float64 sum is finite exactly when all its values are (float16/32 values cannot overflow it), and it
    # needs no N x K x D mask in memory
    bad = ~np.isfinite(values.reshape(len(values), -1).sum(axis=1, dtype=np.float64))
    if bad.any():
        raise StoreError(f"{where}: {int(bad.sum())} rows hold non-finite embedding values (NaN or Inf), the first "
                         f"id {ids[int(np.argmax(bad))].as_py()!r}; expected finite values (re-embed the shard: delete "
                         "it and its marker, then rerun the embed job)")
    if values.shape[1] > 1:
        check_padding(table, values, where)


def check_padding(table: pa.Table, values: np.ndarray, where: str) -> None:
    """With K > 1 a zero token vector is padding (``pipeline.model.token_mask`` masks it): StoreError unless each row's
    zero vectors are its trailing ones, and their count is what its ``tokens`` column says (no column: none)."""
    nonzero = nonzero_tokens(values)  # (N, K)
    counts = nonzero.sum(axis=1)
    prefix = (np.arange(values.shape[1])[None, :] < counts[:, None]) == nonzero
    if "tokens" in table.column_names:
        column = table.column("tokens")
        if column.type != pa.int32() or column.null_count:
            raise StoreError(f"{where}: column 'tokens' is {column.type} with {column.null_count} nulls, expected "
                             "int32 in every row (each item's token count)")
        said = column.to_numpy()
    else:
        said = np.full(len(values), values.shape[1])
    bad = ~prefix.all(axis=1) | (counts != said) | (counts == 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise StoreError(f"{where}: {int(bad.sum())} rows have zero token vectors other than their padding, the first "
                         f"id {table.column('id')[i].as_py()!r} ({int(counts[i])} non-zero of {values.shape[1]}, "
                         f"expected its first {int(said[i])} non-zero and the rest zero); a zero vector is padding, "
                         "so such a row would lose tokens (re-embed the shard)")


def nonzero_tokens(values: np.ndarray) -> np.ndarray:
    """(N, K) True where a token vector of ``values`` (N, K, D) is not all zeros; a few rows at a time, so that no
    N x K x D mask is ever held (a shard of 1,024 VideoMAE sequences holds 1.2 G values)."""
    n, k, dim = values.shape
    step = max(1, 2**24 // max(1, k * dim))
    out = np.empty((n, k), bool)
    for i in range(0, n, step):
        out[i:i + step] = values[i:i + step].any(axis=2)
    return out


def _encoder(table: pa.Table, where: str) -> Any:
    """The one encoder name of the rows of ``table``; StoreError when they name several."""
    names = pc.unique(table.column("encoder")).to_pylist()
    if len(names) != 1:
        raise StoreError(f"{where}: its rows name {len(names)} encoders ({', '.join(map(repr, names[:5]))}), "
                         "expected one (a modality's features come from one frozen encoder)")
    return names[0]


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: Any) -> str:
    """``value`` as JSON, cut to 80 characters (a message names the bad value, not a whole file)."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
