"""Frozen encoders: offline builds, loading through from_pretrained, pooling that ignores padding."""
from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from pipeline.config import EncoderConfig
from pipeline.embed.config import EmbedConfig
from pipeline.encoders.frozen import FrozenEncoder, Serialized, padded_tokens, pool_tokens, read_input_spec
from pipeline.encoders.offline import ensure_built
from pipeline.encoders.presets import resolve_encoder
from pipeline.modalities import InputSpec
from pipeline.modality import Modality
from pipeline.synthetic.draw import clip, draw_shape, tone


@pytest.fixture(scope="module")
def cfg():
    return EmbedConfig(preset="tiny")


def digest(folder):
    with open(os.path.join(folder, "model.safetensors"), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def test_tiny_builds_are_deterministic(tmp_path):
    a = ensure_built("tiny", Modality("image"), str(tmp_path / "a"))
    b = ensure_built("tiny", Modality("image"), str(tmp_path / "b"))
    assert digest(a) == digest(b)
    assert sorted(os.listdir(a)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert not [n for n in os.listdir(tmp_path / "a" / "tiny-v1") if n.startswith(".")]  # no temp folders left


def test_tokenizer_round_trip_keeps_known_words(cfg):
    from transformers import AutoTokenizer

    ref = resolve_encoder(cfg, Modality("text"))
    tok = AutoTokenizer.from_pretrained(ref.materialize())
    ids = tok("a red circle")["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) == 5
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["a", "red", "circle"]


@pytest.mark.parametrize("modality,inputs", [
    (Modality("image"), [np.asarray(draw_shape("red", "circle")), np.zeros((20, 50, 3), np.uint8)]),
    (Modality("text"), ["a red circle", "a much longer blue square moving left to right"]),
    (Modality("audio"), [tone("red", "circle"), tone("blue", "cross", seconds=0.4)]),
    (Modality("video"), [clip("red", "circle", frames=4, size=32), clip("blue", "square", frames=4, size=32)]),
])
@pytest.mark.parametrize("k", [1, 3])
def test_every_modality_embeds_to_k_by_d(cfg, modality, inputs, k):
    enc = FrozenEncoder(resolve_encoder(cfg, modality), EncoderConfig(tokens=k, torch_threads=1))
    out = enc.embed(inputs)
    assert out.shape == (2, k, 32) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])
    assert not any(p.requires_grad for p in enc.model.parameters()) and not enc.model.training


@pytest.mark.parametrize("modality,short,long", [
    (Modality("text"), "a red circle", "a blue square moving slowly from the left to the right of the picture"),
    (Modality("audio"), tone("red", "circle", seconds=0.5), tone("green", "cross", seconds=1.5)),
])
def test_padding_never_changes_an_item_s_vector(cfg, modality, short, long):
    enc = FrozenEncoder(resolve_encoder(cfg, modality), EncoderConfig(tokens=2, torch_threads=1))
    alone = enc.embed([short])[0]
    padded = enc.embed([short, long])[0]
    np.testing.assert_allclose(alone, padded, atol=2e-3 if modality == "audio" else 1e-5)


@pytest.mark.parametrize("modality,short,long", [
    (Modality("text"), "a red circle", "a blue square moving slowly from the left to the right of the picture"),
    (Modality("audio"), tone("red", "circle", seconds=0.5), tone("green", "cross", seconds=1.5)),
])
def test_tokens_all_keeps_each_item_s_sequence_padded_with_zeros(cfg, modality, short, long):
    enc = FrozenEncoder(resolve_encoder(cfg, modality), EncoderConfig(tokens="all", max_tokens=400, torch_threads=1))
    both, lengths = enc.embed_counted([short, long])
    alone, (length,) = enc.embed_counted([short])
    assert both.shape == (2, 400, 32) and alone.shape == (1, 400, 32)
    assert length == lengths[0] < lengths[1] < 400
    nonzero = (both != 0).any(axis=2)
    for row, n in zip(nonzero, lengths):  # its own tokens, then zero vectors only
        assert row[:n].all() and not row[n:].any()
    # the short item's tokens do not depend on the longer item padding it in the batch
    np.testing.assert_allclose(alone[0], both[0], atol=2e-3 if modality == "audio" else 1e-5)


def test_tokens_all_keeps_the_first_max_tokens():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3) + 1
    out = padded_tokens(hidden, torch.tensor([5, 2]), 4)
    assert out.shape == (2, 4, 3)
    assert torch.equal(out[0], hidden[0, :4])  # cut at the cap
    assert torch.equal(out[1, :2], hidden[1, :2]) and not out[1, 2:].any()  # the batch's padding zeroed
    assert padded_tokens(hidden, torch.tensor([5, 2]), 7)[:, 5:].abs().sum() == 0  # shorter than the cap: zeros


