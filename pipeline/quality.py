"""The quality bar: a generated concept corpus, a plain baseline, and concept-level retrieval.

Items share a (colour, shape) concept across modalities: drawn, captioned, sounded, animated.
Features come from the tiny frozen encoders (pooled, K = 1) and are written as a regular feature
store, so the real training job runs on them. The baseline is a plain 2-layer MLP pair per
modality pair trained with InfoNCE on the same training ids.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from pipeline.config import EmbedConfig, EncoderConfig
from pipeline.corpus import CAPTIONS, clip, concept, depth_map, draw_shape, tone
from pipeline.encoders.frozen import FrozenEncoder, read_input_spec
from pipeline.encoders.presets import resolve_encoder
from pipeline.features import ERROR_SCHEMA, FeatureStore, features_table
from pipeline.losses import info_nce
from pipeline.metrics import ranks
from pipeline.modality import Modality
from pipeline.pairs import is_validation

MODALITIES = ("image", "text", "audio", "video")  # the concept store's modalities by default (depth: on request)
# the quality bar's setting (tests/test_train.py and jobs/quality_sweep.py)
STAGES = "image:text,audio:text,video:text"  # the curriculum, trained with the defaults (no budget flags)
BASELINE_EPOCHS = 100                         # epochs of the jointly trained pairwise baseline
VAL_FRACTION = 0.2                            # share of ids held out for validation


# A second corpus style, unseen by anything tuned on the suite's: other caption templates, another voice
# (pitch range and timbre), shapes of other sizes moving top to bottom, more noise.
OTHER_CAPTIONS = ("one {c} {s}", "this shows a {c} {s}", "{s}, {c}", "a {c}-coloured {s} on a pale ground",
                  "look: a {s} in {c}", "there is a {c} {s} here")
STYLES = ("suite", "other")


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


def _depth_input(millimetres: np.ndarray) -> np.ndarray:
    """What the depth decoder makes of a map (depths divided by the largest): float32 (H, W) in [0, 1]."""
    return (millimetres / millimetres.max()).astype(np.float32)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the previous count.

    The quality bar pins every thread count it uses: float reductions split over another number of
    threads round differently, and 30 epochs of training turn that into other held-out hits.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def write_concept_store(root: str, n: int = 480, seed: int = 0, cache_dir: str | None = None,
                        threads: int = 2, style: str = "suite", tokens: int = 1,
                        modalities: tuple[str, ...] = MODALITIES) -> dict[str, str]:
    """Encode ``n`` concept samples of ``style`` with the tiny encoders (``threads`` torch threads, ``tokens`` K
    vectors per item) into a feature store at ``root``, one modality of ``modalities`` after another; return
    id → concept."""
    from pipeline.embed import encoder_record

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
                        encoder_record(ref, enc, read_input_spec(ref, enc)))
        store.commit_shard(modality, 0, table, ERROR_SCHEMA.empty_table(), dim)
    return {i: "{} {}".format(*concept(k)) for k, i in enumerate(ids)}


def concept_hits(queries: np.ndarray, targets: np.ndarray, labels: list[str]) -> np.ndarray:
    """Per query: whether its nearest target has the query's concept (bool array)."""
    return ranks(queries, targets, labels_q=labels, labels_t=labels) == 0


def concept_recall_at_1(queries: np.ndarray, targets: np.ndarray, labels: list[str]) -> float:
    """Share of queries whose nearest target has the query's concept."""
    return float(concept_hits(queries, targets, labels).mean())


def worse_p_value(hits: np.ndarray, reference: np.ndarray) -> float:
    """One-sided exact sign test (McNemar) on paired per-item hits: the chance of seeing at least this
    many items that only ``reference`` gets right, if both models were equally good. Small = worse."""
    from math import comb

    only_ref, only_ours = int((reference & ~hits).sum()), int((hits & ~reference).sum())
    n = only_ref + only_ours
    return sum(comb(n, k) for k in range(only_ref, n + 1)) / 2 ** n if n else 1.0


