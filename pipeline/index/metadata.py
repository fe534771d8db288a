"""Metadata columns kept beside each indexed vector, for ``/v1/search``'s ``where`` filter.

The index job's ``metadata: [col, ...]`` names columns of the manifest the store was embedded from (its run.json
``manifest``: JSONL, CSV or Parquet). Each segment's build task reads them for its own ids (one streaming pass
over the manifest, keeping only those rows) into the segment's ``ids.arrow``. Values are kept as text (a number
or a boolean as JSON writes it: ``2024``, ``true``), and a filter compares text with text, so ``{"year": 2024}``
and ``{"year": "2024"}`` ask the same; a row without the column holds null and matches nothing.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import ConfigError

MAX_COLUMNS = 16
MAX_VALUES = 100  # values one ``where`` column may list
RESERVED = ("id", "uri")


def as_text(value: Any) -> str | None:
    """A metadata value as the index keeps it: strings as they are, numbers and booleans as JSON writes them,
    nested values as compact JSON, null as None."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def manifest_kind(uri: str) -> str:
    from pipeline.store.manifest import manifest_format

    kind = manifest_format(uri)
    if kind not in ("jsonl", "csv", "parquet"):
        raise ConfigError(f"metadata: the store was embedded from {uri} ({kind}); metadata columns are read from a "
                          "JSONL, CSV or Parquet manifest")
    return kind


def check_columns(uri: str, columns: list[str], options: dict[str, Any]) -> None:
    """ConfigError naming the columns the manifest ``uri`` does not have (its header; for JSONL, its first row's
    keys) and the ones it has."""
    bad = [c for c in columns if c in RESERVED]
    if bad:
        raise ConfigError(f"metadata: {bad[0]!r} is always kept; name other manifest columns")
    seen = _header(uri, options)
    missing = [c for c in columns if c not in seen]
    if missing:
        raise ConfigError(f"metadata: manifest {uri} has no column {', '.join(map(repr, missing))} (its columns: "
                          f"{', '.join(seen)})")


def read_metadata(uri: str, columns: list[str], ids: pa.Array, options: dict[str, Any]) -> pa.Table:
    """The ``columns`` of the manifest rows whose id is in ``ids``, as text, in ``ids``' order (null where a row
    lacks the column or its id is not in the manifest)."""
    wanted = {i: n for n, i in enumerate(ids.to_pylist())}
    values = {c: [None] * len(wanted) for c in columns}
    for row_id, row in _rows(uri, columns, options):
        at = wanted.get(row_id)
        if at is not None:
            for c in columns:
                values[c][at] = as_text(row.get(c))
    return pa.table({c: pa.array(v, pa.string()) for c, v in values.items()})


def _header(uri: str, options: dict[str, Any]) -> list[str]:
    from pipeline.store.sources import filesystem

    kind = manifest_kind(uri)
    fs, path = filesystem(uri, options)
    with fs.open(path, "rb") as fh:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(fh).schema_arrow.names
        line = fh.readline()
    if kind == "csv":
        import csv
        import io

        return next(csv.reader(io.StringIO(line.decode("utf-8-sig"))), [])
    first = json.loads(line) if line.strip() else {}
    return list(first) if isinstance(first, dict) else []


def _rows(uri: str, columns: list[str], options: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, {column: value}) per manifest row, streamed; ids as the embed job reads them (trimmed text)."""
    from pipeline.store.sources import filesystem

    kind = manifest_kind(uri)
    fs, path = filesystem(uri, options)
    with fs.open(path, "rb") as fh:
        if kind == "jsonl":
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                if isinstance(row, dict) and row.get("id") is not None:
                    yield str(row["id"]).strip(), row
            return
        if kind == "parquet":
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(fh).iter_batches(columns=["id", *columns], batch_size=65536)
        else:
            import pyarrow.csv as pcsv

            names = ["id", *columns]
            batches = pcsv.open_csv(fh, convert_options=pcsv.ConvertOptions(
                include_columns=names, column_types={c: pa.string() for c in names}, strings_can_be_null=True))
        for batch in batches:
            table = pa.Table.from_batches([batch])
            ids = pc.utf8_trim_whitespace(pc.cast(table.column("id"), pa.string())).to_pylist()
            cols = {c: table.column(c).to_pylist() for c in columns}
            for n, row_id in enumerate(ids):
                if row_id is not None:
                    yield row_id, {c: cols[c][n] for c in columns}


def where_mask(ids: pa.Table, where: dict[str, list[str]]) -> Any:
    """Rows of a segment's ids table whose every ``where`` column holds one of its values (a boolean numpy mask);
    None when ``where`` is empty."""
    if not where:
        return None
    mask = None
    for column, values in where.items():
        if column not in ids.column_names:
            hit = pa.array([False] * ids.num_rows)
        else:
            hit = pc.fill_null(pc.is_in(ids.column(column), value_set=pa.array(values, pa.string())), False)
        mask = hit if mask is None else pc.and_(mask, hit)
    return mask.to_numpy(zero_copy_only=False)  # an Array or a ChunkedArray: both convert alike
