"""Evaluation report: retrieval per pair, zero-shot from a label file, modality gap, readable plots."""
from __future__ import annotations

import json
import os

import pytest
import yaml

from jobs import evaluate as evaluate_job
from pipeline.eval.report import evaluate


@pytest.fixture(scope="module")
def labels_file(concept_store, tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "labels.yaml"
    path.write_text(yaml.safe_dump({"templates": ["a {}", "a picture of a {}"], "labels": concept_store[1]}))
    return str(path)


def test_report_pairs_gap_zero_shot_and_plots(trained, feature_store, labels_file, tmp_path):
    import numpy as np

    from pipeline.inference import load_model
    from pipeline.store.pairs import load_features

    output, _, _ = trained
    report = evaluate(output, feature_store, labels_file, str(tmp_path))
    assert set(report["pairs"]) == {"audio-image", "audio-text", "audio-video", "image-text", "image-video", "text-video"}
    image_text = report["pairs"]["image-text"]
    assert image_text["n"] == 480
    # the report's figures against ones computed here: the store's features projected by the model, each query's
    # rank the number of other items scored above its own partner
    model = load_model(output)
    feats = {m: load_features(feature_store, m, {}) for m in ("image", "text")}
    assert sorted(feats["image"]) == sorted(feats["text"])  # the same 480 ids, so row i of each is one pair
    z = {m: model.project(np.stack([f[i] for i in sorted(f)]), m) for m, f in feats.items()}
    for query, target in (("image", "text"), ("text", "image")):
        sims = z[query] @ z[target].T
        rank = (sims > np.diag(sims)[:, None]).sum(axis=1)  # 0 = the partner comes first
        for k in (1, 5, 10):
            assert image_text[f"{query}->{target}/recall@{k}"] == pytest.approx(np.mean(rank < k), abs=1e-9), (query, k)
        assert image_text[f"{query}->{target}/median_rank"] == np.median(rank + 1)
    # search: calibration fitted on half the ids, measured on the other half (raw recall there as computed here)
    from pipeline.index.calibration import id_fractions

    search = report["search"]
    ids = sorted(feats["image"])
    test = id_fractions(ids, 2) >= 0.5
    assert search["test_items"]["image"] == test.sum() and search["fit_items"]["image"] == (~test).sum()
    sims = z["text"][test] @ z["image"][test].T
    rank = (sims > np.diag(sims)[:, None]).sum(axis=1)
    assert search["pairs"]["text->image"]["raw"] == {"recall@1": np.mean(rank < 1), "recall@10": np.mean(rank < 10)}
    assert 0 <= search["pairs"]["text->image"]["hubness"]["recall@1"] <= 1
    merged = search["merged"]["text"]
    assert set(merged["targets"]) == {"image", "audio", "video"}
    for ranking in ("raw", "calibrated", "calibrated_hubness"):
        assert sum(merged[ranking]["top10_share"].values()) == pytest.approx(1.0)
    # compact vectors: a model trained without Matryoshka prefixes is measured at its full width only, in each
    # precision; int8 loses little against float, binary more
    from pipeline.index.compact import int8

    compact = report["compact"]["image-text"]
    assert list(compact) == ["256"] and set(compact["256"]) == {"float", "int8", "binary"}
    floats = (image_text["image->text/recall@1"] + image_text["text->image/recall@1"]) / 2
    assert compact["256"]["float"]["recall@1"] <= floats  # ties count against the partner here
    assert abs(compact["256"]["int8"]["recall@10"] - compact["256"]["float"]["recall@10"]) < 0.05
    assert np.abs(int8(z["image"])).max() == 127
    gap = report["gap"]["image-text"]
    assert gap["cosine_true_pairs"] > gap["cosine_random_pairs"]  # trained pairs sit closer than random ones
    zero = report["zero_shot"]
    assert zero["classes"] == 24 and zero["image"]["n"] == 480
    assert zero["image"]["accuracy"] > 3 / 24  # well over chance
    with open(tmp_path / "report.json") as fh:
        assert json.load(fh)["pairs"] == report["pairs"]
    for png in report["plots"]:
        with open(png, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(png) > 10_000


def test_cli_prints_a_table_and_rejects_bad_input(trained, feature_store, labels_file, tmp_path, capsys):
    output, _, _ = trained
    config = tmp_path / "evaluate.yaml"  # the config file's fields, with a flag overriding one of them
    config.write_text(f"model: {output}\nfeatures: /nowhere\noutput: {tmp_path}\n")
    assert evaluate_job.main(["--config", str(config), "--features", feature_store]) == 0
    printed = capsys.readouterr().out
    assert "image -> text" in printed and f"report: {tmp_path}" in printed
    config.write_text(f"features: {feature_store}\nlabel: x.yaml\n")
    assert evaluate_job.main(["--config", str(config)]) == 2
    assert "label: unknown field" in capsys.readouterr().err
    assert evaluate_job.main(["--features", feature_store]) == 2
    assert "model is missing: expected the model artifact folder" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates: [no placeholder]\nlabels: {c00000: red circle}\n")
    assert evaluate_job.main(["--model", output, "--features", feature_store, "--labels", str(bad)]) == 2
    assert "every template must be a string with '{}'" in capsys.readouterr().err
    assert evaluate_job.main(["--model", str(tmp_path / "none"), "--features", feature_store]) == 2
    assert "no model artifact at" in capsys.readouterr().err


def test_baseline_shows_what_freezing_costs(trained, feature_store, tmp_path, capsys):
    """`--baseline`: each stage's pair against a jointly trained MLP pair on the same split, with the sign test."""
    from math import comb

    import numpy as np

    from pipeline.eval.baseline import torch_threads
    from pipeline.inference import load_model
    from pipeline.store.pairs import is_validation, load_features

    output, result, cfg = trained
    argv = ["--model", output, "--features", feature_store, "--output", str(tmp_path), "--baseline", "--baseline-epochs", "5"]
    assert evaluate_job.main(argv) == 0
    printed = capsys.readouterr().out
    assert "against a jointly trained baseline (two 2-layer MLPs per pair, InfoNCE, 5 epochs" in printed
    with open(tmp_path / "report.json") as fh:
        baseline = json.load(fh)["baseline"]
    assert baseline["epochs"] == 5 and set(baseline["pairs"]) == {"image->text", "audio->text", "video->text"}
    model = load_model(output)
    feats = {m: load_features(feature_store, m, {}) for m in ("image", "text", "audio", "video")}
    for pair, r in baseline["pairs"].items():
        assert r["val_items"] == result["stages"][0]["val_pairs"], (pair, r)
        # progressive: instance R@1 (new -> text) of the artifact on the ids its training held out, computed here
        new = pair.split("->")[0]
        held_out = [i for i in sorted(feats[new]) if i in feats["text"] and is_validation(i, cfg.val_fraction, cfg.seed)]
        with torch_threads(1):  # as the comparison projects: items of one concept are near ties, decided by rounding
            za = model.project(np.stack([feats[new][i] for i in held_out]), new)
            zt = model.project(np.stack([feats["text"][i] for i in held_out]), "text")
        sims = za @ zt.T
        hits = (sims > np.diag(sims)[:, None]).sum(axis=1) == 0  # no other text scored above the item's own
        assert r["progressive"] == pytest.approx(hits.mean(), abs=1e-9), (pair, r)
        # the items only one of the two gets right account for the difference of their hit counts
        assert (r["progressive"] - r["baseline"]) * r["val_items"] == pytest.approx(r["only_progressive"] - r["only_baseline"])
        # p_worse: the chance of at least only_baseline heads in only_progressive + only_baseline fair coin flips
        n = r["only_progressive"] + r["only_baseline"]
        assert r["p_worse"] == pytest.approx(sum(comb(n, k) for k in range(r["only_baseline"], n + 1)) / 2 ** n)
        assert f"{pair:<16}{r['val_items']:>6}" in printed
    # instance R@1 of the progressive model is what the artifact gives on its own held-out pairs
    assert baseline["pairs"]["image->text"]["progressive"] > 5 * baseline["pairs"]["image->text"]["chance"]


def test_sign_test_flags_only_a_clearly_worse_model():
    import numpy as np

    from pipeline.eval.baseline import worse_p_value

    ref = np.ones(40, bool)
    assert worse_p_value(ref, ref) == 1.0                       # identical: nothing to see
    one_worse = ref.copy(); one_worse[0] = False                # noqa: E702
    assert worse_p_value(one_worse, ref) == 0.5                 # one item: could be chance
    ten_worse = ref.copy(); ten_worse[:10] = False              # noqa: E702
    assert worse_p_value(ten_worse, ref) < 0.001                # ten items, none the other way: worse
    assert worse_p_value(ref, ten_worse) == 1.0                 # better is never "worse"