def fit_baseline(train_a: np.ndarray, train_b: np.ndarray, epochs: int, seed: int = 0):
    """The jointly trained pairwise baseline: a 2-layer MLP per side, InfoNCE at a fixed temperature of 0.07,
    Adam 1e-3, batches of 64, ``epochs`` epochs (on the caller's torch threads). Returns a function
    (features, side 0 or 1) → unit vectors (N, 256)."""
    torch.manual_seed(seed)
    mlp = lambda d: nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, 256))  # noqa: E731
    fa, fb = mlp(train_a[0].size), mlp(train_b[0].size)
    opt = torch.optim.Adam([*fa.parameters(), *fb.parameters()], lr=1e-3)
    xa, xb = torch.from_numpy(train_a.reshape(len(train_a), -1)), torch.from_numpy(train_b.reshape(len(train_b), -1))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(xa), generator=gen)
        for start in range(0, len(order) - 1, 64):
            idx = order[start:start + 64]
            za = nn.functional.normalize(fa(xa[idx]), dim=-1)
            zb = nn.functional.normalize(fb(xb[idx]), dim=-1)
            loss = info_nce(za, zb, torch.tensor(0.07))
            opt.zero_grad()
            loss.backward()
            opt.step()

    def project(features: np.ndarray, side: int) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.asarray(features, np.float32).reshape(len(features), -1))
            return nn.functional.normalize((fa, fb)[side](x), dim=-1).numpy()

    return project


def _train_baseline(train_a, train_b, val_a, val_b, val_labels, epochs, seed) -> np.ndarray:
    project = fit_baseline(train_a, train_b, epochs, seed)
    return concept_hits(project(val_a, 0), project(val_b, 1), val_labels)


def compare(store: str, model_dir: str, labels: dict[str, str] | None, val_fraction: float, epochs: int, seed: int = 0,
            threads: int = 1, pairs: tuple[tuple[str, str], ...] = (("image", "text"), ("audio", "text"), ("video", "text")),
            storage: dict | None = None) -> dict:
    """Concept R@1 (new → anchor) on held-out ids: the trained artifact vs the baseline, per pair.

    With ``labels`` None every id is its own label (instance R@1: the query's own partner must come first).

    The baseline trains ``epochs`` epochs, as many as each curriculum stage did, on ``threads`` torch
    threads (the training job's workers use ``cpus_per_worker``, 1 by default). ``p_worse`` is the
    one-sided sign-test p-value on the items only one of the two gets right (small = progressive worse).
    """
    from pipeline.inference import load_model
    from pipeline.pairs import load_features

    model = load_model(model_dir)
    feats = {m: load_features(store, m, storage or {}) for m in {x for p in pairs for x in p}}
    out = {}
    with torch_threads(threads):
        for a, b in pairs:
            out[f"{a}->{b}"] = _compare_pair(model, feats, labels, a, b, val_fraction, epochs, seed)
    return out


def _compare_pair(model, feats: dict, labels: dict[str, str], a: str, b: str, val_fraction: float, epochs: int,
                  seed: int) -> dict:
    from pipeline.pairs import join

    ids, arrays = join(feats, [a, b])
    val = np.array([is_validation(i, val_fraction, seed) for i in ids])
    if not val.any() or val.all():
        raise ValueError(f"{a}-{b}: {int(val.sum())} of {len(ids)} pairs are held out: expected some of each")
    val_labels = [labels[i] if labels else i for i, v in zip(ids, val) if v]
    progressive = concept_hits(model.project(arrays[a][val], a), model.project(arrays[b][val], b), val_labels)
    baseline = _train_baseline(arrays[a][~val], arrays[b][~val], arrays[a][val], arrays[b][val], val_labels,
                               epochs, seed)  # on compare()'s pinned threads
    return {"progressive": float(progressive.mean()), "baseline": float(baseline.mean()),
            "chance": 1 / len(set(labels.values()) if labels else val_labels), "val_items": int(val.sum()),
            "only_progressive": int((progressive & ~baseline).sum()),
            "only_baseline": int((baseline & ~progressive).sum()),
            "p_worse": worse_p_value(progressive, baseline)}
