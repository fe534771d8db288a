"""The modality registry (one module per modality), the depth modality's decoder and encoder, and frozen
encoders taken from one tower of a dual-tower checkpoint (CLIP, SigLIP, CLAP)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline import modalities
from pipeline.config import ConfigError, EncoderConfig, LimitsConfig
from pipeline.embed.config import EmbedConfig, load_embed_config
from pipeline.encoders.frozen import FrozenEncoder, read_input_spec
from pipeline.encoders.presets import EncoderRef, resolve_encoder
from pipeline.media.decode import DecodeSettings, decode_bytes, decode_item
from pipeline.media.errors import DecodeError
from pipeline.modalities import InputSpec
from pipeline.modality import Modality
from pipeline.modalities.depth import depth_map, write_depth
from pipeline.synthetic.draw import draw_shape, tone
from serving.config import ServeLimits
from serving.inputs import APIError, resolve


# --- the registry ------------------------------------------------------------------------------------

def test_every_registered_modality_is_complete():
    assert modalities.names() == ["image", "text", "audio", "video", "depth"]
    for name, spec in modalities.REGISTRY.items():
        assert spec.name == name and Modality(name).spec is spec
        assert set(spec.builds) == {"tiny", "paper"} and spec.paper_model
        assert spec.reads == ("inline" if spec.inline else spec.reads) and spec.reads in ("inline", "bytes", "file")
        assert spec.mime_types and spec.extensions and all(e.startswith(".") for e in spec.extensions)


def test_each_modality_s_limits_are_fields_of_the_job_s_and_the_server_s_limits():
    """Declared once in the modality's module, with a job default and a (tighter) serving default."""
    job, served = LimitsConfig(), ServeLimits()
    assert isinstance(served, LimitsConfig)  # one class per concept: the server's limits are the job's, re-defaulted
    for spec in modalities.REGISTRY.values():
        for name, limit in spec.limits.items():
            assert getattr(job, name) == limit.job and getattr(served, name) == limit.serve, (spec.name, name)
            assert LimitsConfig.model_fields[name].description == limit.description
    assert Modality("depth").spec.limits["max_image_pixels"] is Modality("image").spec.limits["max_image_pixels"]
    with pytest.raises(ValueError, match="max_audio_seconds"):
        LimitsConfig(max_audio_seconds=0)


def test_an_unknown_modality_is_a_clear_error_everywhere(tmp_path):
    with pytest.raises(ValueError, match="unknown modality 'smell': expected one of image, text, audio, video, depth"):
        Modality("smell")
    with pytest.raises(ConfigError, match="unknown modality 'smell'"):
        load_embed_config(None, modalities="image,smell")
    with pytest.raises(ConfigError, match="encoders.smell.*unknown modality 'smell'"):
        load_embed_config(None, encoders={"smell": {"tokens": 2}})
    from pipeline.train.config import load_train_config

    with pytest.raises(ConfigError, match="stages.1.new = 'smell'.*unknown modality"):
        load_train_config(None, stages="image:text,smell:text")
    with pytest.raises(APIError, match="modality 'smell' is not served: expected one of text"):
        resolve(0, "a", "smell", ["text"], ServeLimits())


def test_mime_types_route_to_the_registered_modality():
    assert modalities.for_mime("image/png").name == "image"      # a PNG is an image unless the request says depth
    assert modalities.for_mime("audio/x-wav").name == "audio" and modalities.for_mime("text/plain").name == "text"
    assert modalities.for_mime("application/x-npy") is None      # depth only when named
    assert Modality("depth").spec.accepts_mime("image/png") and not Modality("depth").spec.accepts_mime("image/jpeg")
    limits = ServeLimits()
    png = "data:image/png;base64,iVBORw0KGgo="
    assert resolve(0, png, None, ["image", "depth"], limits).modality == "image"
    assert resolve(0, png, "depth", ["image", "depth"], limits).modality == "depth"
    with pytest.raises(APIError, match="request's modality 'depth' takes image/png, image/tiff, application/x-npy"):
        resolve(0, "data:image/jpeg;base64,/9j/", "depth", ["depth"], limits)
    with pytest.raises(APIError, match="or name the modality: depth"):
        resolve(0, "data:application/x-npy;base64,k05VTVBZ", None, ["depth"], limits)


# --- depth: decoding ---------------------------------------------------------------------------------

def _settings(**limits) -> DecodeSettings:
    return DecodeSettings(Modality("depth"), InputSpec(image_hw=(32, 32)), LimitsConfig(**limits), {}, "")


def _encoded(fmt: str, millimetres: np.ndarray, tmp_path) -> bytes:
    path = tmp_path / f"map.{fmt}"
    write_depth(str(path), millimetres)
    return path.read_bytes()