@pytest.mark.parametrize("modality", [Modality("text"), Modality("image")])
def test_threads_sharing_one_encoder_get_what_each_batch_gives_alone(cfg, modality):
    """The embed job's actors run two batches at once over one model (concurrent_batches): with batches of
    different sizes and paddings in four threads, each result is the one that batch gives on its own."""
    words = "a red circle blue square moving left to right green cross".split()
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "cross"]
    if modality == "text":
        batches = [[" ".join(words[: 1 + (i + j) % len(words)]) for j in range(1 + i % 5)] for i in range(24)]
    else:
        batches = [[np.asarray(draw_shape(colours[(i + j) % 4], shapes[(i + j) % 3], size=24 + 8 * (j % 3)))
                    for j in range(1 + i % 4)] for i in range(24)]
    enc = FrozenEncoder(resolve_encoder(cfg, modality), EncoderConfig(torch_threads=1))
    alone = [enc.embed(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(enc.embed, batches))
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_shared_processor_runs_one_call_at_a_time():
    """A fast tokenizer changes its padding/truncation state in each call; Serialized lets one call in at a
    time and passes attributes through."""
    class Slow:
        sampling_rate = 16000

        def __init__(self):
            self.inside = self.most = 0
            self.count = threading.Lock()

        def __call__(self, x, scale=2):
            with self.count:
                self.inside += 1
                self.most = max(self.most, self.inside)
            time.sleep(0.02)
            with self.count:
                self.inside -= 1
            return x * scale

    slow = Slow()
    shared = Serialized(slow)
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda x: shared(x, scale=3), range(12)))
    assert out == [3 * x for x in range(12)]
    assert slow.most == 1
    assert shared.sampling_rate == 16000


def test_pool_tokens_matches_manual_means():
    hidden = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    lengths = torch.tensor([4, 6])
    one = pool_tokens(hidden, lengths, 1)
    assert torch.allclose(one[0, 0], hidden[0, :4].mean(0)) and torch.allclose(one[1, 0], hidden[1].mean(0))
    two = pool_tokens(hidden, lengths, 2)
    assert torch.allclose(two[0, 0], hidden[0, :2].mean(0)) and torch.allclose(two[0, 1], hidden[0, 2:4].mean(0))


def test_input_spec_is_read_from_the_processor_files(cfg):
    assert read_input_spec(resolve_encoder(cfg, Modality("image")), EncoderConfig()) == InputSpec(image_hw=(32, 32))
    video = read_input_spec(resolve_encoder(cfg, Modality("video")), EncoderConfig())
    assert video.num_frames == 4 and video.image_hw == (32, 32)
    assert read_input_spec(resolve_encoder(cfg, Modality("video")), EncoderConfig(num_frames=6)).num_frames == 6
    assert read_input_spec(resolve_encoder(cfg, Modality("audio")), EncoderConfig()).sample_rate == 16000


def test_explicit_local_model_path_and_unreachable_hub_id(cfg, tmp_path):
    folder = ensure_built("tiny", Modality("image"), str(tmp_path))
    local = resolve_encoder(EmbedConfig(encoders={"image": {"model": folder}}), Modality("image"))
    assert local.source == folder and local.name.startswith(folder + "@sha256:")
    assert FrozenEncoder(local, EncoderConfig()).embed([np.zeros((32, 32, 3), np.uint8)]).shape == (1, 1, 32)
    hub = resolve_encoder(EmbedConfig(preset="paper"), Modality("image"))
    assert hub.name == "google/vit-base-patch16-224@main"
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        read_input_spec(hub, EncoderConfig())


def test_group_norm_audio_models_run_clip_by_clip_so_padding_cannot_leak(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from pipeline.encoders.presets import EncoderRef

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=4, feat_extract_norm="group")
    Wav2Vec2Model(cfg).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path)
    enc = FrozenEncoder(EncoderRef(Modality("audio"), str(tmp_path), None, "group-norm"), EncoderConfig(torch_threads=1))
    short, long = tone("red", "circle", seconds=0.5), tone("blue", "cross", seconds=1.5)
    np.testing.assert_allclose(enc.embed([short])[0], enc.embed([short, long])[0], atol=1e-5)


def test_random_init_builds_the_paper_architecture_offline(session_dir):
    import json

    cfg = EmbedConfig(preset="paper", random_init=True, cache_dir=os.path.join(session_dir, "paper-cache"))
    ref = resolve_encoder(cfg, Modality("image"))
    assert ref.name == "google/vit-base-patch16-224@random-init-v1"
    with open(os.path.join(ref.source, "config.json")) as fh:
        config = json.load(fh)
    assert (config["hidden_size"], config["num_hidden_layers"], config["patch_size"], config["image_size"]) == (768, 12, 16, 224)
    assert read_input_spec(ref, EncoderConfig()).image_hw == (224, 224)


def test_tokens_all_says_once_when_max_tokens_cuts_an_item(cfg, caplog):
    enc = FrozenEncoder(resolve_encoder(cfg, Modality("text")), EncoderConfig(tokens="all", max_tokens=4, torch_threads=1))
    with caplog.at_level("WARNING", logger="pipeline.encoders.frozen"):
        out, lengths = enc.embed_counted(["a blue square moving slowly from the left", "a red circle"])
        enc.embed_counted(["a green triangle moving slowly to the right"])
    assert out.shape == (2, 4, 32) and lengths[0] > 4 and (out != 0).any(axis=2).all()
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"text: an item has {lengths[0]} tokens; only its first 4 are kept (encoders.text.max_tokens)"]
