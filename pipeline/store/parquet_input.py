"""Parquet manifests read without trusting the file's own size claims.

Parquet can store a value once and name it from every row (dictionary encoding): a 1 KB file can describe
64 rows of 8 MB each, and its footer's sizes are whatever the writer put there. So:

- only the id and modality columns are read, and every string or binary column with its dictionary kept
  (``read_dictionary``): a value repeated in many rows is held once, as the file holds it;
- the bytes a row would take once expanded are computed from the dictionary, not by expanding it; rows are
  expanded in slices of at most ``SLICE_BYTES`` (planning) or only the rows a read task keeps;
- planning never expands media held in the file (binary, or ``{bytes, path}`` structs): it needs only which
  rows hold bytes and how many, and cuts read chunks by those real sizes (a row group split where needed);
- a read task never copies a media value over ``max_file_bytes`` out of its dictionary: that row's read error.

A dictionary value itself is decoded once when its page is read (the file holds it once); a page is the
unit pyarrow decodes.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.modality import Modality

SLICE_BYTES = 16 << 20  # strings expanded at a time by planning


def open_manifest(fh: Any) -> tuple[pq.ParquetFile, list[str], list[str]]:
    """(reader, columns to read, ignored column names) of a Parquet manifest; the reader keeps the dictionary of
    every string or binary column it reads."""
    names = pq.ParquetFile(fh).schema_arrow.names
    modalities = {m.value for m in Modality.all()}
    wanted = [n for n in names if n == "id" or n in modalities]
    schema = pq.ParquetFile(fh).schema_arrow
    leaves = [path for n in wanted for path in _binary_leaves(n, schema.field(n).type)]
    return pq.ParquetFile(fh, read_dictionary=leaves), wanted, [n for n in names if n not in wanted]


def _binary_leaves(name: str, kind: pa.DataType) -> list[str]:
    if pa.types.is_struct(kind):
        return [f"{name}.{kind.field(i).name}" for i in range(kind.num_fields) if _is_binary(kind.field(i).type)]
    return [name] if _is_binary(kind) else []


def _is_binary(kind: pa.DataType) -> bool:
    return any(check(kind) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                          pa.types.is_large_binary))


def is_media(column: pa.ChunkedArray | pa.Array, modality: Modality) -> bool:
    """Whether ``column`` holds media itself (binary, or a struct with a binary ``bytes`` field)."""
    if modality.is_inline:
        return False
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_struct(kind):
        i = kind.get_field_index("bytes")
        return i >= 0 and _is_binary(_value_type(kind.field(i).type)) and not _is_string(kind.field(i).type)
    return _is_binary(kind) and not _is_string(kind)


def _value_type(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _is_string(kind: pa.DataType) -> bool:
    kind = _value_type(kind)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def value_sizes(array: pa.Array) -> np.ndarray:
    """Bytes per row of a string or binary array (dictionary or not), 0 where null, without expanding it."""
    if pa.types.is_dictionary(array.type):
        lengths = pc.binary_length(array.dictionary)
        sizes = pc.array_take(lengths, array.indices)
    else:
        sizes = pc.binary_length(array)
    return pc.fill_null(sizes, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def row_sizes(table: pa.Table, media: bool) -> np.ndarray:
    """Bytes each row takes once its string and binary columns are expanded (``media``: with the media columns)."""
    total = np.zeros(table.num_rows, np.int64)
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        modality = Modality(name) if name in {m.value for m in Modality.all()} else None
        if not media and modality is not None and is_media(column, modality):
            continue
        kinds = [column] if not pa.types.is_struct(column.type) else [column.field(i) for i in range(column.type.num_fields)]
        for part in kinds:
            if _is_binary(_value_type(part.type)):
                total += value_sizes(part)
    return total


def plan_slices(pf: pq.ParquetFile, group: int, columns: list[str],
                media_limit: int) -> Iterator[tuple[int, pa.Table, int]]:
    """(first row within the group, rows, media bytes) of row group ``group`` in slices whose strings take at most
    ``SLICE_BYTES`` and whose media at most ``media_limit`` once expanded (a row at least); media columns stay
    unexpanded (dictionary or as stored)."""
    table = pf.read_row_group(group, columns=columns)
    strings, media = row_sizes(table, media=False), row_sizes(table, media=True)
    media -= strings
    start = 0
    while start < table.num_rows:
        fits = min(np.searchsorted(np.cumsum(strings[start:]), SLICE_BYTES, side="right"),
                   np.searchsorted(np.cumsum(media[start:]), media_limit, side="right"))
        stop = start + max(1, int(fits))
        yield start, table.slice(start, stop - start), int(media[start:stop].sum())
        start = stop


def read_rows(pf: pq.ParquetFile, start: int, stop: int, skip: int, rows: int, columns: list[str]) -> pa.Table:
    """Rows [skip, skip + rows) of row groups [start, stop), dictionaries kept (``normalize`` expands them)."""
    tables, seen = [], 0
    for group in range(start, stop):
        n = pf.metadata.row_group(group).num_rows
        lo, hi = max(skip - seen, 0), min(skip + rows - seen, n)
        if hi > lo:
            tables.append(pf.read_row_group(group, columns=columns).slice(lo, hi - lo))
        seen += n
    return pa.concat_tables(tables) if tables else pf.schema_arrow.empty_table().select(columns)


def expand(array: pa.Array) -> pa.Array:
    """A dictionary array's values per row (other arrays as they are)."""
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def without(array: pa.Array, drop: np.ndarray) -> pa.Array:
    """``array`` with the rows where ``drop`` is true set to null, before any expansion."""
    if not drop.any():
        return array
    if pa.types.is_dictionary(array.type):
        indices = pc.if_else(pa.array(drop), pa.nulls(len(array), array.indices.type), array.indices)
        return pa.DictionaryArray.from_arrays(indices, array.dictionary)
    return pc.if_else(pa.array(drop), pa.nulls(len(array), array.type), array)
