"""The field's protocols in `oneencoder evaluate`: multi-positive retrieval (groups), zero-shot classification of a
store of one modality (labels and templates), and the clip_benchmark result shape."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from jobs import evaluate as evaluate_job
from pipeline.eval.report import clip_benchmark, distinct_items, evaluate, grouped_retrieval, zero_shot


def _unit(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_multi_positive_retrieval_on_a_hand_computed_case():
    """Two images, three captions (two of image A): a caption finds its image; an image is found by any caption."""
    images = (["A", "B"], _unit([[1, 0], [0, 1]]))
    texts = (["A_0", "A_1", "B_0"], _unit([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]]))
    groups = {"A": "a", "B": "b", "A_0": "a", "A_1": "a", "B_0": "b"}
    r = grouped_retrieval(images, texts, groups, "image", "text")
    assert r["n"] == 2 and r["items"] == {"image": 2, "text": 3} and r["protocol"] == "multi-positive"
    # captions → images: A_0 finds A first, A_1 finds B first (A second), B_0 finds B first
    assert r["text->image/recall@1"] == pytest.approx(2 / 3) and r["text->image/recall@5"] == 1.0
    assert r["text->image/median_rank"] == 1.0
    # images → captions: A's best is A_0 (0.9, first); B's best caption is B_0 (0.9, first), A_1 being below it
    assert r["image->text/recall@1"] == 1.0 and r["image->text/median_rank"] == 1.0
    # a single-positive count would have called A_1 → A right only at rank 2 and the image A's own row "A" has no
    # caption of the same id at all: the groups are what make the figure comparable with published ones


def _clip_benchmark_recall(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    """clip_benchmark's zero-shot retrieval recall, from its definition: a query counts when any of its positives is
    among its k best scored candidates."""
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((np.take_along_axis(positive, top, axis=1).sum(axis=1) > 0).mean())


def test_multi_positive_retrieval_matches_clip_benchmarks_definition():
    rng = np.random.default_rng(0)
    n_images, per_image = 30, 5
    z_images = _unit(rng.normal(size=(n_images, 16)))
    z_texts = _unit(np.repeat(z_images, per_image, axis=0) + 0.9 * rng.normal(size=(n_images * per_image, 16)))
    image_ids = [f"i{k}" for k in range(n_images)]
    text_ids = [f"i{k}_{j}" for k in range(n_images) for j in range(per_image)]
    groups = {**{i: i for i in image_ids}, **{t: t.split("_")[0] for t in text_ids}}
    r = grouped_retrieval((image_ids, z_images), (text_ids, z_texts), groups, "image", "text")
    positive = np.repeat(np.eye(n_images, dtype=bool), per_image, axis=0)  # (texts, images): text t shows image i
    scores = z_texts @ z_images.T
    for k in (1, 5, 10):
        assert r[f"text->image/recall@{k}"] == pytest.approx(_clip_benchmark_recall(scores, positive, k))  # image_retrieval
        assert r[f"image->text/recall@{k}"] == pytest.approx(_clip_benchmark_recall(scores.T, positive.T, k))
    assert 0 < r["image->text/recall@1"] < 1 and r["image->text/recall@1"] > r["text->image/recall@1"]
    report = {"pairs": {"image-text": r}, "zero_shot": {}}
    entry, = clip_benchmark(report, "toy_captions", "/models/m1")
    assert entry["task"] == "zeroshot_retrieval" and entry["dataset"] == "toy_captions" and entry["model"] == "m1"
    assert entry["metrics"]["image_retrieval_recall@5"] == r["text->image/recall@5"]  # text → image, as clip_benchmark
    assert entry["metrics"]["text_retrieval_recall@5"] == r["image->text/recall@5"]


def test_rows_repeating_an_item_count_once_within_their_group():
    uris = {"a_0": "/c/1.jpg", "a_1": "/c/1.jpg", "a_2": "/c/2.jpg", "b_0": "/c/1.jpg", "x": "/c/1.jpg", "t_0": None,
            "t_1": None}
    groups = {"a_0": "a", "a_1": "a", "a_2": "a", "b_0": "b", "t_0": "a", "t_1": "a"}
    # a_1 repeats a_0's file; b_0 is b's own; x has no group; captions (no file) are each their own
    assert distinct_items(uris, groups) == ["a_0", "a_2", "b_0", "t_0", "t_1"]


class _Prompts:
    """A model whose text encoder gives each prompt a fixed vector (class by class, template by template)."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def embed(self, prompts, modality):
        assert modality == "text" and len(prompts) == len(self.vectors)
        return self.vectors


