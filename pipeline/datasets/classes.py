"""Classification datasets: media with a class each (ESC-50 with its folds, an ImageNet-style class folder, CIFAR's
binary version). One manifest row per item with its class as a metadata column, and ``labels.yaml`` for zero-shot
classification and the linear probe."""
from __future__ import annotations

import json
import os

from pipeline.datasets.common import DatasetError, Written, expect, media_paths, need_file, read_csv
from pipeline.modalities import get

ESC50 = {"clips": 2000, "classes": 50}
CIFAR = {  # binary versions (never the python ones: those are pickles)
    "cifar10": {"folder": "cifar-10-batches-bin", "names": "batches.meta.txt", "label_bytes": 1,
                "files": {"train": [f"data_batch_{k}.bin" for k in range(1, 6)], "test": ["test_batch.bin"]},
                "counts": {"train": 50000, "test": 10000}, "classes": 10},
    "cifar100": {"folder": "cifar-100-binary", "names": "fine_label_names.txt", "label_bytes": 2,
                 "files": {"train": ["train.bin"], "test": ["test.bin"]},
                 "counts": {"train": 50000, "test": 10000}, "classes": 100},
}


def esc50(root: str, split: str, allow_missing: bool) -> tuple[Written, bool, int]:
    """ESC-50 as its repository lays it out: ``meta/esc50.csv`` (filename, fold, target, category) and ``audio/``.
    ``split``: all (2,000 clips), foldN (N = 1 … 5: the 400 clips of one fold, a test fold) or except-foldN (the
    other 1,600: its training folds). Class names are the categories with spaces (``chirping birds``)."""
    path = need_file(root, "meta", "esc50.csv")
    rows = read_csv(path, ["filename", "fold", "target", "category"])
    folds = {str(k) for k in range(1, 6)}
    if split == "all":
        keep = rows
    elif split.startswith(("fold", "except-fold")) and split.rsplit("fold", 1)[1] in folds:
        fold = split.rsplit("fold", 1)[1]
        keep = [r for r in rows if (r["fold"] == fold) != split.startswith("except")]
    else:
        raise DatasetError(f"esc50: split {split!r}: expected all, fold1 … fold5 or except-fold1 … except-fold5")
    try:
        order = sorted({(int(r["target"]), r["category"]) for r in rows})
    except ValueError as e:
        raise DatasetError(f"{path}: target must be a class number: {e}") from None
    names = {category: category.replace("_", " ") for _, category in order}
    present, missing = media_paths((os.path.abspath(os.path.join(root, "audio", r["filename"])) for r in keep),
                                   "audio", allow_missing)
    out, labels = [], {}
    for r in keep:
        audio = os.path.abspath(os.path.join(root, "audio", r["filename"]))
        if audio in present:
            row_id = os.path.splitext(r["filename"])[0]
            out.append({"id": row_id, "audio": audio, "fold": int(r["fold"]), "category": names[r["category"]]})
            labels[row_id] = names[r["category"]]
    counts = {"clips": len(rows), "classes": len(order)}
    checked = expect(counts, ESC50, full=len(rows) >= ESC50["clips"], where=path)
    return Written(out, labels=labels, classes=[names[c] for _, c in order], modality="audio",
                   counts={"clips": len(out), "classes": len(order)}), checked, missing


