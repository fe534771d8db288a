"""A Hugging Face ``datasets`` Parquet export (``Dataset.to_parquet``, or the hub's ``refs/convert/parquet`` files):
its media column (an ``Image``/``Audio``/``Video`` feature: a ``{bytes, path}`` struct) is kept as it is in a Parquet
manifest, which the embed job decodes from those bytes; a caption column gives the text (a list of captions: one row
each, grouped), a ``ClassLabel`` column the labels, with the class names the export records in its schema. An export
with no media, a text and a class column is a text classification set: each text is an item."""
from __future__ import annotations

import glob
import json
import os
from typing import Any

from pipeline.datasets.common import DatasetError, Written

TEXT_COLUMNS = ("text", "caption", "captions", "sentence", "sentences")
LABEL_COLUMNS = ("label", "labels", "fine_label")
MEDIA_TYPES = {"Image": "image", "Audio": "audio", "Video": "video"}


def files_of(root: str, split: str) -> list[str]:
    """The split's Parquet files under ``root``, as exports name them: ``SPLIT-*.parquet``, ``SPLIT/*.parquet`` or
    ``data/SPLIT-*.parquet`` (``.``: every Parquet file under root)."""
    patterns = (["**/*.parquet"] if split == "." else
                [f"{split}-*.parquet", f"{split}.parquet", f"{split}/*.parquet", f"data/{split}-*.parquet",
                 f"*/{split}/*.parquet"])
    for pattern in patterns:
        found = sorted(glob.glob(os.path.join(root, pattern), recursive=True))
        if found:
            return found
    present = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**/*.parquet"), recursive=True))
    raise DatasetError(f"hf-parquet: no Parquet file of split {split!r} under {root} (looked for "
                       f"{', '.join(patterns)}; found {', '.join(present[:6]) or 'none'})")


def _features(schema: Any) -> dict[str, Any]:
    """The ``datasets`` feature types the export recorded (schema metadata ``huggingface``), or {}."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        return json.loads(raw)["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return {}


def hf_parquet(root: str, split: str, out: str) -> tuple[Written, bool, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = files_of(root, split)
    schema = pq.read_schema(files[0])
    features = _features(schema)
    media = [(c, MEDIA_TYPES[f["_type"]]) for c, f in features.items()
             if isinstance(f, dict) and f.get("_type") in MEDIA_TYPES]
    if not media:  # no recorded types: a {bytes, path} struct or binary column named as a modality
        media = [(c, c) for c in schema.names if c in MEDIA_TYPES.values()]
    text = next((c for c in TEXT_COLUMNS if c in schema.names), None)
    label = next((c for c in LABEL_COLUMNS if c in schema.names), None)
    if not media and text and label:  # a text classification set (SST-2, TREC, EMOTION): the sentence is the item
        media, text = [(text, "text")], None
    if len(media) != 1 or not (text or label):
        raise DatasetError(f"hf-parquet: {files[0]} has the columns {', '.join(schema.names)}: expected one media "
                           f"column (an Image, Audio or Video feature, or a column named image, audio or video) and a "
                           f"caption ({', '.join(TEXT_COLUMNS)}) or class ({', '.join(LABEL_COLUMNS)}) column, or a "
                           "text and a class column (text classification)")
    column, modality = media[0]
    names = (features.get(label) or {}).get("names") if label else None
    os.makedirs(out, exist_ok=True)
    manifest = os.path.join(out, "manifest.parquet")
    groups: dict[str, str] = {}
    labels: dict[str, str] = {}
    items = written_rows = 0
    writer = None
    try:
        for path in files:
            parquet = pq.ParquetFile(path)
            for g in range(parquet.num_row_groups):  # a row group at a time: memory is one group's media
                table = parquet.read_row_group(g, columns=[c for c in (column, text, label) if c])
                values = table.column(column).to_pylist()
                captions = table.column(text).to_pylist() if text else [None] * len(values)
                classes = table.column(label).to_pylist() if label else [None] * len(values)
                batch: dict[str, list] = {"id": [], modality: [], "text": [], "class": []}
                for value, caption, cls in zip(values, captions, classes):
                    key, items = str(items), items + 1
                    name = (names[cls] if names and isinstance(cls, int) and 0 <= cls < len(names) else str(cls))
                    for k, t in enumerate(caption if isinstance(caption, list) else [caption]):
                        row_id = f"{key}_{k}" if isinstance(caption, list) else key
                        batch["id"].append(row_id)
                        batch[modality].append(value)
                        if text:
                            batch["text"].append(None if t is None else str(t).strip())
                        batch["class"].append(name)
                        if isinstance(caption, list):
                            groups[row_id] = key
                        if label:
                            labels[row_id] = name
                columns = {"id": pa.array(batch["id"], pa.string()),
                           modality: pa.array(batch[modality], table.column(column).type)}
                if text:
                    columns["text"] = pa.array(batch["text"], pa.string())
                if label:
                    columns["class"] = pa.array(batch["class"], pa.string())
                chunk = pa.table(columns)
                writer = writer or pq.ParquetWriter(manifest, chunk.schema)
                writer.write_table(chunk)
                written_rows += chunk.num_rows
    finally:
        if writer is not None:
            writer.close()
    counts = {"items": items, "rows": written_rows}
    if label:
        counts["classes"] = len(set(labels.values()))
    return Written([], groups=groups or None, labels=labels or None, modality=modality,
                   classes=list(names) if names else None, counts=counts, manifest=manifest,
                   n_rows=written_rows), False, 0