def test_zero_shot_accuracy_top5_and_mean_per_class_recall_by_hand(tmp_path):
    labels = tmp_path / "labels.yaml"
    labels.write_text(yaml.safe_dump({"classes": ["cat", "dog"], "templates": ["a {}", "the {}"],
                                      "labels": {"x1": "cat", "x2": "cat", "x3": "dog"}}))
    prompts = _unit([[1, 0], [1, 0.1], [0, 1], [0.1, 1]])  # cat's two templates, then dog's
    items = (["x1", "x2", "x3"], _unit([[1, 0.2], [0.9, 0.1], [1, 0.3]]))  # x3, a dog, looks like a cat
    z = zero_shot(_Prompts(prompts), {"image": items}, str(labels))
    assert z["image"]["n"] == 3 and z["image"]["accuracy"] == pytest.approx(2 / 3)
    assert z["image"]["mean_per_class_recall"] == pytest.approx((1.0 + 0.0) / 2)  # cats all right, the dog wrong
    assert z["image"]["top5"] == 1.0


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_zero_shot_on_a_store_of_one_modality(trained, tmp_path, modality, capsys):
    """An image-only (or audio-only) store classified against its class names through the templates (no text rows,
    no pairs); the figures land in report.json and, in clip_benchmark's shape, in clip_benchmark.json."""
    from pipeline.datasets.common import TEMPLATES
    from pipeline.synthetic.concept_store import write_concept_store

    store = str(tmp_path / "store")
    concepts = write_concept_store(store, n=96, seed=1, modalities=(modality,))
    labels = tmp_path / "labels.yaml"
    labels.write_text(yaml.safe_dump({"templates": TEMPLATES[modality], "labels": concepts}))
    out = str(tmp_path / "eval")
    assert evaluate_job.main(["--model", trained[0], "--features", store, "--labels", str(labels), "--output", out,
                              "--benchmark", f"concepts_{modality}"]) == 0
    printed = capsys.readouterr().out
    report = json.load(open(os.path.join(out, "report.json")))
    z = report["zero_shot"][modality]
    assert report["pairs"] == {} and z["n"] == 96 and report["zero_shot"]["classes"] == 24
    assert z["accuracy"] > 3 / 24 and z["top5"] >= z["accuracy"] and 0 < z["mean_per_class_recall"] <= 1
    assert f"zero-shot {modality}: accuracy {z['accuracy']:.3f}" in printed
    entry, = json.load(open(os.path.join(out, "clip_benchmark.json")))
    assert entry == {"dataset": f"concepts_{modality}", "model": os.path.basename(trained[0]),
                     "pretrained": os.path.abspath(trained[0]), "task": "zeroshot_classification", "modality": modality,
                     "metrics": {"acc1": z["accuracy"], "acc5": z["top5"],
                                 "mean_per_class_recall": z["mean_per_class_recall"]}, "language": "en"}
    assert evaluate_job.main(["--model", trained[0], "--features", store, "--output", out]) == 2
    assert "need features of two modalities" in capsys.readouterr().err  # without labels: nothing to measure


