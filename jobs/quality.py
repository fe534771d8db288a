"""The quality experiments' generated concept corpus: items share a (colour, shape) concept across modalities.

Drawn, captioned, sounded, animated and rendered as depth; features come from the tiny frozen encoders
(pooled, K = 1 by default) and are written as a regular feature store, so the real training job runs on
them. The quality bar's setting (tests/train/test_train.py, jobs/quality_sweep.py) is here too.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from jobs.corpus import CAPTIONS, COLOURS, SHAPES, clip, concept, depth_map, draw_shape, paint_shape, tone
from pipeline.config import EncoderConfig
from pipeline.embed.config import EmbedConfig
from pipeline.encoders.frozen import FrozenEncoder, read_input_spec
from pipeline.encoders.presets import resolve_encoder
from pipeline.modality import Modality
from pipeline.store.features import ERROR_SCHEMA, FeatureStore, features_table

MODALITIES = ("image", "text", "audio", "video")  # the concept store's modalities by default (depth: on request)
# the quality bar's setting (tests/train/test_train.py and jobs/quality_sweep.py): on the hard and the other style
STAGES = "image:text,audio:text,video:text"  # the curriculum, trained with the defaults (no budget flags)
BASELINE_EPOCHS = 100                         # epochs of the jointly trained pairwise baseline
VAL_FRACTION = 0.2                            # share of ids held out for validation


# A second corpus style, unseen by anything tuned on the suite's: other caption templates, another voice
# (pitch range and timbre), shapes of other sizes moving top to bottom, more noise.
OTHER_CAPTIONS = ("one {c} {s}", "this shows a {c} {s}", "{s}, {c}", "a {c}-coloured {s} on a pale ground",
                  "look: a {s} in {c}", "there is a {c} {s} here")
# A harder style for the quality bar: the suite's captions and voice, but pictures and clips in which the concept is
# harder to see (the colour mixed with another of the palette, a grey shape beside it, pixel noise), so that image
# and video retrieval stay below 1.0 and a worse model shows.
STYLES = ("suite", "other", "hard")


def concept_inputs(i: int, rng: np.random.Generator, style: str = "suite") -> dict[Modality, object]:
    """Raw inputs of sample ``i`` (what the decoders would produce), varied per sample, in one of ``STYLES``.

    The depth map (of the image's scene) draws nothing from ``rng``, so the other inputs are as they were
    before depth existed."""
    colour, shape = concept(i)
    if style == "suite":
        wave = tone(colour, shape, detune=float(rng.normal(1.0, 0.02)))
        offset = float(rng.uniform())
        return {Modality("image"): np.asarray(draw_shape(colour, shape, size=64, offset=offset, rng=rng)),
                Modality("text"): CAPTIONS[int(rng.integers(len(CAPTIONS)))].format(c=colour, s=shape),
                Modality("audio"): (wave + rng.normal(0, 0.02, wave.shape)).astype(np.float32),
                Modality("video"): clip(colour, shape, frames=4, size=32, rng=rng),
                Modality("depth"): _depth_input(depth_map(colour, shape, size=64, offset=offset))}
    if style == "hard":
        wave = tone(colour, shape, detune=float(rng.normal(1.0, 0.02)))
        offset = float(rng.uniform())
        look = _blurred_look(colour, rng)
        return {Modality("image"): _hard_frames(colour, shape, 64, [offset], look, rng)[0],
                Modality("text"): CAPTIONS[int(rng.integers(len(CAPTIONS)))].format(c=colour, s=shape),
                Modality("audio"): (wave + rng.normal(0, 0.02, wave.shape)).astype(np.float32),
                Modality("video"): _hard_frames(colour, shape, 32, [f / 3 for f in range(4)], look, rng),
                Modality("depth"): _depth_input(depth_map(colour, shape, size=64, offset=offset))}
    if style != "other":
        raise ValueError(f"style {style!r}: expected one of {', '.join(STYLES)}")
    wave = tone(colour, shape, detune=float(rng.normal(1.0, 0.03)), base=330.0, harmonics=(1.0, 0.5, 0.25))
    scale = float(rng.uniform(0.2, 0.35))
    offset = float(rng.uniform())
    return {Modality("image"): np.asarray(draw_shape(colour, shape, size=64, offset=offset, rng=rng,
                                                  scale=scale, vertical=True)),
            Modality("text"): OTHER_CAPTIONS[int(rng.integers(len(OTHER_CAPTIONS)))].format(c=colour, s=shape),
            Modality("audio"): (wave + rng.normal(0, 0.03, wave.shape)).astype(np.float32),
            Modality("video"): clip(colour, shape, frames=4, size=32, rng=rng, scale=scale, vertical=True),
            Modality("depth"): _depth_input(depth_map(colour, shape, size=64, offset=offset, scale=scale, vertical=True))}


def _blurred_look(colour: str, rng: np.random.Generator) -> dict:
    """How one sample of the hard style hides its concept: its colour mixed with another of the palette (up to
    45 %), a grey distractor shape elsewhere, and a shape radius of 0.2 - 0.3 of the picture."""
    others = [c for c in COLOURS if c != colour]
    mix, towards = float(rng.uniform(0, 0.45)), np.array(COLOURS[others[int(rng.integers(len(others)))]])
    fill = tuple(int(v) for v in (1 - mix) * np.array(COLOURS[colour]) + mix * towards)
    grey = int(rng.integers(90, 170))
    return {"fill": fill, "scale": float(rng.uniform(0.2, 0.3)), "distractor": SHAPES[int(rng.integers(len(SHAPES)))],
            "grey": (grey, grey, grey), "at": float(rng.uniform(0.15, 0.85))}


def _hard_frames(colour: str, shape: str, size: int, offsets: list[float], look: dict,
                 rng: np.random.Generator) -> np.ndarray:
    """uint8 (len(offsets), size, size, 3): the shape at each offset (left to right), the distractor fixed in the
    lower part of the picture, Gaussian pixel noise (sigma 20)."""
    from PIL import ImageDraw

    frames = []
    for offset in offsets:
        img = draw_shape(colour, shape, size=size, offset=offset, rng=rng, scale=look["scale"], fill=look["fill"])
        paint_shape(ImageDraw.Draw(img), look["distractor"], size * look["at"], size * 0.85, size * 0.12, fill=look["grey"])
        noisy = np.asarray(img).astype(np.float32) + rng.normal(0, 20, (size, size, 3))
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return np.stack(frames)


def _depth_input(millimetres: np.ndarray) -> np.ndarray:
    """What the depth decoder makes of a map (depths divided by the largest): float32 (H, W) in [0, 1]."""
    return (millimetres / millimetres.max()).astype(np.float32)


def write_concept_store(root: str, n: int = 480, seed: int = 0, cache_dir: str | None = None,
                        threads: int = 2, style: str = "suite", tokens: int = 1,
                        modalities: tuple[str, ...] = MODALITIES) -> dict[str, str]:
    """Encode ``n`` concept samples of ``style`` with the tiny encoders (``threads`` torch threads, ``tokens`` K
    vectors per item) into a feature store at ``root``, one modality of ``modalities`` after another; return
    id → concept."""
    from pipeline.embed.job import encoder_record

    rng = np.random.default_rng(seed)
    samples = [concept_inputs(i, rng, style) for i in range(n)]
    ids = [f"c{i:05d}" for i in range(n)]
    cfg = EmbedConfig(preset="tiny", cache_dir=cache_dir)
    store = FeatureStore(root, {})
    for modality in map(Modality, modalities):
        ref, enc = resolve_encoder(cfg, modality), EncoderConfig(torch_threads=threads, tokens=tokens)
        encoder = FrozenEncoder(ref, enc)
        arr = np.concatenate([encoder.embed([s[modality] for s in samples[i:i + 64]]) for i in range(0, n, 64)])
        k, dim = arr.shape[1:]
        flat = pa.FixedSizeListArray.from_arrays(pa.array(arr.astype(np.float16).ravel()), k * dim)
        table = features_table(ids, modality.value, [None] * n, ref.name, flat, k, dim)
        store.start_run(modality, {"items": n, "encoder": ref.name, "tokens": k, "dtype": "float16"},
                        encoder_record(ref, enc, read_input_spec(ref, enc)).to_json())
        store.commit_shard(modality, 0, table, ERROR_SCHEMA.empty_table(), dim)
    return {i: "{} {}".format(*concept(k)) for k, i in enumerate(ids)}