def test_depth_maps_in_every_format_decode_to_the_same_normalised_map(tmp_path):
    mm = depth_map("green", "triangle", size=40)
    expected = (mm / mm.max()).astype(np.float32)
    for fmt in ("png", "npy", "tiff"):
        data = _encoded(fmt, mm, tmp_path)
        got = decode_bytes(data, _settings())
        assert got.dtype == np.float32 and got.shape == (40, 40), fmt
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=fmt)
        np.testing.assert_allclose(decode_item(str(tmp_path / f"map.{fmt}"), _settings()), expected, rtol=1e-6)
    assert Image.open(io.BytesIO(_encoded("png", mm, tmp_path))).mode == "I;16"  # a real 16-bit PNG
    fortran = io.BytesIO()
    np.save(fortran, np.asfortranarray(mm.astype(np.float32)))
    np.testing.assert_allclose(decode_bytes(fortran.getvalue(), _settings()), expected, rtol=1e-6)
    big = np.kron(mm, np.ones((4, 4), np.uint16))  # 160 x 160: shrunk to at most twice the input (64)
    assert decode_bytes(_encoded("png", big, tmp_path), _settings()).shape == (64, 64)


def _npy(array=None, header: bytes | None = None) -> bytes:
    if header is None:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=True)
        return buf.getvalue()
    pad = 64 - (10 + len(header) + 1) % 64
    return b"\x93NUMPY\x01\x00" + (len(header) + pad + 1).to_bytes(2, "little") + header + b" " * pad + b"\n"


@pytest.mark.parametrize("what, data, message", [
    ("colour PNG", None, "depth map has RGB pixels: expected one channel"),
    ("JPEG", None, "not a depth map format we accept"),
    ("pickled objects", _npy(np.array([{"x": 1}], dtype=object)), "dtype object: expected integer or float depths"),
    ("structured dtype", _npy(np.zeros(4, dtype=[("a", "<f4"), ("b", "<i4")])), "expected integer or float depths"),
    ("3 channels", _npy(np.ones((8, 8, 3), np.float32)), r"shape \(8, 8, 3\): expected \(height, width\)"),
    ("huge claimed shape", _npy(header=b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }"),
     "100000x100000 = 10000000000 pixels, over limits.max_image_pixels"),
    ("truncated data", _npy(np.ones((64, 64), np.float32))[:-100], "truncated .npy depth map"),
    ("negative shape", _npy(header=b"{'descr': '<f4', 'fortran_order': False, 'shape': (-4, 8), }"),
     r"shape \(-4, 8\): expected \(height, width\)"),
    ("corrupt header", b"\x93NUMPY\x01\x00\x10\x00{'descr': <<<<}", "corrupt .npy depth map"),
    ("no valid depth", _npy(np.zeros((8, 8), np.uint16)), "no valid pixels"),
    ("all NaN", _npy(np.full((8, 8), np.nan, np.float32)), "no valid pixels"),
])
def test_hostile_depth_maps_are_refused_by_name(what, data, message):
    if what == "colour PNG":
        buf = io.BytesIO()
        draw_shape("red", "circle", size=16).save(buf, "PNG")
        data = buf.getvalue()
    elif what == "JPEG":
        buf = io.BytesIO()
        Image.new("L", (16, 16), 100).save(buf, "JPEG")
        data = buf.getvalue()
    with pytest.raises(DecodeError, match=message):
        decode_bytes(data, _settings())


def test_depth_pixel_limit_applies_to_images_too(tmp_path):
    data = _encoded("png", depth_map("red", "square", size=100), tmp_path)
    with pytest.raises(DecodeError, match="100x100 = 10000 pixels, over limits.max_image_pixels=5000"):
        decode_bytes(data, _settings(max_image_pixels=5000))


# --- depth: the tiny encoder -------------------------------------------------------------------------

def test_tiny_depth_encoder_embeds_maps_through_its_own_processor():
    cfg = EmbedConfig(preset="tiny")
    ref = resolve_encoder(cfg, Modality("depth"))
    assert read_input_spec(ref, EncoderConfig()) == InputSpec(image_hw=(32, 32))
    encoder = FrozenEncoder(ref, EncoderConfig(torch_threads=1))
    assert encoder.model.config.num_channels == 1 and encoder.dim == 32
    maps = [(m / m.max()).astype(np.float32) for m in (depth_map("red", "circle", 48), depth_map("blue", "cross", 48))]
    out = encoder.embed(maps)
    assert out.shape == (2, 1, 32) and np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])
    np.testing.assert_allclose(encoder.embed(maps[:1])[0], out[0], atol=1e-5)  # batching changes nothing