def test_evaluate_with_groups_counts_any_partner_of_the_group(trained, feature_store, concept_store, tmp_path):
    """Groups of the concept store's 24 concepts (20 rows each): an image's hit is any caption of its concept, as
    concept-level recall counts it, and the report says which protocol it used."""
    from pipeline.eval.metrics import ranks
    from pipeline.inference import load_model
    from pipeline.store.pairs import load_features

    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"groups": concept_store[1]}))
    report = evaluate(trained[0], feature_store, output=str(tmp_path), groups_path=str(groups), benchmark="concepts")
    pair = report["pairs"]["image-text"]
    assert pair["protocol"] == "multi-positive" and pair["n"] == 24 and pair["items"] == {"image": 480, "text": 480}
    model = load_model(trained[0])
    z = {m: model.project(np.stack([f[i] for i in sorted(f)]), m)
         for m, f in ((m, load_features(feature_store, m, {})) for m in ("image", "text"))}
    labels = [concept_store[1][i] for i in sorted(concept_store[1])]
    hits = ranks(z["image"], z["text"], labels_q=labels, labels_t=labels) < 1
    assert pair["image->text/recall@1"] == pytest.approx(hits.mean())
    entries = json.load(open(tmp_path / "clip_benchmark.json"))
    image = next(e for e in entries if e["modality"] == "image")
    assert image["protocol"] == "multi-positive" and image["metrics"]["image_retrieval_recall@1"] == \
        pair["text->image/recall@1"]


def test_linear_probe_on_separable_and_on_noisy_classes():
    from pipeline.eval.probe import WEIGHT_DECAYS, linear_probe

    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(3, 8)))

    def split(n: int, noise: float):
        names = [("cat", "dog", "eel")[k % 3] for k in range(n)]
        x = _unit(centres[[k % 3 for k in range(n)]] + noise * rng.normal(size=(n, 8)))
        return x, names

    r = linear_probe(split(60, 0.05), split(30, 0.05))
    assert r["accuracy"] == 1.0 and r["mean_per_class_recall"] == 1.0 and r["top5"] == 1.0
    assert r["n_train"] == 60 and r["n"] == 30 and r["classes"] == 3 and r["weight_decay"] in WEIGHT_DECAYS
    noisy = linear_probe(split(300, 1.5), split(150, 1.5))
    assert 1 / 3 < noisy["accuracy"] < 1.0  # above chance, below perfect: the test split is really measured
    x, names = split(6, 0.05)
    unseen = linear_probe(split(60, 0.05), (np.vstack([x, x[:1]]), names + ["fox"]))
    assert unseen["n"] == 6  # a test item of a class the training split lacks is not counted


def test_the_linear_probe_through_evaluate(trained, tmp_path, capsys):
    """Train and test stores of one modality (images of the 24 concepts, drawn with two seeds), each labelled: the
    probe fits on the train store's aligned vectors and is measured on the evaluated store."""
    from pipeline.synthetic.concept_store import write_concept_store

    stores = {}
    for split, seed in (("train", 3), ("test", 4)):
        stores[split] = str(tmp_path / split)
        concepts = write_concept_store(stores[split], n=96, seed=seed, modalities=("image",))
        (tmp_path / f"{split}.yaml").write_text(yaml.safe_dump({"templates": ["a {}"], "labels": concepts}))
    out = str(tmp_path / "eval")
    assert evaluate_job.main(["--model", trained[0], "--features", stores["test"], "--labels", str(tmp_path / "test.yaml"),
                              "--probe-features", stores["train"], "--probe-labels", str(tmp_path / "train.yaml"),
                              "--output", out]) == 0
    report = json.load(open(os.path.join(out, "report.json")))
    p = report["linear_probe"]["image"]
    assert p["n_train"] == 96 and p["n"] == 96 and p["classes"] == 24 and p["accuracy"] > 3 / 24
    assert f"linear probe image: accuracy {p['accuracy']:.3f}" in capsys.readouterr().out
    probe, = [e for e in json.load(open(os.path.join(out, "clip_benchmark.json"))) if e["task"] == "linear_probe"]
    assert probe["metrics"] == {"lp_acc1": p["accuracy"], "lp_acc5": p["top5"],
                                "lp_mean_per_class_recall": p["mean_per_class_recall"]}
    assert evaluate_job.main(["--model", trained[0], "--features", stores["test"], "--labels", str(tmp_path / "test.yaml"),
                              "--probe-features", stores["train"]]) == 2
    assert "a linear probe needs probe_features" in capsys.readouterr().err
