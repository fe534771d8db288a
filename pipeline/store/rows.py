"""The normalized table every manifest piece becomes, and what its readers take from it.

One row per manifest row: ``row`` (0-based number among the manifest's rows), ``id`` (string) and, per modality
column of the manifest, the raw string value (``<m>``, null when absent) and why it cannot be used
(``<m>:error``, e.g. a number where a URI was expected); media held in the input itself (Parquet bytes, tar
members) in ``<m>:bytes``. The piece's other columns are named in the schema's ``ignored`` metadata.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.modality import Modality
from pipeline.store.errors import ManifestError
from pipeline.store.parquet_input import expand, is_media, value_sizes, without
from pipeline.store.webdataset import BAD_ID_CHARS


def _wrong_type(modality: Modality, value: Any) -> str:
    return (f"expected a {'string' if modality.is_inline else 'URI string'}, got {type(value).__name__} "
            f"{str(value)[:80]!r}")


def normalize(table: pa.Table, first_row: int, uri: str, max_bytes: int | None = None, media: bool = True,
              ignored: list[str] | None = None) -> pa.Table:
    """A parsed piece (typed by pyarrow; dictionary columns expanded here) → the normalized table.

    Media held in the piece: with ``media`` false (planning) only whether each row holds bytes is kept (an empty
    value stands for them); else a value over ``max_bytes`` is never expanded: that row's read error.
    ``ignored``: the file's other columns, when the piece was read without them."""
    n = table.num_rows
    names = table.column_names
    if not n:
        return pa.table({"row": pa.array([], pa.int64()), "id": pa.array([], pa.string())})
    if "id" not in names:
        raise ManifestError(f"manifest {uri} has no 'id' column (columns: {', '.join(names)})")
    ids = checked_ids(table, first_row, uri)
    cols = {"row": pa.array(np.arange(first_row, first_row + n, dtype=np.int64)), "id": ids}
    for m in Modality.all():
        if m.value not in names:
            continue
        col = table.column(m.value).combine_chunks()
        embedded = None if m.is_inline else _embedded(col)
        if embedded is not None:
            data, errors = _held(embedded[0], max_bytes, media)
            cols[m.value], cols[f"{m.value}:error"] = _labels(data, embedded[1], ids, uri), errors
            cols[f"{m.value}:bytes"] = data
            continue
        col = expand(col)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            cols[m.value], cols[f"{m.value}:error"] = pc.cast(col, pa.string()), pa.nulls(n, pa.string())
        elif pa.types.is_null(col.type):
            cols[m.value], cols[f"{m.value}:error"] = pa.nulls(n, pa.string()), pa.nulls(n, pa.string())
        else:
            values = col.to_pylist()
            cols[m.value] = pa.nulls(n, pa.string())
            cols[f"{m.value}:error"] = pa.array([None if v is None else _wrong_type(m, v) for v in values], pa.string())
    extra = [c for c in names if c != "id" and c not in cols] + list(ignored or [])
    out = pa.table(cols)
    return out.replace_schema_metadata({"ignored": json.dumps(extra)})


def checked_ids(table: pa.Table, first_row: int, uri: str) -> pa.Array:
    """The id column as trimmed strings; ManifestError naming the rows whose id is missing, blank, not a string
    or integer, or holds control characters."""
    ids = expand(table.column("id").combine_chunks())
    if pa.types.is_integer(ids.type):
        ids = pc.cast(ids, pa.string())
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        ids = pc.utf8_trim_whitespace(pc.cast(ids, pa.string()))
        bad = pc.or_kleene(pc.or_kleene(pc.is_null(ids), pc.equal(pc.utf8_length(ids), 0)),
                           pc.match_substring_regex(ids, BAD_ID_CHARS))
        bad = pc.fill_null(bad, True).to_numpy(zero_copy_only=False)
    else:
        bad = np.ones(len(ids), bool)
    if bad.any():
        rows = np.flatnonzero(bad)[:10]
        raw = expand(table.column("id").combine_chunks()).take(pa.array(rows)).to_pylist()
        shown = [f"row {first_row + i + 1}: {v!r}" for i, v in zip(rows, raw)]
        raise ManifestError(f"manifest {uri}: missing or invalid id (expected a non-empty string or integer without "
                            f"control characters): {'; '.join(shown)}")
    return ids


def _held(data: pa.Array, max_bytes: int | None, media: bool) -> tuple[pa.Array, pa.Array]:
    """(bytes per row, read error per row) of media held in a piece (see ``normalize``)."""
    n = len(data)
    if not media:
        return pc.if_else(pc.is_valid(data), pa.scalar(b"", pa.large_binary()), pa.nulls(n, pa.large_binary())), \
            pa.nulls(n, pa.string())
    errors: list[str | None] = [None] * n
    if max_bytes is not None:
        sizes = value_sizes(data)
        over = sizes > max_bytes
        for i in np.flatnonzero(over):
            errors[i] = f"held in the manifest: {sizes[i]} bytes, over limits.max_file_bytes={max_bytes}"
        data = without(data, over)
    return pc.cast(expand(data), pa.large_binary()), pa.array(errors, pa.string())


