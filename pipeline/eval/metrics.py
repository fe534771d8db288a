"""Retrieval metrics on unit vectors."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def ranks(queries: np.ndarray, targets: np.ndarray, labels_q: Sequence | None = None,
          labels_t: Sequence | None = None) -> np.ndarray:
    """0-based rank of the first correct target for each query (N_q,).

    Without labels, query i's correct target is target i. With labels, any target with the
    query's label is correct (concept-level retrieval).
    """
    sims = queries @ targets.T
    if labels_q is None:
        correct = np.eye(len(queries), len(targets), dtype=bool)
    else:
        correct = np.asarray(labels_q)[:, None] == np.asarray(labels_t)[None, :]
    best = np.where(correct, sims, -np.inf).max(axis=1)
    return (np.where(correct, -np.inf, sims) > best[:, None]).sum(axis=1)


def retrieval(queries: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (1, 5, 10), **labels) -> dict[str, float]:
    """recall@k for each k and the median rank (1-based)."""
    r = ranks(queries, targets, **labels)
    out = {f"recall@{k}": float((r < k).mean()) for k in ks}
    out["median_rank"] = float(np.median(r + 1))
    return out


def both_directions(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str, **kw) -> dict[str, float]:
    """Metrics a→b and b→a, keys prefixed '<a>-><b>/'."""
    out = {f"{name_a}->{name_b}/{k}": v for k, v in retrieval(a, b, **kw).items()}
    out.update({f"{name_b}->{name_a}/{k}": v for k, v in retrieval(b, a, **kw).items()})
    return out
