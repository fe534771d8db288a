"""Exactly once at every crash point of training: a stop at each step of a stage save and of the artifact, then a
rerun, leaves every saved stage matching its store and an artifact that loads whole or not at all; a stage saved on
another store is retrained. (The embed job's commits: tests/embed/test_crash_points.py.)"""
from __future__ import annotations

import os
import shutil

import pytest

from pipeline.store.features import FeatureStore
from tests.crashes import Crash, crash_on_write


def _train(features: str, output: str, epochs: int = 1):
    from pipeline.train.config import load_train_config
    from pipeline.train.job import run_train

    return run_train(load_train_config(None, features=features, output=output, stages="image:text", epochs=epochs,
                                       val_fraction=0.2))


def _stage_consistent(output: str, features: str) -> None:
    """The saved stage vouches for its weights and its store; the artifact loads and holds those weights."""
    from safetensors.torch import load_file

    from pipeline.inference import load_model
    from pipeline.store.files import read_json

    stage = os.path.join(output, "stages", "1-image-text")
    marker = read_json(os.path.join(stage, "stage.json"))
    assert marker["fingerprint"]["features"] == features
    assert marker["fingerprint"]["store"]["image"] == FeatureStore(features, {}).run_record("image")
    weights, final = load_file(os.path.join(stage, "model.safetensors")), load_file(os.path.join(output, "model.safetensors"))
    assert weights.keys() == final.keys() and all((weights[k] == final[k]).all() for k in weights)
    assert load_model(output).modalities == ["image", "text"]


@pytest.mark.slow
def test_every_stage_save_step_then_a_rerun_leaves_consistent_stages(ray_session, feature_store, tmp_path, monkeypatch):
    import pipeline.artifact as artifact
    import pipeline.train.job as train

    output = str(tmp_path / "model")
    with monkeypatch.context() as patch:  # weights written, marker not: the stage is not reused
        crash_on_write(patch, train, "write_json", "before", lambda t: t.endswith("stage.json"))
        with pytest.raises(Crash):
            _train(feature_store, output)
    assert os.path.exists(os.path.join(output, "stages", "1-image-text", "model.safetensors"))
    assert not os.path.exists(os.path.join(output, "stages", "1-image-text", "stage.json"))
    assert not os.path.exists(os.path.join(output, "config.json"))
    _train(feature_store, output)
    _stage_consistent(output, feature_store)
    with monkeypatch.context() as patch:  # a retrain (2 epochs) stops while writing the artifact
        crash_on_write(patch, artifact, "write_json", "before", lambda t: t.endswith("provenance.json"))
        with pytest.raises(Crash):
            _train(feature_store, output, epochs=2)
    assert not os.path.exists(os.path.join(output, "config.json")), "a half-written artifact must not load"
    result = _train(feature_store, output, epochs=2)
    assert result["stages"][0]["epochs_run"] == 2
    _stage_consistent(output, feature_store)


def test_a_stage_saved_on_another_store_is_retrained(feature_store, tmp_path):
    from pipeline.store.files import write_json
    from pipeline.store.pairs import load_features
    from pipeline.train.config import load_train_config
    from pipeline.train.job import plan_curriculum, reusable_stages

    output = str(tmp_path / "model")
    features = {n: load_features(feature_store, n, {}) for n in ("image", "text")}
    cfg = load_train_config(None, features=feature_store, output=output, stages="image:text", epochs=1)
    (plan,), _ = plan_curriculum(cfg, features, output)
    os.makedirs(plan.folder)
    write_json(os.path.join(plan.folder, "stage.json"), {"fingerprint": plan.fingerprint, "record": {}})
    assert reusable_stages([plan]) == 1
    other = str(tmp_path / "other-store")  # the same rows, embedded with another image encoder
    shutil.copytree(feature_store, other)
    store = FeatureStore(other, {})
    store.start_run("image", {**store.run_record("image"), "encoder": "google/vit-base-patch16-224@main"},
                    store.encoder_record("image"))
    moved = load_train_config(None, features=other, output=output, stages="image:text", epochs=1)
    (again,), _ = plan_curriculum(moved, features, output)
    assert reusable_stages([again]) == 0
