"""`oneencoder dataset`: each adapter on a tiny fixture laid out as the dataset ships (file names, JSON/CSV columns),
made here; the counts checked against the published ones when the annotation lists the full split."""
from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.datasets import DatasetConfig, DatasetError, write_dataset
from tests.media_factory import png_bytes


def _put(path: str, data: bytes = b"") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _jpeg(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buf, "JPEG")
    return buf.getvalue()


def _csv(path: str, header: list[str], rows: list[list]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _run(tmp_path, name: str, root: str, split: str | None = None, **kw) -> tuple[dict, list[dict]]:
    out = str(tmp_path / f"out-{name}-{split}")
    summary = write_dataset(DatasetConfig(name=name, root=root, split=split, output=out, **kw))
    manifest = summary["files"]["manifest"]
    rows = ([json.loads(line) for line in open(manifest, encoding="utf-8")] if manifest.endswith(".jsonl")
            else pq.read_table(manifest).to_pylist())
    return summary, rows


def _groups(summary: dict) -> dict[str, str]:
    return json.load(open(summary["files"]["groups"]))["groups"]


def _labels(summary: dict) -> dict:
    return yaml.safe_load(open(summary["files"]["labels"]))


# --- COCO and Flickr30k (Karpathy's split files) ---------------------------------------------------------------

def _karpathy_coco(root: str) -> None:
    """dataset_coco.json as caption_datasets.zip has it (images[]: filepath, filename, split, sentences[].raw, cocoid,
    imgid, sentids), the images under train2014/ and val2014/."""
    images = [("val2014", "COCO_val2014_000000391895.jpg", "test", 391895, 5),
              ("val2014", "COCO_val2014_000000522418.jpg", "test", 522418, 6),  # some COCO images have more
              ("val2014", "COCO_val2014_000000184613.jpg", "val", 184613, 5),
              ("train2014", "COCO_train2014_000000318556.jpg", "train", 318556, 5),
              ("val2014", "COCO_val2014_000000060623.jpg", "restval", 60623, 5)]
    entries, sent = [], 0
    for k, (folder, filename, split, cocoid, n) in enumerate(images):
        sentences = [{"tokens": ["a", "man"], "raw": f" A man with a red helmet, caption {j} of {cocoid}.",
                      "imgid": k, "sentid": sent + j} for j in range(n)]
        entries.append({"filepath": folder, "sentids": [s["sentid"] for s in sentences], "filename": filename,
                        "imgid": k, "split": split, "sentences": sentences, "cocoid": cocoid})
        sent += n
        _put(os.path.join(root, folder, filename), _jpeg())
    _put(os.path.join(root, "dataset_coco.json"), json.dumps({"images": entries, "dataset": "coco"}).encode())


def test_coco_karpathy_test_split_is_one_row_per_caption_grouped_by_image(tmp_path):
    root = str(tmp_path / "coco")
    _karpathy_coco(root)
    summary, rows = _run(tmp_path, "coco", root)  # the default split: test
    assert summary["split"] == "test" and summary["counts"] == {"images": 2, "captions": 11}
    assert summary["counts_checked"] is False  # 2 of the published 5,000 images: a fixture, not the full split
    assert len(rows) == 11 and {r["image"] for r in rows} == {
        os.path.abspath(os.path.join(root, "val2014", f)) for f in
        ("COCO_val2014_000000391895.jpg", "COCO_val2014_000000522418.jpg")}
    assert rows[0] == {"id": "391895_0", "image": os.path.abspath(os.path.join(root, "val2014",
                                                                               "COCO_val2014_000000391895.jpg")),
                       "text": "A man with a red helmet, caption 0 of 391895."}
    groups = _groups(summary)
    assert set(groups) == {r["id"] for r in rows} and sorted(set(groups.values())) == ["391895", "522418"]
    assert sum(g == "522418" for g in groups.values()) == 6
    _, train = _run(tmp_path, "coco", root, "train")  # Karpathy's train is train + restval (113,287 images)
    assert {r["id"].split("_")[0] for r in train} == {"318556", "60623"}


def test_coco_counts_are_checked_against_the_published_split(tmp_path, monkeypatch):
    from pipeline.datasets import captions

    root = str(tmp_path / "coco")
    _karpathy_coco(root)
    monkeypatch.setitem(captions.KARPATHY, "coco", ("dataset_coco.json", {"test": {"images": 2, "captions": 11}}))
    summary, _ = _run(tmp_path, "coco", root, "test")
    assert summary["counts_checked"] is True
    monkeypatch.setitem(captions.KARPATHY, "coco", ("dataset_coco.json", {"test": {"images": 2, "captions": 10}}))
    with pytest.raises(DatasetError, match="captions: found 11, the published split has 10"):
        _run(tmp_path, "coco", root, "test")


def test_missing_media_is_refused_by_count_or_left_out_when_allowed(tmp_path):
    root = str(tmp_path / "coco")
    _karpathy_coco(root)
    os.remove(os.path.join(root, "val2014", "COCO_val2014_000000522418.jpg"))
    with pytest.raises(DatasetError, match=r"1 of 2 image files are missing, e\.g\. .*522418\.jpg .*--allow-missing"):
        _run(tmp_path, "coco", root)
    summary, rows = _run(tmp_path, "coco", root, allow_missing=True)
    assert summary["missing_media"] == 1 and len(rows) == 5 and set(_groups(summary).values()) == {"391895"}


def test_a_wrong_layout_is_named(tmp_path):
    root = str(tmp_path / "coco")
    os.makedirs(root)
    with pytest.raises(DatasetError, match="expected the file .*dataset_coco.json"):
        _run(tmp_path, "coco", root)
    _put(os.path.join(root, "dataset_coco.json"), b'{"annotations": []}')
    with pytest.raises(DatasetError, match="expected Karpathy's format.*annotations"):
        _run(tmp_path, "coco", root)
    with pytest.raises(DatasetError, match="split 'dev': expected one of test, val, train"):
        _run(tmp_path, "coco", root, "dev")


def test_flickr30k_karpathy(tmp_path):
    root = str(tmp_path / "flickr")
    entries = []
    for k, (name, split) in enumerate([("1000092795.jpg", "test"), ("10002456.jpg", "train"), ("1007129816.jpg", "test")]):
        entries.append({"sentids": list(range(5 * k, 5 * k + 5)), "imgid": k, "split": split, "filename": name,
                        "sentences": [{"raw": f"Two young guys {j}", "imgid": k, "sentid": 5 * k + j, "tokens": []}
                                      for j in range(5)]})
        _put(os.path.join(root, "flickr30k-images", name), _jpeg())
    _put(os.path.join(root, "dataset_flickr30k.json"), json.dumps({"images": entries, "dataset": "flickr30k"}).encode())
    summary, rows = _run(tmp_path, "flickr30k", root)
    assert summary["counts"] == {"images": 2, "captions": 10}
    assert sorted(set(_groups(summary).values())) == ["1000092795", "1007129816"]
    assert rows[0]["image"] == os.path.abspath(os.path.join(root, "flickr30k-images", "1000092795.jpg"))


# --- MSR-VTT, Clotho -------------------------------------------------------------------------------------------

def test_msrvtt_1k_a_test_and_the_9k_train_split(tmp_path):
    root = str(tmp_path / "msrvtt")
    # CLIP4Clip's msrvtt_data: the JSFusion test csv (an unnamed index column first), the 9k train list, the captions
    _csv(os.path.join(root, "msrvtt_data", "MSRVTT_JSFUSION_test.csv"), ["", "key", "vid_key", "video_id", "sentence"],
         [[0, "ret0", "msr7579", "video7579", "a girl wearing red top and black trouser is putting a sweater on a dog"],
          [1, "ret1", "msr7725", "video7725", "young people sit around the edges of a room clapping"]])
    _csv(os.path.join(root, "msrvtt_data", "MSRVTT_train.9k.csv"), ["video_id"], [["video0"], ["video1"]])
    sentences = [{"caption": f"caption {j} of video{v}", "video_id": f"video{v}", "sen_id": 20 * v + j}
                 for v in (0, 1, 2) for j in range(20)]
    _put(os.path.join(root, "msrvtt_data", "MSRVTT_data.json"), json.dumps({"sentences": sentences}).encode())
    for v in ("video7579", "video7725", "video0", "video1"):
        _put(os.path.join(root, "videos", "all", f"{v}.mp4"), b"\x00")
    summary, rows = _run(tmp_path, "msrvtt", root)
    assert summary["counts"] == {"videos": 2, "captions": 2}
    assert rows[1] == {"id": "video7725_0", "video": os.path.abspath(os.path.join(root, "videos", "all", "video7725.mp4")),
                       "text": "young people sit around the edges of a room clapping"}
    summary, rows = _run(tmp_path, "msrvtt", root, "train")
    assert summary["counts"] == {"videos": 2, "captions": 40} and set(_groups(summary).values()) == {"video0", "video1"}


def test_clotho_evaluation_split(tmp_path):
    root = str(tmp_path / "clotho")
    names = ["Santa Motor.wav", "Radio bad reception.wav"]
    _csv(os.path.join(root, "clotho_captions_evaluation.csv"), ["file_name"] + [f"caption_{k}" for k in range(1, 6)],
         [[n] + [f"{n} caption {k}" for k in range(1, 6)] for n in names])
    for n in names:
        _put(os.path.join(root, "evaluation", n), b"RIFF")
    summary, rows = _run(tmp_path, "clotho", root)
    assert summary["split"] == "evaluation" and summary["counts"] == {"clips": 2, "captions": 10}
    assert rows[0] == {"id": "Santa Motor_0", "audio": os.path.abspath(os.path.join(root, "evaluation", names[0])),
                       "text": "Santa Motor.wav caption 1"}
    _csv(os.path.join(root, "clotho_captions_validation.csv"), ["file_name", "caption_1"], [["x.wav", "y"]])
    with pytest.raises(DatasetError, match="expected the columns file_name, caption_1.*missing caption_2"):
        _run(tmp_path, "clotho", root, "validation")


# --- classification: ESC-50, a class folder, CIFAR, a Hugging Face export --------------------------------------

def _esc50(root: str) -> None:
    rows = [["1-100032-A-0.wav", 1, 0, "dog", True, 100032, "A"], ["1-100038-A-14.wav", 1, 14, "chirping_birds", False, 100038, "A"],
            ["2-100648-A-43.wav", 2, 43, "car_horn", False, 100648, "A"], ["5-9032-A-0.wav", 5, 0, "dog", True, 9032, "A"]]
    _csv(os.path.join(root, "meta", "esc50.csv"), ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    for r in rows:
        _put(os.path.join(root, "audio", r[0]), b"RIFF")


def test_esc50_folds_and_labels_with_the_sound_templates(tmp_path):
    root = str(tmp_path / "ESC-50-master")
    _esc50(root)
    summary, rows = _run(tmp_path, "esc50", root)  # all
    assert summary["counts"] == {"clips": 4, "classes": 3} and len(rows) == 4
    assert rows[1] == {"id": "1-100038-A-14", "audio": os.path.abspath(os.path.join(root, "audio", "1-100038-A-14.wav")),
                       "fold": 1, "category": "chirping birds"}
    labels = _labels(summary)
    assert labels["classes"] == ["dog", "chirping birds", "car horn"]  # in the dataset's order (target)
    assert labels["labels"]["5-9032-A-0"] == "dog" and "the sound of {}." in labels["templates"]
    _, fold = _run(tmp_path, "esc50", root, "fold1")
    _, rest = _run(tmp_path, "esc50", root, "except-fold1")
    assert [r["id"] for r in fold] == ["1-100032-A-0", "1-100038-A-14"]
    assert [r["id"] for r in rest] == ["2-100648-A-43", "5-9032-A-0"]


def test_imagefolder_with_and_without_class_names(tmp_path):
    root = str(tmp_path / "imagenet")
    for wnid in ("n01440764", "n01443537"):
        for k in range(2):
            _put(os.path.join(root, "val", wnid, f"ILSVRC2012_val_0000{k}{wnid[-1]}.JPEG"), _jpeg())
    _put(os.path.join(root, "val", "n01440764", "notes.txt"), b"not an image")
    summary, rows = _run(tmp_path, "imagefolder", root, "val")
    assert summary["counts"] == {"images": 4, "classes": 2} and rows[0]["class"] == "n01440764"
    names = _put(str(tmp_path / "names.json"), json.dumps({"n01440764": "tench", "n01443537": "goldfish"}).encode())
    summary, rows = _run(tmp_path, "imagefolder", root, "val", class_names=names)
    assert _labels(summary)["classes"] == ["tench", "goldfish"] and "a photo of a {}." in _labels(summary)["templates"]
    assert rows[0] == {"id": "n01440764/ILSVRC2012_val_000004", "class": "tench",
                       "image": os.path.abspath(os.path.join(root, "val", "n01440764", "ILSVRC2012_val_000004.JPEG"))}
    _put(str(tmp_path / "names.json"), json.dumps({"n01440764": "tench"}).encode())
    with pytest.raises(DatasetError, match="naming every class folder; 1 are not, e.g. 'n01443537'"):
        _run(tmp_path, "imagefolder", root, "val", class_names=names)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binary_records_become_png_files(tmp_path, name):
    root = str(tmp_path / "cifar")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    if name == "cifar10":
        folder, names, labels = "cifar-10-batches-bin", "batches.meta.txt", np.array([[3], [9], [0]], np.uint8)
        _put(os.path.join(root, folder, names), b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n")
        _put(os.path.join(root, folder, "test_batch.bin"), np.hstack([labels, pixels]).tobytes())
        expected = ["cat", "truck", "airplane"]
    else:
        folder, names = "cifar-100-binary", "fine_label_names.txt"
        _put(os.path.join(root, folder, names), "\n".join(f"class_{k}" for k in range(100)).encode())
        labels = np.array([[1, 42], [2, 7], [0, 99]], np.uint8)  # coarse, fine
        _put(os.path.join(root, folder, "test.bin"), np.hstack([labels, pixels]).tobytes())
        expected = ["class 42", "class 7", "class 99"]
    summary, rows = _run(tmp_path, name, root)
    assert [r["class"] for r in rows] == expected and summary["counts"]["images"] == 3
    first = np.asarray(Image.open(rows[0]["image"]))  # the record's planes (R, G, B) as an RGB picture
    assert first.shape == (32, 32, 3) and np.array_equal(first, pixels[0].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar_python_version_is_refused_never_unpickled(tmp_path):
    root = str(tmp_path / "cifar")
    _put(os.path.join(root, "cifar-10-batches-py", "test_batch"), b"\x80\x04 a pickle that must never be loaded")
    with pytest.raises(DatasetError, match="python version \\(pickles, which this project never loads\\)"):
        _run(tmp_path, "cifar10", root)


def _hf_export(path: str, columns: dict, features: dict) -> None:
    table = pa.table(columns)
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), path, row_group_size=2)


def test_hf_parquet_export_keeps_the_media_inside_and_reads_captions_and_class_names(tmp_path):
    root = str(tmp_path / "hf")
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pictures = [{"bytes": png_bytes((8, 8), (k * 40, 0, 0)), "path": f"{k}.png"} for k in range(3)]
    _hf_export(os.path.join(root, "data", "test-00000-of-00001.parquet"),
               {"image": pa.array(pictures, image), "caption": [["a red one", "red"], ["dark"], ["black", "a", "b"]]},
               {"image": {"_type": "Image"}, "caption": {"feature": {"dtype": "string", "_type": "Value"},
                                                         "_type": "Sequence"}})
    summary, rows = _run(tmp_path, "hf-parquet", root, "test")
    assert summary["counts"] == {"items": 3, "rows": 6} and summary["files"]["manifest"].endswith("manifest.parquet")
    assert [r["id"] for r in rows] == ["0_0", "0_1", "1_0", "2_0", "2_1", "2_2"]
    assert rows[1] == {"id": "0_1", "image": pictures[0], "text": "red"}
    assert _groups(summary) == {"0_0": "0", "0_1": "0", "1_0": "1", "2_0": "2", "2_1": "2", "2_2": "2"}
    _hf_export(os.path.join(root, "labelled", "train-00000-of-00002.parquet"),
               {"img": pa.array(pictures, image), "label": [1, 0, 1]},
               {"img": {"_type": "Image"}, "label": {"names": ["cat", "dog"], "_type": "ClassLabel"}})
    summary, rows = _run(tmp_path, "hf-parquet", os.path.join(root, "labelled"), "train")
    assert [r["class"] for r in rows] == ["dog", "cat", "dog"] and _labels(summary)["classes"] == ["cat", "dog"]
    with pytest.raises(DatasetError, match="no Parquet file of split 'validation'"):
        _run(tmp_path, "hf-parquet", root, "validation")
    # a text classification set (SST-2's columns): each sentence is an item of the text modality
    _hf_export(os.path.join(root, "sst2", "validation-00000-of-00001.parquet"),
               {"idx": [0, 1, 2], "sentence": ["it 's a charming journey ", "bland", "a gem"], "label": [1, 0, 1]},
               {"idx": {"dtype": "int32", "_type": "Value"}, "sentence": {"dtype": "string", "_type": "Value"},
                "label": {"names": ["negative", "positive"], "_type": "ClassLabel"}})
    summary, rows = _run(tmp_path, "hf-parquet", os.path.join(root, "sst2"), "validation")
    assert rows == [{"id": "0", "text": "it 's a charming journey ", "class": "positive"},
                    {"id": "1", "text": "bland", "class": "negative"}, {"id": "2", "text": "a gem", "class": "positive"}]
    assert _labels(summary)["labels"] == {"0": "positive", "1": "negative", "2": "positive"}
    assert _labels(summary)["templates"] == ["{}"]


def test_the_command_line_writes_and_names_a_bad_split(tmp_path, capsys):
    from jobs.dataset import main

    root = str(tmp_path / "esc")
    _esc50(root)
    assert main(["esc50", "--root", root, "--split", "fold2", "--output", str(tmp_path / "o")]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 1
    assert main(["esc50", "--root", root, "--split", "fold6", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: esc50: split 'fold6': expected one of all, fold1, fold2, fold3, fold4, fold5, "
                   "except-fold1, except-fold2, except-fold3, except-fold4, except-fold5"]


def test_a_coco_fixture_through_embed_and_multi_positive_evaluation(ray_session, trained, tmp_path):
    """The adapter's manifest embeds as it is (each image once, though on each of its captions' rows) and its groups
    make evaluation count an image once and any of its captions as a hit."""
    from pipeline.embed.config import EmbedConfig
    from pipeline.embed.job import run_embed
    from pipeline.eval.report import evaluate

    root = str(tmp_path / "coco")
    _karpathy_coco(root)
    summary, rows = _run(tmp_path, "coco", root)
    store = str(tmp_path / "store")
    embedded = run_embed(EmbedConfig(input=summary["files"]["manifest"], output=store, modalities=["image", "text"],
                                     no_progress_timeout_s=120))
    assert embedded["modalities"]["image"]["complete"] and embedded["modalities"]["text"]["complete"]
    report = evaluate(trained[0], store, output=str(tmp_path / "eval"), groups_path=summary["files"]["groups"],
                      benchmark="coco_fixture")
    pair = report["pairs"]["image-text"]
    assert pair["protocol"] == "multi-positive" and pair["n"] == 2 and pair["items"] == {"image": 2, "text": 11}
    assert pair["text->image/recall@5"] == 1.0  # 2 images, each counted once: always within the first 5
    assert pair["image->text/recall@1"] in (0.0, 0.5, 1.0)  # 2 image queries
