"""Parsing one piece of a JSONL or CSV manifest (whole lines, as the driver's pass and a worker's read cut them)
into the normalized table (``pipeline.store.rows``): pyarrow's readers first, line by line where a line is bad
or a column mixes types, so that every bad line is named."""
from __future__ import annotations

import csv as _csv
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from pipeline.store.errors import ManifestError
from pipeline.store.rows import normalize, normalize_rows


def parse_piece(data: bytes, fmt: str, header: list[str] | None, first_line: int, first_row: int, uri: str) -> pa.Table:
    """Whole lines of a JSONL or CSV manifest → the normalized table (rows numbered from ``first_row``)."""
    if fmt == "csv":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = first_line + data.count(b"\n", 0, e.start)
            raise ManifestError(f"manifest {uri}: not valid UTF-8 (byte 0x{data[e.start]:02x} on line {line})") from None
        try:
            table = pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(column_names=header, use_threads=False),
                                   convert_options=pacsv.ConvertOptions(
                                       strings_can_be_null=True, quoted_strings_can_be_null=False,
                                       column_types={name: pa.string() for name in header or []}))
        except (pa.ArrowInvalid, _csv.Error) as e:
            raise ManifestError(f"manifest {uri}: not a valid CSV file: {e}") from None
        return normalize(table, first_row, uri)
    try:
        table = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(use_threads=False,
                                                                                    block_size=max(len(data), 1 << 20)))
    except pa.ArrowInvalid:  # a bad line, or a column of mixed types: parse line by line
        return normalize_rows(_parse_jsonl(data, first_line, uri), first_row, uri)
    return normalize(table, first_row, uri)


def _parse_jsonl(data: bytes, first_line: int, uri: str) -> list[dict[str, Any]]:
    rows, problems = [], []
    for number, raw in enumerate(data.split(b"\n"), start=first_line):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            problems.append(f"line {number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
            continue
        except json.JSONDecodeError as e:
            problems.append(f"line {number}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {number}: expected a JSON object, got {type(row).__name__}")
            continue
        rows.append(row)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ManifestError(f"manifest {uri}: {len(problems)} bad line(s): {shown}")
    return rows