# --- one tower of a dual-tower checkpoint -------------------------------------------------------------

@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """Tiny random CLIP, SigLIP and CLAP checkpoints saved with save_pretrained (no download)."""
    import torch
    from transformers import (ClapConfig, ClapFeatureExtractor, ClapModel, CLIPConfig, CLIPImageProcessorPil,
                              CLIPModel, CLIPTokenizer, SiglipConfig, SiglipImageProcessorPil, SiglipModel)

    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    clip = root / "clip"
    clip.mkdir()
    words = ["a", "red", "blue", "circle", "square"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in sorted(set("".join(words))) + [w for w in words]:
        vocab.setdefault(token + "</w>", len(vocab))
        vocab.setdefault(token, len(vocab))
    (clip / "vocab.json").write_text(json.dumps(vocab))
    (clip / "merges.txt").write_text("#version: 0.2\n")
    # the text tower pools at the end-of-text token: its id must be the vocabulary's
    CLIPModel(CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=32, bos_token_id=0,
                                          eos_token_id=1, pad_token_id=1, **small),
                         vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)).save_pretrained(clip)
    CLIPTokenizer(str(clip / "vocab.json"), str(clip / "merges.txt")).save_pretrained(clip)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip)
    siglip = root / "siglip"
    SiglipModel(SiglipConfig(text_config=dict(vocab_size=64, max_position_embeddings=16, **small),
                             vision_config=dict(image_size=32, patch_size=8, **small))).save_pretrained(siglip)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(siglip)
    clap = root / "clap"
    ClapModel(ClapConfig(text_config=dict(vocab_size=64, max_position_embeddings=40, **small),
                         audio_config=dict(hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2], window_size=4,
                                           patch_embeds_hidden_size=16, spec_size=64, num_mel_bins=16,
                                           projection_hidden_size=16, enable_fusion=False),
                         projection_dim=16)).save_pretrained(clap)
    ClapFeatureExtractor(feature_size=16, sampling_rate=16000, max_length_s=2, truncation="rand_trunc").save_pretrained(clap)
    return {"clip": str(clip), "siglip": str(siglip), "clap": str(clap)}


@pytest.mark.parametrize("checkpoint, modality, dim", [
    ("clip", "image", 16), ("clip", "text", 16), ("siglip", "image", 32), ("clap", "audio", 16), ("clip", "depth", 16)])
def test_a_tower_of_a_dual_tower_checkpoint_is_a_frozen_encoder(towers, checkpoint, modality, dim):
    """Chosen in config (encoders.<modality>.model), the modality's tower is loaded with its projection, and the
    projected embedding is the feature (AutoModel would give the two-tower model, whose forward wants both)."""
    cfg = EmbedConfig(encoders={modality: {"model": towers[checkpoint]}})
    ref = resolve_encoder(cfg, Modality(modality))
    encoder = FrozenEncoder(ref, EncoderConfig(torch_threads=1))
    assert encoder.dim == dim and encoder.tower_output
    inputs = {"image": [np.asarray(draw_shape("red", "circle", 48)), np.asarray(draw_shape("blue", "square", 48))],
              "text": ["a red circle", "a blue square"],
              "audio": [tone("red", "circle", seconds=0.5), tone("blue", "square", seconds=1.2)],
              "depth": [(m / m.max()).astype(np.float32) for m in (depth_map("red", "circle", 48),
                                                                   depth_map("blue", "cross", 48))]}[modality]
    out = encoder.embed(inputs)
    assert out.shape == (2, 1, dim) and np.isfinite(out).all() and not np.allclose(out[0], out[1])
    tower = encoder.model.__class__.__name__
    assert tower.startswith({"clip": "CLIP", "siglip": "Siglip", "clap": "Clap"}[checkpoint]) and "Model" in tower
    if checkpoint == "clip" and modality in ("image", "text"):  # the pair's own projected embedding
        import torch
        from transformers import CLIPModel

        full = CLIPModel.from_pretrained(towers["clip"]).eval()
        with torch.no_grad():
            if modality == "text":
                want = full.get_text_features(**encoder.processor(inputs, padding=True, return_tensors="pt"))
            else:
                want = full.get_image_features(**encoder.processor(images=inputs, return_tensors="pt"))
        np.testing.assert_allclose(out[:, 0], getattr(want, "pooler_output", want).numpy(), atol=1e-5)


def test_a_checkpoint_without_the_modality_s_tower_is_refused_by_name(towers):
    ref = EncoderRef(Modality("audio"), towers["clip"], None, "clip")
    with pytest.raises(ValueError, match="is a clip checkpoint, which has vision, text towers: none for modality 'audio'"):
        FrozenEncoder(ref, EncoderConfig(torch_threads=1))
