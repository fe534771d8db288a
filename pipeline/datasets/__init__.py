"""Dataset adapters: ``oneencoder dataset NAME --root DIR --split SPLIT --output OUT`` turns a dataset as it ships into
a manifest and the groups or labels its evaluation protocol needs (``pipeline.datasets.common``)."""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Literal

from pydantic import Field

from pipeline.config import StrictModel
from pipeline.datasets import captions, classes, hf_parquet
from pipeline.datasets.common import DatasetError, write

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Adapter:
    summary: str
    splits: tuple[str, ...]
    read: Callable[..., Any]                    # (root, split, allow_missing, cfg, out) -> (Written, checked, missing)


ADAPTERS: dict[str, Adapter] = {
    "coco": Adapter("COCO captions, Karpathy's splits (dataset_coco.json)", ("test", "val", "train"),
                    lambda root, split, missing, cfg, out: captions.karpathy("coco", root, split, missing)),
    "flickr30k": Adapter("Flickr30k, Karpathy's splits (dataset_flickr30k.json)", ("test", "val", "train"),
                         lambda root, split, missing, cfg, out: captions.karpathy("flickr30k", root, split, missing)),
    "msrvtt": Adapter("MSR-VTT: the 1k-A test split, or train 9k (CLIP4Clip's files)", ("test", "train"),
                      lambda root, split, missing, cfg, out: captions.msrvtt(root, split, missing)),
    "clotho": Adapter("Clotho v2.1 audio captions", tuple(captions.CLOTHO),
                      lambda root, split, missing, cfg, out: captions.clotho(root, split, missing)),
    "esc50": Adapter("ESC-50 environmental sounds (meta/esc50.csv), all or by fold",
                     ("all", *(f"fold{k}" for k in range(1, 6)), *(f"except-fold{k}" for k in range(1, 6))),
                     lambda root, split, missing, cfg, out: classes.esc50(root, split, missing)),
    "imagefolder": Adapter("an ImageNet-style class folder, ROOT/SPLIT/<class>/<image>", (),
                           lambda root, split, missing, cfg, out: classes.imagefolder(root, split, missing,
                                                                                      cfg.class_names)),
    "hf-parquet": Adapter("a Hugging Face datasets Parquet export (media kept inside Parquet)", (),
                          lambda root, split, missing, cfg, out: hf_parquet.hf_parquet(root, split, out)),
    "cifar10": Adapter("CIFAR-10, binary version", ("test", "train"),
                       lambda root, split, missing, cfg, out: classes.cifar("cifar10", root, split, out)),
    "cifar100": Adapter("CIFAR-100 (fine labels), binary version", ("test", "train"),
                        lambda root, split, missing, cfg, out: classes.cifar("cifar100", root, split, out)),
}


class DatasetConfig(StrictModel):
    name: Literal[tuple(ADAPTERS)] = Field(description="The dataset: " + "; ".join(  # type: ignore[valid-type]
        f"{n} ({a.summary})" for n, a in ADAPTERS.items()) + ".")
    root: str = Field(description="Folder the dataset was downloaded and extracted into, as it ships (docs/datasets.md).")
    split: str | None = Field(None, description="Split to write; null = the dataset's evaluation split (test, evaluation, all; for imagefolder and hf-parquet `.`: ROOT itself, every Parquet file under it).")
    output: str = Field(description="Folder to write manifest.jsonl, groups.json or labels.yaml, and dataset.json into.")
    allow_missing: bool = Field(False, description="Write the rows whose media exist when some are missing (default: refuse, naming them).")
    class_names: str | None = Field(None, description="imagefolder: a JSON object class folder -> class name (e.g. ImageNet's wnid -> name); null = the folder names.")


def write_dataset(cfg: DatasetConfig) -> dict[str, Any]:
    """Read dataset ``cfg.name`` under ``cfg.root`` and write its files under ``cfg.output``; returns dataset.json."""
    adapter = ADAPTERS[cfg.name]
    split = cfg.split or (adapter.splits[0] if adapter.splits else ".")
    if adapter.splits and split not in adapter.splits:
        raise DatasetError(f"{cfg.name}: split {split!r}: expected one of {', '.join(adapter.splits)}")
    if not os.path.isdir(cfg.root):
        raise DatasetError(f"root={cfg.root!r} is not a folder: expected where {cfg.name} was extracted")
    written, checked, missing = adapter.read(cfg.root, split, cfg.allow_missing, cfg, cfg.output)
    if not written.size:
        raise DatasetError(f"{cfg.name} {split}: no rows to write")
    summary = write(cfg.output, cfg.name, split, written, checked, missing)
    log.info("%s %s: %d rows (%s); published counts %s", cfg.name, split, written.size,
             ", ".join(f"{v:,} {k}" for k, v in written.counts.items()),
             "checked" if checked else "not checked (not the full split)")
    return summary