def imagefolder(root: str, split: str, allow_missing: bool, class_names: str | None = None) -> tuple[Written, bool, int]:
    """An ImageNet-style class folder: ``root/<split>/<class>/<image>`` (``split`` ``.``: ``root/<class>/...``),
    every file whose extension the image modality accepts. ``class_names``: a JSON object folder → class name (e.g.
    ImageNet's wnid → name); without it the folder names are the classes."""
    folder = os.path.normpath(os.path.join(root, split))
    if not os.path.isdir(folder):
        found = sorted(e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e))) if os.path.isdir(root) else []
        raise DatasetError(f"imagefolder: no folder {folder} (expected ROOT/SPLIT/<class>/<images>; {root} holds "
                           f"{', '.join(found[:8]) or 'no folders'})")
    classes = sorted(e for e in os.listdir(folder) if os.path.isdir(os.path.join(folder, e)))
    if not classes:
        raise DatasetError(f"imagefolder: {folder} holds no class folders (expected {folder}/<class>/<images>)")
    names = {c: c for c in classes}
    if class_names:
        try:
            with open(class_names, encoding="utf-8") as fh:
                given = json.load(fh)
        except (OSError, ValueError) as e:
            raise DatasetError(f"class_names={class_names!r}: cannot read it as JSON: {e}") from None
        unnamed = [c for c in classes if not isinstance(given, dict) or not isinstance(given.get(c), str)]
        if unnamed:
            raise DatasetError(f"class_names={class_names!r}: expected an object folder → class name naming every "
                               f"class folder; {len(unnamed)} are not, e.g. {unnamed[0]!r}")
        names = {c: given[c] for c in classes}
    extensions = tuple(get("image").extensions)  # (".jpg", ...)
    rows, labels = [], {}
    for c in classes:
        for name in sorted(os.listdir(os.path.join(folder, c))):
            if name.lower().endswith(extensions):
                row_id = f"{c}/{os.path.splitext(name)[0]}"
                rows.append({"id": row_id, "image": os.path.abspath(os.path.join(folder, c, name)), "class": names[c]})
                labels[row_id] = names[c]
    if not rows:
        raise DatasetError(f"imagefolder: no image files under {folder}/<class>/ (extensions {', '.join(extensions)})")
    classes_named = list(dict.fromkeys(names[c] for c in classes))
    return Written(rows, labels=labels, classes=classes_named, modality="image",
                   counts={"images": len(rows), "classes": len(classes_named)}), False, 0


def cifar(name: str, root: str, split: str, out: str) -> tuple[Written, bool, int]:
    """CIFAR-10 / CIFAR-100 in their binary versions (``cifar-10-batches-bin/``, ``cifar-100-binary/`` under
    ``root``): each record a label byte (CIFAR-100: coarse, fine) and 3,072 pixel bytes, written out as PNG files
    under ``out/images/<split>/``. The python versions are pickles and are never read."""
    spec = CIFAR[name]
    if split not in spec["files"]:
        raise DatasetError(f"{name}: split {split!r}: expected train or test")
    import numpy as np
    from PIL import Image

    folder = os.path.join(root, spec["folder"])
    if not os.path.isdir(folder) and os.path.isdir(os.path.join(root, "cifar-10-batches-py" if name == "cifar10"
                                                                else "cifar-100-python")):
        raise DatasetError(f"{name}: {root} holds the python version (pickles, which this project never loads): "
                           f"download the binary version ({spec['folder']}/)")
    with open(need_file(folder, spec["names"]), encoding="utf-8") as fh:
        classes = [line.strip().replace("_", " ") for line in fh if line.strip()]
    record = spec["label_bytes"] + 3072
    images = os.path.join(out, "images", split)
    os.makedirs(images, exist_ok=True)
    rows, labels = [], {}
    for filename in spec["files"][split]:
        path = need_file(folder, filename)
        data = np.fromfile(path, np.uint8)
        if data.size % record:
            raise DatasetError(f"{path}: {data.size:,} bytes is not a whole number of {record}-byte records")
        for k, r in enumerate(data.reshape(-1, record)):
            label = int(r[spec["label_bytes"] - 1])  # CIFAR-100: the fine label, the second byte
            if label >= len(classes):
                raise DatasetError(f"{path}: record {k} has label {label}, beyond the {len(classes)} classes named")
            row_id = f"{split}-{len(rows):05d}"
            png = os.path.join(images, f"{row_id}.png")
            Image.fromarray(r[spec["label_bytes"]:].reshape(3, 32, 32).transpose(1, 2, 0)).save(png)
            rows.append({"id": row_id, "image": os.path.abspath(png), "class": classes[label]})
            labels[row_id] = classes[label]
    counts = {"images": len(rows), "classes": len(classes)}
    published = {"images": spec["counts"][split], "classes": spec["classes"]}
    checked = expect(counts, published, full=len(rows) >= published["images"], where=f"{folder} {split}")
    return Written(rows, labels=labels, classes=classes, modality="image", counts=counts), checked, 0
