"""Training data from the feature store: modalities joined by id, split by id hash."""
from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from pipeline.store.features import embeddings, read_features

log = logging.getLogger(__name__)


def load_features(root: str, modality: str, storage: dict[str, Any]) -> dict[str, np.ndarray]:
    """id → (K, D) float32 features of ``modality`` under ``root``. Raises ValueError when it has none."""
    from pipeline.store.features import FeatureStore

    table = read_features(root, modality, storage)  # one pass over the commit markers
    if table.num_rows == 0:
        store = FeatureStore(root, storage)
        found = ", ".join(m for m in store.modalities() if store.has_features(m)) or "none"
        raise ValueError(f"feature store {root} has no features for {modality!r} (it has: {found})")
    arr = embeddings(table).astype(np.float32)
    return dict(zip(table.column("id").to_pylist(), arr))


def join(features: dict[str, dict[str, np.ndarray]], names: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Ids present in every one of ``names`` (sorted) and their stacked arrays (N, K, D) per modality.

    Rows missing a modality are left out of the pairs (and counted in the log), never crash the join.
    """
    sets = [set(features[n]) for n in names]
    ids = sorted(set.intersection(*sets))
    for name, s in zip(names, sets):
        if len(s) > len(ids):
            log.info("%d %s rows have no %s partner and are left out", len(s) - len(ids), name,
                     "/".join(n for n in names if n != name))
    if not ids:
        raise ValueError(f"no id has features for all of {', '.join(names)}: nothing to train on")
    return ids, {n: np.stack([features[n][i] for i in ids]) for n in names}


def id_fraction(item_id: str, seed: int = 0) -> float:
    """The id's deterministic place in [0, 1) (a hash): the same in every modality, whatever the row order."""
    digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_validation(item_id: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic split: the same id is always on the same side, whatever the row order."""
    return id_fraction(item_id, seed) < fraction


def split(ids: list[str], arrays: dict[str, np.ndarray], fraction: float, seed: int):
    """(train_ids, train_arrays), (val_ids, val_arrays) by ``is_validation``."""
    mask = np.array([is_validation(i, fraction, seed) for i in ids])
    if mask.all() or not mask.any():
        raise ValueError(f"val_fraction={fraction} leaves an empty train or validation set for {len(ids)} pairs")
    pick = lambda m: ([i for i, keep in zip(ids, m) if keep], {n: a[m] for n, a in arrays.items()})  # noqa: E731
    return pick(~mask), pick(mask)
