"""The paper's promise, end to end: depth, a fifth modality, added to a trained model without retraining it.

The embed job reads depth maps (16-bit PNG, .npy, float TIFF); `oneencoder train --from MODEL --stages
depth:image` trains only the new stage, every earlier modality's vectors stay bit-identical, and the
grown model evaluates and serves depth through the same API.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket

import numpy as np
import pytest
import requests
from PIL import Image

from pipeline.artifact import read_artifact
from pipeline.config import ConfigError, EmbedConfig
from pipeline.corpus import concept, depth_map, draw_shape, write_depth
from pipeline.inference import load_model
from pipeline.modality import Modality
from pipeline.quality import concept_inputs, concept_recall_at_1, write_concept_store

CHANCE = 1 / 24  # 24 concepts (6 colours x 4 shapes)


@pytest.fixture(scope="module")
def depth_store(session_dir):
    """The concept corpus's image, text and depth features (the same ids, images and captions as the trained
    model's store, embedded with the same tiny encoders), as `oneencoder embed` would write them."""
    root = os.path.join(session_dir, "depth-features")
    write_concept_store(root, n=480, seed=0, modalities=("image", "text", "depth"))
    return root


def _digests(folder: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                out[name] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def grown(ray_session, trained, depth_store, tmp_path_factory):
    """MODEL2 = the trained model + depth, by the command the README gives."""
    from jobs.train import main

    base = trained[0]
    before = _digests(base)
    output = str(tmp_path_factory.mktemp("grown") / "model2")
    assert main(["--from", base, "--features", depth_store, "--stages", "depth:image", "--output", output]) == 0
    assert _digests(base) == before  # the model it grows is left as it was
    return base, output


def test_train_from_adds_depth_and_leaves_every_earlier_vector_bit_identical(grown):
    base_dir, grown_dir = grown
    base, model2 = read_artifact(base_dir), read_artifact(grown_dir)
    assert set(model2.modalities) == set(base.modalities) | {"depth"} and "depth" not in base.modalities
    assert [s["stage"] for s in model2.stages] == [s["stage"] for s in base.stages] + ["4-depth-image"]
    assert model2.stages[:-1] == base.stages and model2.provenance["from"] == base_dir
    assert {m: model2.encoders[m] for m in base.modalities} == base.encoders
    assert model2.encoders["depth"]["name"].startswith("oneencoder/tiny-depth@")
    old, new = load_model(base_dir), load_model(grown_dir)
    sample = [concept_inputs(i, np.random.default_rng(100 + i)) for i in range(8)]
    for name in base.modalities:
        a, _ = old.encode([s[Modality(name)] for s in sample], name)
        b, _ = new.encode([s[Modality(name)] for s in sample], name)
        assert np.array_equal(a, b), name  # bit for bit: indexes built with MODEL stay valid
    png = io.BytesIO()
    draw_shape("red", "circle").save(png, "PNG")
    assert np.array_equal(old.embed([png.getvalue()], "image"), new.embed([png.getvalue()], "image"))


def test_the_grown_model_retrieves_depth_across_modalities(grown, depth_store):
    """On 150 concept samples never trained on: depth -> image and depth -> text find the concept far above
    chance, and `oneencoder evaluate` reports depth's pairs on the store."""
    from pipeline.evaluate import evaluate

    model = load_model(grown[1])
    rng = np.random.default_rng(7)
    test = [concept_inputs(i, rng) for i in range(150)]
    labels = ["{} {}".format(*concept(i)) for i in range(150)]
    vectors = {m: model.encode([s[Modality(m)] for s in test], m)[0] for m in ("depth", "image", "text")}
    to_image = concept_recall_at_1(vectors["depth"], vectors["image"], labels)
    to_text = concept_recall_at_1(vectors["depth"], vectors["text"], labels)
    assert to_image > 4 * CHANCE and to_text > 4 * CHANCE, (to_image, to_text)
    report = evaluate(grown[1], depth_store, output=os.path.join(grown[1], "eval"))
    assert {"depth-image", "depth-text", "image-text"} <= set(report["pairs"])
    assert report["pairs"]["depth-image"]["depth->image/recall@1"] > 4 / report["pairs"]["depth-image"]["n"]


def test_train_from_refuses_what_would_change_or_mismatch_the_grown_model(trained, depth_store, feature_store, tmp_path):
    from pipeline.train import run_train
    from pipeline.train_config import load_train_config

    base = trained[0]

    def train(stages: str, features: str = depth_store, output: str = str(tmp_path / "m")):
        return run_train(load_train_config(None, from_model=base, features=features, stages=stages, output=output))

    with pytest.raises(ConfigError, match="stage 1: 'image' is already aligned"):
        train("image:text")
    with pytest.raises(ConfigError, match=r"stage 1 \(depth:smell\)|unknown modality 'smell'"):
        train("depth:smell")
    with pytest.raises(ConfigError, match="from_model = output"):
        train("depth:image", output=base)
    with pytest.raises(ConfigError, match="no model artifact at"):
        run_train(load_train_config(None, from_model=str(tmp_path / "none"), features=depth_store, stages="depth:image",
                                    output=str(tmp_path / "m")))
    other = str(tmp_path / "k2")  # image features with K = 2: not what the model was trained on
    write_concept_store(other, n=48, seed=0, tokens=2, modalities=("image", "depth"))
    with pytest.raises(ConfigError, match="its image features come from .* with K=2, but .* was trained on .* with K=1"):
        train("depth:image", features=other)
    assert not os.path.exists(tmp_path / "m" / "config.json")


def test_the_grown_model_serves_depth_through_the_same_api(grown, tmp_path):
    """`modality: "depth"` with a 16-bit PNG gives the vector load_model gives; the same PNG without a modality
    is an image, as every PNG was before depth existed."""
    from ray import serve

    from serving.local import deploy, prepare

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    small = {"ray_actor_options": {"num_cpus": 0.1}, "autoscaling_config": None, "num_replicas": 1}
    app, http = prepare(_serve_config(tmp_path, grown[1], {"Gateway": small, "encoder-depth": small,
                                                            "encoder-image": small}))
    url = deploy(app, http, port=port)
    try:
        path = tmp_path / "d.png"
        write_depth(str(path), depth_map("purple", "square", size=64))
        uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        as_depth = requests.post(url + "/v1/embeddings", json={"model": "oneencoder", "input": [uri], "modality": "depth"},
                                 timeout=120)
        assert as_depth.status_code == 200, as_depth.text
        data = as_depth.json()["data"][0]
        assert data["modality"] == "depth"
        want = load_model(grown[1]).embed([path.read_bytes()], "depth")[0]
        np.testing.assert_allclose(data["embedding"], want, atol=1e-5)
        as_image = requests.post(url + "/v1/embeddings", json={"model": "oneencoder", "input": [uri]}, timeout=120)
        assert as_image.status_code == 200 and as_image.json()["data"][0]["modality"] == "image"
        rgb = io.BytesIO()
        Image.new("RGB", (32, 32), (200, 10, 10)).save(rgb, "PNG")
        bad = requests.post(url + "/v1/embeddings", json={
            "model": "oneencoder", "modality": "depth",
            "input": ["data:image/png;base64," + base64.b64encode(rgb.getvalue()).decode()]}, timeout=120)
        assert bad.status_code == 400 and "depth map has RGB pixels" in bad.json()["error"]["message"]
    finally:
        serve.shutdown()


def _serve_config(tmp_path, model: str, deployments: dict[str, dict]) -> str:
    import yaml

    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "serving", "serve_config.yaml")) as fh:
        cfg = yaml.safe_load(fh)
    app = cfg["applications"][0]
    app["args"].update({"model": model, "modalities": ["depth", "image"]})
    app["deployments"] = [{"name": name, **options} for name, options in deployments.items()]
    path = str(tmp_path / "serve.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)
    return path


def test_the_embed_job_reads_depth_maps_and_names_a_bad_one(ray_session, tmp_path):
    from pipeline.corpus import write_sample_corpus
    from pipeline.embed import run_embed
    from pipeline.features import read_errors, read_features

    manifest = write_sample_corpus(str(tmp_path / "corpus"), n=6, modalities=("text", "depth"))
    draw_shape("red", "circle").save(tmp_path / "corpus" / "depth" / "colour.png")  # an RGB picture, not a depth map
    with open(manifest, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "bad", "text": "a red circle", "depth": "depth/colour.png"}) + "\n")
    summary = run_embed(EmbedConfig(input=manifest, output=str(tmp_path / "out"), preset="tiny"))
    depth = summary["modalities"]["depth"]
    assert depth["items"] == 7 and depth["features"] == 6 and depth["errors"]["decode"] == 1 and depth["complete"]
    uris = read_features(str(tmp_path / "out"), "depth").column("uri").to_pylist()
    assert {u.rsplit(".", 1)[1] for u in uris} == {"png", "npy", "tiff"}  # every format has features
    errors = read_errors(str(tmp_path / "out")).to_pylist()
    assert [(e["id"], e["modality"], e["stage"]) for e in errors] == [("bad", "depth", "decode")]
    assert "depth map has RGB pixels" in errors[0]["error"]
