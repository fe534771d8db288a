"""Training on a feature store on S3 (the local S3-compatible server of tests/conftest.py, the store the embed
command wrote there)."""
from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_training_reads_the_feature_store_from_s3_and_stops_early(ray_session, s3_endpoint, s3_run1, tmp_path):
    """On the store the embed command wrote to s3://features/run1 (the s3_run1 fixture). A learning
    rate far too high makes the validation loss stop improving, so early stopping (patience 2) ends
    the stage and the lowest-validation-loss epoch is kept."""
    from pipeline.train.config import load_train_config
    from pipeline.train.job import run_train

    assert s3_run1.returncode == 0, s3_run1.stdout + s3_run1.stderr[-3000:]  # the store this test reads was written

    config = tmp_path / "train.yaml"
    config.write_text(f"val_fraction: 0.25\nkeep_checkpoints: null\nstorage: {{endpoint_url: '{s3_endpoint}'}}\n"
                      "stages: [{new: image, anchor: audio, epochs: 25, lr: 0.05, patience: 2, schedule: constant, "
                      "warmup: 0}]\n")
    cfg = load_train_config(str(config), features="s3://features/run1", output=str(tmp_path / "model"))
    stage = run_train(cfg)["stages"][0]
    assert stage["train_pairs"] + stage["val_pairs"] == 12
    losses = [h["val/loss"] for h in stage["history"]]
    assert [h["epoch"] for h in stage["history"]] == list(range(1, len(losses) + 1))
    assert stage["epochs_run"] < 25, losses
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    assert stage["best_epoch"] == best + 1 and stage["epochs_run"] == best + 1 + 2, losses
    assert stage["best"]["val/loss"] == losses[best]
    provenance = json.loads((tmp_path / "model" / "provenance.json").read_text())
    assert provenance["features"] == "s3://features/run1"
