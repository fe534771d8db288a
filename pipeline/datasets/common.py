"""What every dataset adapter writes, and the checks they share.

An adapter reads a dataset as it ships (its annotation files, its folders) and writes, under the output folder:

- ``manifest.jsonl`` (``manifest.parquet`` where the media are inside Parquet files): one row per sample, ``id`` plus a column per modality (media as absolute paths, text inline)
  and any metadata columns (a fold, a class): what ``oneencoder embed`` reads;
- ``groups.json`` (retrieval datasets): ``{"groups": {id: group}}``, the rows that show one item (an image and its
  five captions are five rows of one group), what ``oneencoder evaluate --groups`` counts as correct;
- ``labels.yaml`` (classification datasets): ``labels`` (id → class name), ``classes`` and prompt ``templates`` per
  modality, what ``oneencoder evaluate --labels`` classifies against (edit the templates freely);
- ``dataset.json``: what was written and counted, and whether the counts were checked against the published ones.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from typing import Any, Iterable

import yaml

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

# Prompt templates per modality: CLIP's single prompt and the seven its prompt-engineering notebook kept for ImageNet,
# a sound set for audio (as CLAP-style evaluations word them), and one for video; labels.yaml holds them, editable.
TEMPLATES: dict[str, list[str]] = {
    "image": ["a photo of a {}.", "itap of a {}.", "a bad photo of the {}.", "a origami {}.",
              "a photo of the large {}.", "a {} in a video game.", "art of the {}.", "a photo of the small {}."],
    "audio": ["the sound of {}.", "a sound of {}.", "this is the sound of {}.", "a recording of {}."],
    "video": ["a video of {}.", "a video of a person {}.", "a clip showing {}."],
}


class DatasetError(ConfigError):
    """The dataset under ``root`` is not laid out as its adapter expects: the message names the file or folder,
    what was found and what was expected."""


@dataclasses.dataclass
class Written:
    """The rows an adapter produced, before they are written."""

    rows: list[dict[str, Any]]
    groups: dict[str, str] | None = None        # retrieval: row id → group (the item it shows)
    labels: dict[str, str] | None = None        # classification: row id → class name
    classes: list[str] | None = None            # every class, in the dataset's order (default: those used)
    modality: str | None = None                 # the modality classified (its templates go to labels.yaml)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # what the published counts are compared with
    manifest: str | None = None                 # a manifest the adapter wrote itself (Parquet, media inside)
    n_rows: int | None = None                   # its rows (default: len(rows))

    @property
    def size(self) -> int:
        return len(self.rows) if self.n_rows is None else self.n_rows


def read_json(path: str) -> dict:
    """A JSON object file; DatasetError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read it as JSON: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_csv(path: str, columns: list[str]) -> list[dict[str, str]]:
    """A CSV file's rows (by header), which must have ``columns``; DatasetError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{path}: expected the columns {', '.join(columns)}; it has "
                                   f"{', '.join(reader.fieldnames or []) or 'none'} (missing {', '.join(missing)})")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read it as CSV: {e}") from None


def expect(counts: dict[str, int], published: dict[str, int] | None, full: bool, where: str) -> bool:
    """Compare ``counts`` with the ``published`` ones of the split when the annotation lists the full split
    (``full``); DatasetError naming each that differs. Returns whether they were checked."""
    if not published or not full:
        return False
    wrong = {k: (counts.get(k), v) for k, v in published.items() if counts.get(k) != v}
    if wrong:
        raise DatasetError(f"{where}: " + "; ".join(f"{k}: found {found:,}, the published split has {v:,}"
                                                     for k, (found, v) in wrong.items())
                           + " (a changed or incomplete download?)")
    return True


def need_file(root: str, *parts: str) -> str:
    """``root/parts`` if it is a file; DatasetError naming it and what lies in its folder otherwise."""
    path = os.path.join(root, *parts)
    if os.path.isfile(path):
        return path
    folder = os.path.dirname(path)
    found = sorted(os.listdir(folder))[:8] if os.path.isdir(folder) else None
    raise DatasetError(f"expected the file {path}" + (f" (its folder holds {', '.join(found) or 'nothing'})"
                                                      if found is not None else f" (no folder {folder})"))


def media_paths(paths: Iterable[str], what: str, allow_missing: bool) -> tuple[set[str], int]:
    """The paths that exist, and how many do not; DatasetError naming the first missing and their number unless
    ``allow_missing`` (then they are left out, with a warning)."""
    paths = list(dict.fromkeys(paths))
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing and not allow_missing:
        raise DatasetError(f"{len(missing):,} of {len(paths):,} {what} files are missing, e.g. {missing[0]} (download "
                           "them, or pass --allow-missing to write the rows whose media exist)")
    if missing:
        log.warning("%d of %d %s files are missing (left out), e.g. %s", len(missing), len(paths), what, missing[0])
    return set(paths) - set(missing), len(missing)


def write(out: str, name: str, split: str, written: Written, checked: bool, missing: int) -> dict[str, Any]:
    """Write the manifest, groups, labels and dataset.json under ``out``; returns dataset.json's content."""
    os.makedirs(out, exist_ok=True)
    files = {"manifest": written.manifest or os.path.join(out, "manifest.jsonl")}
    if written.manifest is None:
        with open(files["manifest"], "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in written.rows)
    if written.groups is not None:
        files["groups"] = os.path.join(out, "groups.json")
        with open(files["groups"], "w", encoding="utf-8") as fh:
            json.dump({"groups": written.groups}, fh, ensure_ascii=False, indent=0)
    if written.labels is not None:
        files["labels"] = os.path.join(out, "labels.yaml")
        classes = written.classes or sorted(set(written.labels.values()))
        spec = {"classes": classes, "templates": TEMPLATES.get(written.modality or "", ["{}"]),
                "labels": written.labels}
        with open(files["labels"], "w", encoding="utf-8") as fh:
            fh.write(f"# {name} {split}: zero-shot labels; edit the templates ({{}} is the class name) as you like\n")
            yaml.safe_dump(spec, fh, allow_unicode=True, sort_keys=False, width=120)
    summary = {"dataset": name, "split": split, "rows": written.size, "counts": written.counts,
               "counts_checked": checked, "missing_media": missing, "files": files}
    with open(os.path.join(out, "dataset.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    return summary
