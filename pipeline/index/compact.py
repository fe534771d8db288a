"""Compact vectors: a Matryoshka prefix (fewer dimensions), int8 and binary precision.

- ``prefix(v, w)``: the first ``w`` components, renormalised. Meaningful at the widths the model was trained
  for (``Artifact.widths``: the full one, and a stage's ``loss.matryoshka`` prefixes).
- ``int8(v)``: each vector scaled so that its largest component is ±127 and rounded; compare by cosine (the
  scale differs per vector). 4× smaller than float32.
- ``binary(v)``: the sign bits, packed 8 to a byte (most significant bit first: ``numpy.packbits``); compare by
  Hamming distance. 32× smaller.
"""
from __future__ import annotations

from typing import Any

import numpy as np

PRECISIONS = ("float", "int8", "binary")


def prefix(vectors: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` components of each row (or of one vector), renormalised to unit length."""
    cut = np.asarray(vectors, np.float32)[..., :width]
    norm = np.linalg.norm(cut, axis=-1, keepdims=True)
    return cut / np.where(norm > 0, norm, 1)


def int8(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to a largest component of ±127, rounded to int8."""
    v = np.asarray(vectors, np.float32)
    top = np.abs(v).max(axis=-1, keepdims=True)
    return np.rint(v * (127 / np.where(top > 0, top, 1))).astype(np.int8)


def binary(vectors: np.ndarray) -> np.ndarray:
    """The sign bits (component > 0) of each row, packed 8 to a uint8; the width must be a multiple of 8."""
    v = np.asarray(vectors)
    if v.shape[-1] % 8:
        raise ValueError(f"binary vectors need a width that is a multiple of 8, got {v.shape[-1]}")
    return np.packbits(v > 0, axis=-1)


def scores(queries: np.ndarray, targets: np.ndarray, precision: str) -> np.ndarray:
    """Similarity of every query to every target (unit float vectors in) at ``precision``: cosine of the float or
    int8 vectors; for binary, the number of equal bits minus the number of differing ones."""
    if precision == "float":
        return np.asarray(queries, np.float32) @ np.asarray(targets, np.float32).T
    if precision == "int8":
        q, t = int8(queries).astype(np.float32), int8(targets).astype(np.float32)
        return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
    if precision == "binary":
        q, t = (np.asarray(x) > 0 for x in (queries, targets))
        signs = lambda b: b.astype(np.float32) * 2 - 1  # noqa: E731
        return signs(q) @ signs(t).T
    raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


def recall_at_widths(za: np.ndarray, zb: np.ndarray, widths: list[int]) -> dict[str, Any]:
    """R@1 and R@10 of paired rows (both directions averaged) at each width and precision. A tie counts against
    the partner (binary scores tie often)."""
    out: dict[str, Any] = {}
    for w in widths:
        a, b = prefix(za, w), prefix(zb, w)
        out[str(w)] = {}
        for precision in PRECISIONS:
            sims = scores(a, b, precision)
            r = {}
            for s in (sims, sims.T):
                true = np.diag(s)[:, None]
                others = ~np.eye(len(s), dtype=bool)
                rank = ((s > true) | ((s == true) & others)).sum(1)
                for k in (1, 10):
                    r.setdefault(f"recall@{k}", []).append(float((rank < k).mean()))
            out[str(w)][precision] = {k: float(np.mean(v)) for k, v in r.items()}
    return out
