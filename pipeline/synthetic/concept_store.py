"""The quality experiments' concept store: generated samples encoded by the tiny frozen encoders.

Items share a (colour, shape) concept across modalities; features (pooled, K = 1 by default) are written as
a regular feature store, so the real training job runs on them. The quality bar's setting (the test suite's
quality tests and ``python -m benchmarks.quality_sweep``) is here too.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.artifact import EncoderRecord
from pipeline.config import EncoderConfig
from pipeline.embed.config import EmbedConfig
from pipeline.encoders.frozen import FrozenEncoder, read_input_spec
from pipeline.encoders.presets import resolve_encoder
from pipeline.modality import Modality
from pipeline.store.features import ERROR_SCHEMA, FeatureStore, features_table
from pipeline.synthetic.corpus import concept_inputs
from pipeline.synthetic.draw import concept

MODALITIES = ("image", "text", "audio", "video")  # the concept store's modalities by default (depth: on request)
# the quality bar's setting: trained with the defaults on the hard and the other style
STAGES = "image:text,audio:text,video:text"  # the curriculum, trained with the defaults (no budget flags)
BASELINE_EPOCHS = 100                         # epochs of the jointly trained pairwise baseline
VAL_FRACTION = 0.2                            # share of ids held out for validation


def write_concept_store(root: str, n: int = 480, seed: int = 0, cache_dir: str | None = None,
                        threads: int = 2, style: str = "suite", tokens: int | str = 1,
                        modalities: tuple[str, ...] = MODALITIES, max_tokens: int = 256) -> dict[str, str]:
    """Encode ``n`` concept samples of ``style`` with the tiny encoders (``threads`` torch threads, ``tokens`` K
    vectors per item, or ``all``: each item's sequence up to ``max_tokens``) into a feature store at ``root``, one
    modality of ``modalities`` after another; return id → concept."""

    rng = np.random.default_rng(seed)
    samples = [concept_inputs(i, rng, style) for i in range(n)]
    ids = [f"c{i:05d}" for i in range(n)]
    cfg = EmbedConfig(preset="tiny", cache_dir=cache_dir)
    store = FeatureStore(root, {})
    for modality in map(Modality, modalities):
        ref = resolve_encoder(cfg, modality)
        enc = EncoderConfig(torch_threads=threads, tokens=tokens, max_tokens=max_tokens)
        encoder = FrozenEncoder(ref, enc)
        arr = np.concatenate([encoder.embed([s[modality] for s in samples[i:i + 64]]) for i in range(0, n, 64)])
        k, dim = arr.shape[1:]
        flat = pa.FixedSizeListArray.from_arrays(pa.array(arr.astype(np.float16).ravel()), k * dim)
        table = features_table(ids, modality.value, [None] * n, ref.name, flat, k, dim, enc.sequence)
        run = {"items": n, "encoder": ref.name, "tokens": enc.tokens, "dtype": "float16"}
        store.start_run(modality, {**run, **({"max_tokens": max_tokens} if enc.sequence else {})},
                        EncoderRecord.of(ref, enc, read_input_spec(ref, enc)).to_json())
        store.commit_shard(modality, 0, table, ERROR_SCHEMA.empty_table(), dim)
    return {i: "{} {}".format(*concept(k)) for k, i in enumerate(ids)}
