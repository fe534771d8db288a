"""Which model versions give bit-identical vectors of a modality (what the server tells clients, and what lets one
replica serve several versions with one set of weights)."""
from __future__ import annotations

import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

from pipeline.artifact import read_artifact, same_vectors


def test_a_grown_model_keeps_its_bases_vectors_and_a_changed_weight_does_not(grown, tmp_path):
    base, bigger = read_artifact(grown[0]), read_artifact(grown[1])
    for modality in base.modalities:  # `train --from` froze all of them
        assert same_vectors(base, bigger, modality) and same_vectors(bigger, base, modality), modality
    assert not same_vectors(base, bigger, "depth")  # only the grown model has it

    changed = shutil.copytree(grown[0], str(tmp_path / "changed"))
    weights = load_file(f"{changed}/model.safetensors")
    name = next(n for n in weights if n.startswith("adapters.image."))
    weights[name] = np.nextafter(weights[name], np.inf).astype(weights[name].dtype)  # one ulp on one tensor
    save_file(weights, f"{changed}/model.safetensors")
    edited = read_artifact(changed)
    assert not same_vectors(base, edited, "image")
    assert same_vectors(base, edited, "text")  # its own path is untouched
    up = next(n for n in weights if n.startswith("up."))
    weights[up] = weights[up] * 2
    save_file(weights, f"{changed}/model.safetensors")
    assert not same_vectors(base, read_artifact(changed), "text")  # the shared projection is on every path


class _Store:
    """What features_mismatch reads of a feature store: its run.json and encoder.json of a modality."""

    def __init__(self, run: dict, name: str = "enc-text"):
        self.run, self.name = run, name

    def run_record(self, modality):
        return self.run

    def encoder_record(self, modality):
        return {"name": self.name}


def test_features_are_matched_by_what_they_keep_pooled_or_whole():
    """A store and a model agree when both keep K pooled tokens, or both each item's sequence up to the same cap."""
    from pipeline.artifact import Artifact, EncoderRecord

    def model(settings: dict, k: int) -> Artifact:
        record = EncoderRecord("text", "enc-text", "enc-text", None, None, settings, {})
        return Artifact("m", {"tokens": {"text": k}}, {"text": record}, [], {})

    sequences, pooled = model({"tokens": "all", "max_tokens": 32}, 32), model({"tokens": 4}, 4)
    assert sequences.features_mismatch(_Store({"tokens": "all", "max_tokens": 32}), "text") is None
    assert pooled.features_mismatch(_Store({"tokens": 4}), "text") is None
    assert sequences.features_mismatch(_Store({"tokens": 32}), "text") == (
        "its text features keep K=32 tokens, but the model was trained on each item's token sequence (up to 32)")
    assert pooled.features_mismatch(_Store({"tokens": "all", "max_tokens": 4}), "text") == (
        "its text features keep each item's token sequence (up to 4), but the model was trained on K=4 tokens")
    assert sequences.features_mismatch(_Store({"tokens": "all", "max_tokens": 64}), "text").endswith(
        "keep each item's token sequence (up to 64), but the model was trained on each item's token sequence (up to 32)")
    assert model({}, 1).features_mismatch(_Store({"tokens": 1}), "text") is None  # records older than `tokens`