def _embedded(col: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """(bytes, path) of a column holding media itself: binary, or a ``{bytes, path}`` struct as Hugging Face
    ``datasets`` exports its Image/Audio features (bytes may be dictionary-encoded: left so). None for any other
    type. A struct row with no bytes but a path is a URI item (bytes null, path kept); with neither it is absent."""
    if is_media(col, Modality("image")) and not pa.types.is_struct(col.type):
        return col, pa.nulls(len(col), pa.string())
    if not pa.types.is_struct(col.type) or not is_media(col, Modality("image")):
        return None
    data = col.field("bytes")
    has_path = col.type.get_field_index("path") >= 0 and _is_text(col.type.field("path").type)
    path = pc.cast(expand(col.field("path")), pa.string()) if has_path else pa.nulls(len(col), pa.string())
    valid = pc.is_valid(col)  # a null struct: neither bytes nor path
    absent = ~valid.to_numpy(zero_copy_only=False)
    return without(data, absent), pc.if_else(valid, path, pa.nulls(len(col), pa.string()))


def _is_text(kind: pa.DataType) -> bool:
    kind = kind.value_type if pa.types.is_dictionary(kind) else kind
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _labels(data: pa.Array, paths: pa.Array, ids: pa.Array, uri: str) -> pa.Array:
    """The ``<m>`` value beside embedded media: where a row has bytes, its ``path`` field or else
    ``<manifest>#id=<id>`` (a name for its feature/error row); where it has none, the path (a URI item) or null."""
    named = pc.coalesce(paths, pc.binary_join_element_wise(pa.scalar(f"{uri}#id="), ids, ""))
    return pc.if_else(pc.is_valid(data), named, paths)


def normalize_rows(rows: list[dict[str, Any]], first_row: int, uri: str) -> pa.Table:
    """Python rows (JSON of mixed types) → the normalized table, as ``normalize`` would give."""
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    if rows and "id" not in names:
        raise ManifestError(f"manifest {uri} has no 'id' column (columns: {', '.join(names)})")
    ids, bad = [], []
    for number, row in enumerate(rows, start=first_row + 1):
        value = row.get("id")
        if value is None or isinstance(value, (bool, float, list, dict)) or str(value).strip() == "":
            bad.append(f"row {number}: {value!r}")
        ids.append(str(value).strip() if value is not None else "")
    if bad:
        raise ManifestError(f"manifest {uri}: missing or invalid id (expected a non-empty string or integer): "
                            f"{'; '.join(bad[:10])}")
    cols: dict[str, Any] = {"row": pa.array(np.arange(first_row, first_row + len(rows), dtype=np.int64)),
                            "id": pa.array(ids, pa.string())}
    for m in Modality.all():
        if m.value not in names:
            continue
        values = [row.get(m.value) for row in rows]
        cols[m.value] = pa.array([v if isinstance(v, str) else None for v in values], pa.string())
        cols[f"{m.value}:error"] = pa.array([None if v is None or isinstance(v, str) else _wrong_type(m, v)
                                             for v in values], pa.string())
    extra = [c for c in names if c != "id" and c not in cols]
    return pa.table(cols).replace_schema_metadata({"ignored": json.dumps(extra)})


def item_mask(table: pa.Table, modality: Modality) -> np.ndarray:
    """Rows of a normalized table that are an item of ``modality``: a value (non-blank for media) or a bad one."""
    value, error = table.column(modality.value), table.column(f"{modality.value}:error")
    present = pc.is_valid(value)
    if not modality.is_inline:
        present = pc.and_kleene(present, pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(value)), 0))
    if f"{modality.value}:bytes" in table.column_names:
        present = pc.or_kleene(present, pc.is_valid(table.column(f"{modality.value}:bytes")))
    return pc.fill_null(pc.or_kleene(present, pc.is_valid(error)), False).to_numpy()


def embedded_bytes(table: pa.Table, modality: Modality) -> pa.ChunkedArray | None:
    """The ``<m>:bytes`` column of a normalized table (media held in the manifest or tar itself), or None."""
    name = f"{modality.value}:bytes"
    return table.column(name) if name in table.column_names else None


def ignored_columns(table: pa.Table) -> list[str]:
    """The columns of the piece a normalized table came from that are neither the id nor a modality."""
    return json.loads((table.schema.metadata or {}).get(b"ignored", b"[]"))
