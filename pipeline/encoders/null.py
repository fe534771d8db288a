"""The null encoder: a stand-in for a modality's frozen encoder that computes nothing, for benchmarks and tests.

It returns the same vector for every item, so an embed job run with it measures the pipeline alone: reading,
decoding, moving decoded arrays between processes, writing and committing. The inputs are still decoded as the
real encoder's input spec says (the same sizes), so the decode work is the real one.

Only code selects it (``null_encoders`` as ``run_embed``'s ``resolve``): no config field, flag or environment
variable does, so no user run writes null vectors by mistake, and the store's encoder name (``null:<name>``)
keeps a later real run from resuming into a store it wrote.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipeline.config import EncoderConfig
from pipeline.embed.config import EmbedConfig
from pipeline.encoders.presets import EncoderRef, resolve_encoder
from pipeline.modality import Modality

NULL_DIM = 8  # features per token: small, so writing them costs little beside what is measured


def null_encoders(cfg: EmbedConfig, modality: Modality) -> EncoderRef:
    """``resolve_encoder``'s encoder for ``modality``, marked null: its input spec is the real one's, its
    vectors are not computed."""
    ref = resolve_encoder(cfg, modality)
    return dataclasses.replace(ref, name=f"null:{ref.name}", null=True)


class NullEncoder:
    """``FrozenEncoder``'s interface (``embed``, ``embed_counted``, ``dim``) without a model: (B, K, NULL_DIM)
    ones, one input token per item."""

    def __init__(self, ref: EncoderRef, enc: EncoderConfig):
        self.modality, self.enc, self.dim = ref.modality, enc, NULL_DIM

    def embed(self, inputs: list[Any]) -> np.ndarray:
        return self.embed_counted(inputs)[0]

    def embed_counted(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        n = len(inputs)
        k = self.enc.stored_tokens
        return np.ones((n, k, NULL_DIM), np.float32), np.full(n, k if self.enc.sequence else 1, np.int64)
