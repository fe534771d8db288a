"""The paper's promise, end to end: depth, a fifth modality, added to a trained model without retraining it.

`oneencoder train --from MODEL --stages depth:image` (the `grown` fixture, conftest.py) trains only the new
stage, every earlier modality's vectors stay bit-identical, and the grown model retrieves and evaluates
depth. The embed job reading depth maps is in test_embed.py, serving depth in test_serve.py.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pytest

from pipeline.artifact import read_artifact
from pipeline.config import ConfigError
from pipeline.eval.baseline import concept_recall_at_1
from pipeline.inference import load_model
from pipeline.modality import Modality
from pipeline.synthetic.concept_store import write_concept_store
from pipeline.synthetic.corpus import concept_inputs
from pipeline.synthetic.draw import concept, draw_shape

CHANCE = 1 / 24  # 24 concepts (6 colours x 4 shapes)


def test_train_from_adds_depth_and_leaves_every_earlier_vector_bit_identical(grown):
    base_dir, grown_dir = grown
    base, model2 = read_artifact(base_dir), read_artifact(grown_dir)
    assert set(model2.modalities) == set(base.modalities) | {"depth"} and "depth" not in base.modalities
    assert [s["stage"] for s in model2.stages] == [s["stage"] for s in base.stages] + ["4-depth-image"]
    assert model2.stages[:-1] == base.stages and model2.provenance["from"] == base_dir
    assert {m: model2.encoders[m] for m in base.modalities} == base.encoders
    assert model2.encoders["depth"].name.startswith("oneencoder/tiny-depth@")
    old, new = load_model(base_dir), load_model(grown_dir)
    sample = [concept_inputs(i, np.random.default_rng(100 + i)) for i in range(8)]
    for name in base.modalities:
        a, _ = old.encode([s[Modality(name)] for s in sample], name)
        b, _ = new.encode([s[Modality(name)] for s in sample], name)
        assert np.array_equal(a, b), name  # bit for bit: indexes built with MODEL stay valid
    png = io.BytesIO()
    draw_shape("red", "circle").save(png, "PNG")
    assert np.array_equal(old.embed([png.getvalue()], "image"), new.embed([png.getvalue()], "image"))


def test_the_grown_model_retrieves_depth_across_modalities(grown, depth_store, tmp_path):
    """On 150 concept samples never trained on: depth -> image and depth -> text find the concept far above
    chance, and `oneencoder evaluate` reports depth's pairs on the store."""
    from pipeline.eval.report import evaluate

    model = load_model(grown[1])
    rng = np.random.default_rng(7)
    test = [concept_inputs(i, rng) for i in range(150)]
    labels = ["{} {}".format(*concept(i)) for i in range(150)]
    vectors = {m: model.encode([s[Modality(m)] for s in test], m)[0] for m in ("depth", "image", "text")}
    to_image = concept_recall_at_1(vectors["depth"], vectors["image"], labels)
    to_text = concept_recall_at_1(vectors["depth"], vectors["text"], labels)
    assert to_image > 4 * CHANCE and to_text > 4 * CHANCE, (to_image, to_text)
    report = evaluate(grown[1], depth_store, output=str(tmp_path / "eval"))  # not into the model test_serve serves
    assert {"depth-image", "depth-text", "image-text"} <= set(report["pairs"])
    assert report["pairs"]["depth-image"]["depth->image/recall@1"] > 4 / report["pairs"]["depth-image"]["n"]


def test_train_from_refuses_what_would_change_or_mismatch_the_grown_model(trained, depth_store, feature_store, tmp_path):
    import shutil

    from pipeline.train.config import load_train_config
    from pipeline.train.job import run_train

    base = shutil.copytree(trained[0], str(tmp_path / "base"))  # a refusal that failed would write into it

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
    with pytest.raises(ConfigError, match="its image features keep K=2 tokens, but the model was trained on K=1"):
        train("depth:image", features=other)
    assert not os.path.exists(tmp_path / "m" / "config.json")


def test_train_from_refuses_a_store_embedded_by_another_encoder(trained, tmp_path, monkeypatch, capsys):
    """`oneencoder train --from MODEL` on a store whose image features come from another frozen encoder than MODEL's
    (aligning depth to them would put it in another space): exit 2 before any training, one `error:` line naming
    both encoders and where the model's is recorded."""
    import shutil

    import pipeline.synthetic.concept_store
    from jobs import train as train_job
    from pipeline.embed.config import EmbedConfig
    from pipeline.encoders.offline import ensure_built
    from pipeline.encoders.presets import resolve_encoder

    image = Modality("image")
    other_model = shutil.copytree(ensure_built("tiny", image, EmbedConfig().resolved_cache_dir()), str(tmp_path / "vit"))
    other = resolve_encoder(EmbedConfig(encoders={"image": {"model": other_model}}), image)  # a local model folder
    tiny = resolve_encoder
    monkeypatch.setattr(pipeline.synthetic.concept_store, "resolve_encoder", lambda cfg, m: other if m == image else tiny(cfg, m))
    store = str(tmp_path / "features")
    write_concept_store(store, n=48, seed=0, modalities=("image", "depth"))  # as `embed` with encoders.image.model
    base, output = trained[0], str(tmp_path / "grown")
    trained_on = read_artifact(base).encoders["image"].name
    assert other.name != trained_on
    status = train_job.main(["--from", base, "--features", store, "--stages", "depth:image", "--output", output,
                             "--epochs", "1"])
    (line,) = capsys.readouterr().err.splitlines()
    assert status == 2 and line.startswith("error: "), (status, line)
    assert f"its image features come from encoder {other.name!r}, but the model was trained on {trained_on!r}" in line
    assert f"see {base}/encoders.json" in line
    assert not os.path.exists(output)  # refused before anything was written
