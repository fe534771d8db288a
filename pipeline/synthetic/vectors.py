"""Aligned vectors built so that an effect is known: what the calibration tests and benchmark measure against."""
from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def gapped(n: int = 800, seed: int = 0, noise: float = 2.5, dim: int = 64) -> dict[str, tuple[list[str], np.ndarray]]:
    """text, image and audio vectors of ``n`` paired items: text finds its image and its audio alike (the same
    noise), but every text-image cosine sits higher (a shared offset direction): a modality gap of the kind trained
    models show, so a list merged by raw cosine holds only images."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, dim))
    offset = np.zeros(dim)
    offset[0] = 8.0
    ids = [f"i{k:05d}" for k in range(n)]
    return {"text": (ids, unit(base + offset)),
            "image": (ids, unit(base + noise * rng.normal(size=(n, dim)) + offset)),
            "audio": (ids, unit(base + noise * rng.normal(size=(n, dim))))}
