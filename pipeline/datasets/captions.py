"""Retrieval datasets: media with captions, several per item (COCO and Flickr30k with Karpathy's splits, MSR-VTT,
Clotho). One manifest row per caption, the item's media repeated (the embed job encodes each file once); the rows of
one item form a group, so that evaluation counts any of an item's captions as a hit (``groups.json``)."""
from __future__ import annotations

import os

from pipeline.datasets.common import DatasetError, Written, expect, media_paths, need_file, read_csv, read_json

# Karpathy's split files (caption_datasets.zip): per split, the published counts (train = train + restval for COCO)
KARPATHY = {
    "coco": ("dataset_coco.json", {"test": {"images": 5000, "captions": 25010}, "val": {"images": 5000},
                                   "train": {"images": 113287}}),
    "flickr30k": ("dataset_flickr30k.json", {"test": {"images": 1000, "captions": 5000},
                                             "val": {"images": 1014, "captions": 5070},
                                             "train": {"images": 29000, "captions": 145000}}),
}
MSRVTT = {"test": {"videos": 1000, "captions": 1000}, "train": {"videos": 9000, "captions": 180000}}
CLOTHO = {"evaluation": {"clips": 1045, "captions": 5225}, "validation": {"clips": 1045, "captions": 5225},
          "development": {"clips": 3839, "captions": 19195}}


def _caption_rows(items: list[tuple[str, str, list[str]]], modality: str, what: str,
                  allow_missing: bool) -> tuple[Written, int]:
    """(group id, media path, captions) per item → one row per caption, grouped; items whose media is missing are
    left out (``media_paths``)."""
    present, missing = media_paths((path for _, path, _ in items), what, allow_missing)
    rows, groups = [], {}
    kept = [(g, p, c) for g, p, c in items if p in present]
    for group, path, captions in kept:
        for k, caption in enumerate(captions):
            row_id = f"{group}_{k}"
            rows.append({"id": row_id, modality: path, "text": caption})
            groups[row_id] = group
    return Written(rows, groups=groups, counts={what + "s": len(kept), "captions": len(rows)}), missing


def karpathy(name: str, root: str, split: str, allow_missing: bool) -> tuple[Written, bool, int]:
    """COCO or Flickr30k with Karpathy's split file (``dataset_coco.json`` / ``dataset_flickr30k.json`` in ``root``):
    COCO's images under ``root/<filepath>/`` (train2014/, val2014/), Flickr30k's under ``root/flickr30k-images/``.
    ``split``: train (COCO: train + restval), val or test."""
    filename, published = KARPATHY[name]
    path = need_file(root, filename)
    data = read_json(path)
    if not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: expected Karpathy's format, an object with 'images' (a list), got keys "
                           f"{', '.join(sorted(data)) or 'none'}")
    wanted = {"train", "restval"} if name == "coco" and split == "train" else {split}
    items, listed = [], 0
    for k, image in enumerate(data["images"]):
        try:
            if image["split"] not in wanted:
                continue
            listed += 1
            folder = image.get("filepath", "") if name == "coco" else "flickr30k-images"
            group = str(image.get("cocoid", image.get("imgid", k))) if name == "coco" else \
                os.path.splitext(image["filename"])[0]
            captions = [s["raw"].strip() for s in image["sentences"]]
            items.append((group, os.path.abspath(os.path.join(root, folder, image["filename"])), captions))
        except (KeyError, TypeError, AttributeError) as e:
            raise DatasetError(f"{path}: images[{k}] lacks {e} (expected split, filename, sentences[].raw)") from None
    if not items:
        splits = sorted({str(i.get('split')) for i in data["images"] if isinstance(i, dict)})
        raise DatasetError(f"{path}: no image of split {split!r} (it has {', '.join(splits) or 'none'})")
    written, missing = _caption_rows(items, "image", "image", allow_missing)
    expected = published.get(split)
    checked = expect({"images": listed, "captions": sum(len(c) for _, _, c in items)}, expected,
                     full=listed >= (expected or {}).get("images", 0), where=f"{path} split {split}")
    return written, checked, missing


def msrvtt(root: str, split: str, allow_missing: bool) -> tuple[Written, bool, int]:
    """MSR-VTT as CLIP4Clip's release lays it out: ``MSRVTT_JSFUSION_test.csv`` (the 1k-A test split: one caption
    per video), ``MSRVTT_train.9k.csv`` and ``MSRVTT_data.json`` (train: every caption of the 9,000 videos), in
    ``root`` or ``root/msrvtt_data``; videos ``root/videos/all/<video_id>.mp4``."""
    annotations = root if os.path.isfile(os.path.join(root, "MSRVTT_JSFUSION_test.csv")) else \
        os.path.join(root, "msrvtt_data")
    videos = os.path.join(root, "videos", "all")

    def video(video_id: str) -> str:
        return os.path.abspath(os.path.join(videos, f"{video_id}.mp4"))

    if split == "test":
        rows = read_csv(need_file(annotations, "MSRVTT_JSFUSION_test.csv"), ["video_id", "sentence"])
        items = [(r["video_id"], video(r["video_id"]), [r["sentence"].strip()]) for r in rows]
    elif split == "train":
        ids = [r["video_id"] for r in read_csv(need_file(annotations, "MSRVTT_train.9k.csv"), ["video_id"])]
        path = need_file(annotations, "MSRVTT_data.json")
        sentences = read_json(path).get("sentences")
        if not isinstance(sentences, list):
            raise DatasetError(f"{path}: expected an object with 'sentences' (a list of video_id, caption)")
        captions: dict[str, list[str]] = {i: [] for i in ids}
        for s in sentences:
            if isinstance(s, dict) and s.get("video_id") in captions:
                captions[s["video_id"]].append(str(s.get("caption", "")).strip())
        items = [(i, video(i), captions[i]) for i in ids if captions[i]]
    else:
        raise DatasetError(f"msrvtt: split {split!r}: expected test (the 1k-A split) or train (9k)")
    written, missing = _caption_rows(items, "video", "video", allow_missing)
    listed = {"videos": len(items), "captions": sum(len(c) for _, _, c in items)}
    expected = MSRVTT[split]
    return written, expect(listed, expected, listed["videos"] >= expected["videos"], f"msrvtt {split}"), missing


def clotho(root: str, split: str, allow_missing: bool) -> tuple[Written, bool, int]:
    """Clotho (v2.1): ``clotho_captions_<split>.csv`` (file_name, caption_1 … caption_5) in ``root``, audio under
    ``root/<split>/`` as its archives extract. ``split``: development, validation or evaluation."""
    if split not in CLOTHO:
        raise DatasetError(f"clotho: split {split!r}: expected one of {', '.join(CLOTHO)}")
    columns = ["file_name"] + [f"caption_{k}" for k in range(1, 6)]
    rows = read_csv(need_file(root, f"clotho_captions_{split}.csv"), columns)
    items = [(os.path.splitext(r["file_name"])[0], os.path.abspath(os.path.join(root, split, r["file_name"])),
              [r[c].strip() for c in columns[1:]]) for r in rows]
    written, missing = _caption_rows(items, "audio", "clip", allow_missing)
    listed = {"clips": len(items), "captions": 5 * len(items)}
    expected = CLOTHO[split]
    return written, expect(listed, expected, listed["clips"] >= expected["clips"], f"clotho {split}"), missing
