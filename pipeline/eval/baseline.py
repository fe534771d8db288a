"""The plain baseline every progressive model is measured against, and concept-level retrieval.

The baseline is a 2-layer MLP pair per modality pair trained jointly with InfoNCE on the same cached
features and training ids; ``compare`` puts a model artifact beside it on the held-out ids with a
paired sign test (``oneencoder evaluate --baseline``, the quality bar, the quality experiments).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn

from pipeline.eval.metrics import ranks
from pipeline.store.pairs import is_validation
from pipeline.train.losses import info_nce


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
    from pipeline.store.pairs import load_features

    model = load_model(model_dir)
    feats = {m: load_features(store, m, storage or {}) for m in {x for p in pairs for x in p}}
    out = {}
    with torch_threads(threads):
        for a, b in pairs:
            out[f"{a}->{b}"] = _compare_pair(model, feats, labels, a, b, val_fraction, epochs, seed)
    return out


def _compare_pair(model, feats: dict, labels: dict[str, str], a: str, b: str, val_fraction: float, epochs: int,
                  seed: int) -> dict:
    from pipeline.store.pairs import join

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
