"""One raw item to one vector (pipeline/item_encoder.py, behind load_model and the Serve replicas alike): an item
that overflows or breaks the encoder fails alone, and errors about posted bytes name no server path."""
from __future__ import annotations

import os

import numpy as np
import pytest


@pytest.fixture(scope="module")
def model_dir(trained):
    return trained[0]


def test_non_finite_vectors_fail_their_item_only(model_dir, monkeypatch):
    """The frozen encoder overflowing on one input (as fp16 on a GPU would): that item fails, in load_model and in
    the Serve replica alike (the one raw-item → vector path), and its batch-mates get their vectors."""
    from pipeline.inference import load_model
    from pipeline.item_encoder import ItemError
    from serving.config import ServeArgs
    from serving.deployments import ModalityEncoder

    model = load_model(model_dir)
    frozen = model.items("text").frozen
    real = frozen.embed_counted

    def overflowing(texts):
        features, tokens = real(texts)
        features[[i for i, t in enumerate(texts) if "overflow" in t]] = np.inf
        return features, tokens

    monkeypatch.setattr(frozen, "embed_counted", overflowing)
    results = model.embed_items(["a red circle", "overflow", "a blue square"], "text")
    assert isinstance(results[1], ItemError) and "non-finite" in results[1].reason and results[1].stage == "encode"
    assert all(np.isfinite(r.vector).all() for r in (results[0], results[2]))
    with pytest.raises(ValueError, match="item 1: text: the encoder gave non-finite values"):
        model.embed(["a red circle", "overflow"], "text")
    replica = object.__new__(ModalityEncoder.func_or_class)
    replica.models, replica.modality, replica.args = {"oneencoder": model}, "text", ServeArgs()
    answers = replica._embed(["overflow", "a red circle"])
    assert "non-finite" in answers[0]["error"] and np.isfinite(answers[1]["embedding"]).all()


def test_an_item_that_breaks_the_encoder_fails_alone(model_dir, monkeypatch):
    """A forward pass that raises is retried item by item: only the item that breaks it gets an error."""
    from pipeline.inference import load_model
    from pipeline.item_encoder import ItemError

    model = load_model(model_dir)
    frozen = model.items("text").frozen
    real = frozen.embed_counted

    def fragile(texts):
        if any("boom" in t for t in texts):
            raise RuntimeError("CUDA error: an illegal memory access")
        return real(texts)

    monkeypatch.setattr(frozen, "embed_counted", fragile)
    results = model.embed_items(["a red circle", "boom", "a blue square", ""], "text")
    assert [type(r).__name__ for r in results] == ["Encoded", "ItemError", "Encoded", "ItemError"]
    assert results[1].stage == "encode" and "RuntimeError: CUDA error" in results[1].reason and results[1].index == 1
    assert results[3].stage == "decode" and "empty text" in results[3].reason and results[3].index == 3
    np.testing.assert_array_equal(results[0].vector, model.embed(["a red circle"], "text")[0])
    assert isinstance(model.embed_items([b"bytes for text"], "text")[0], ItemError)


def test_errors_about_posted_bytes_name_no_server_path(model_dir):
    from pipeline.inference import load_model

    model = load_model(model_dir)
    for modality, data in (("audio", b""), ("audio", b"RIFF\x00\x00"), ("video", os.urandom(3000)),
                           ("image", b"not an image")):
        with pytest.raises(ValueError) as err:
            model.embed([data], modality)
        assert "/tmp" not in str(err.value) and "oneencoder-" not in str(err.value), str(err.value)


def test_a_real_token_stored_as_zeros_fails_its_item_only(monkeypatch):
    """tokens: all stores a sequence padded with zero vectors, and the store's readers refuse a shard where a zero
    vector is not padding: an encoder giving an all-zero real token fails that item at encode time (an error row),
    not every later read of its shard."""
    from pipeline.config import EncoderConfig, LimitsConfig
    from pipeline.embed.config import EmbedConfig
    from pipeline.encoders.frozen import read_input_spec
    from pipeline.encoders.presets import resolve_encoder
    from pipeline.item_encoder import Encoded, ItemEncoder, ItemError
    from pipeline.media.decode import DecodeSettings
    from pipeline.modality import Modality

    ref = resolve_encoder(EmbedConfig(preset="tiny"), Modality("text"))
    enc = EncoderConfig(tokens="all", max_tokens=32, torch_threads=1)
    settings = DecodeSettings(Modality("text"), read_input_spec(ref, enc), LimitsConfig(), {}, "")
    items = ItemEncoder(ref, enc, settings, dtype=np.float16)
    real = items.frozen.embed_counted

    def zeroing(texts):
        features, tokens = real(texts)
        features[[i for i, t in enumerate(texts) if "zero" in t], 1] = 0  # its second token, a real one
        return features, tokens

    monkeypatch.setattr(items.frozen, "embed_counted", zeroing)
    first, second, third = items.embed(["a red circle", "a zero square", "a blue square"])
    assert isinstance(second, ItemError) and second.stage == "encode"
    assert second.reason == ("text: the encoder gave an all-zero token vector for this input in float16 (use dtype: "
                             "float32) (a zero vector is padding in the store)")
    assert isinstance(first, Encoded) and isinstance(third, Encoded) and first.vector.shape == (32 * 32,)
