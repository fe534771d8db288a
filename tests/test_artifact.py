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
