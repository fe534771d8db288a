"""Generated corpora come from the modality registry: each modality's ``synthetic`` entry renders a concept."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from pipeline.config import LimitsConfig
from pipeline.media.decode import DecodeSettings, decode_item
from pipeline.media.ffmpeg import find_ffmpeg
from pipeline.modalities import REGISTRY
from pipeline.modalities.base import InputSpec, Synthetic
from pipeline.modality import Modality
from pipeline.synthetic.corpus import concept_inputs, synthetic_modalities, write_sample_corpus
from pipeline.synthetic.draw import concept


def test_every_modality_writes_samples_its_own_decoder_reads(tmp_path):
    """Every registered modality can generate samples, in each of its formats, and its decoder reads them back
    as the same kind of input its ``draw`` gives the quality experiments."""
    assert synthetic_modalities() == Modality.all()
    manifest = write_sample_corpus(str(tmp_path), n=6, modalities=tuple(Modality.all()), vary=True)
    rows = [json.loads(line) for line in open(manifest)]
    assert [r["id"] for r in rows] == [f"s{i:05d}" for i in range(6)]
    drawn = concept_inputs(0, np.random.default_rng(0))
    for modality in Modality.all():
        synth = modality.spec.synthetic
        seen = set()
        for i, row in enumerate(rows):
            if modality.is_inline:
                colour, shape = concept(i)
                assert colour in row[modality] and shape in row[modality], row
                continue
            assert row[modality] == synth.file_name(i) and os.path.isfile(tmp_path / row[modality])
            seen.add(row[modality].rsplit(".", 1)[1])
            settings = DecodeSettings(modality, InputSpec(), LimitsConfig(), {}, find_ffmpeg(), ffmpeg_threads=1)
            decoded = decode_item(str(tmp_path / row[modality]), settings)
            assert isinstance(decoded, np.ndarray) and decoded.dtype == drawn[modality].dtype, (modality, row)
            assert decoded.ndim == drawn[modality].ndim, (modality, decoded.shape, drawn[modality].shape)
        assert seen == set(synth.formats[:6]), (modality, seen)


def test_concept_inputs_are_reproducible_and_differ_by_style():
    first = concept_inputs(7, np.random.default_rng(1), "hard")
    again = concept_inputs(7, np.random.default_rng(1), "hard")
    other = concept_inputs(7, np.random.default_rng(1), "other")
    assert list(first) == Modality.all()
    for m in first:
        assert np.array_equal(np.asarray(first[m]), np.asarray(again[m])), m
    assert not np.array_equal(first[Modality("image")], other[Modality("image")])
    for caption in (first[Modality("text")], other[Modality("text")]):  # concept 7: a green square
        assert {"green", "square"} <= set(caption.replace(",", " ").replace(":", " ").split()), caption
    with pytest.raises(ValueError, match="style 'cartoon': expected one of suite, other, hard"):
        concept_inputs(0, np.random.default_rng(0), "cartoon")


def test_a_new_modality_joins_every_generated_corpus_without_an_edit(tmp_path, monkeypatch, capsys):
    """Registering a modality with a ``synthetic`` entry puts it in the sample corpus, the concept inputs and the
    `sample-corpus` command; one without an entry is refused there by name."""
    from jobs.cli import main

    smell = dataclasses.replace(REGISTRY["text"], name="smell", synthetic=Synthetic(
        write=lambda scene, rng, path: f"a {scene.colour} scent", draw=lambda scene, rng: f"{scene.shape} scent"))
    monkeypatch.setitem(REGISTRY, "smell", smell)
    manifest = write_sample_corpus(str(tmp_path / "a"), n=2, modalities=("image", "smell"))
    assert [json.loads(line)["smell"] for line in open(manifest)] == ["a red scent", "a green scent"]
    assert concept_inputs(0, np.random.default_rng(0))[Modality("smell")] == "circle scent"
    assert main(["sample-corpus", str(tmp_path / "b"), "--n", "1", "--modalities", "text,smell"]) == 0
    assert json.loads(open(tmp_path / "b" / "manifest.jsonl").read())["smell"] == "a red scent"

    monkeypatch.setitem(REGISTRY, "smell", dataclasses.replace(smell, synthetic=None))
    assert main(["sample-corpus", str(tmp_path / "c"), "--modalities", "text,smell"]) == 2
    assert "smell cannot generate samples: expected some of image, text, audio, video, depth" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_the_last_modality_draws_nothing_from_the_shared_generator():
    """Depth was added after the others: its draw takes no number from the sample's generator, so the corpora of
    the modalities before it (and the quality bar's settings measured on them) are as they were without it."""
    from pipeline.synthetic.draw import scene

    rng = np.random.default_rng(3)
    sample = scene(5, rng, "other")
    before = rng.bit_generator.state
    drawn = Modality.all()[-1].spec.synthetic.draw(sample, rng)
    assert Modality.all()[-1] == "depth" and drawn.shape == (64, 64)
    assert rng.bit_generator.state == before


def test_a_synthetic_entry_must_fit_its_modality():
    with pytest.raises(ValueError, match="synthetic samples of an inline modality have no folder or formats"):
        dataclasses.replace(REGISTRY["image"], synthetic=Synthetic(write=print, draw=print))
    with pytest.raises(ValueError, match=r"synthetic formats \['avi'\] are not among its extensions"):
        dataclasses.replace(REGISTRY["image"], synthetic=Synthetic(print, print, folder="images", formats=("png", "avi")))
    with pytest.raises(ValueError, match="inline modality have no folder"):
        dataclasses.replace(REGISTRY["text"], synthetic=Synthetic(print, print, folder="texts", formats=("txt",)))

