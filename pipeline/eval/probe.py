"""Linear probe: a logistic regression fitted on a model's aligned vectors of a training split, measured on the test
split (clip_benchmark's linear probe, with its regularisation chosen on a held-out part of the training split)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

WEIGHT_DECAYS = (1e-6, 1e-4, 1e-2, 1.0)  # L2 penalties tried; the best on the validation part is refitted on all
VALIDATION = 0.2                          # share of the training split that chooses the penalty


def fit(x: np.ndarray, y: np.ndarray, n_classes: int, weight_decay: float, steps: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (weights (d, C), bias (C,)) by full-batch L-BFGS on cross-entropy + L2."""
    import torch

    torch.manual_seed(0)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(xt @ w + b, yt) + weight_decay * (w * w).sum()
        value.backward()
        return value

    opt.step(loss)
    return w.detach().numpy(), b.detach().numpy()


def scores_of(x: np.ndarray, model: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return np.asarray(x, np.float32) @ model[0] + model[1]


def classification(scores: np.ndarray, truth: Sequence[int]) -> dict[str, float]:
    """Top-1, top-5 and mean per-class recall of (N, C) class scores against the true class indices."""
    truth = np.asarray(truth)
    order = np.argsort(-scores, axis=1)
    top1 = order[:, 0] == truth
    top5 = (order[:, :5] == truth[:, None]).any(axis=1)
    per_class = [float(top1[truth == c].mean()) for c in np.unique(truth)]
    return {"accuracy": float(top1.mean()), "top5": float(top5.mean()), "mean_per_class_recall": float(np.mean(per_class))}


def linear_probe(train: tuple[np.ndarray, list[str]], test: tuple[np.ndarray, list[str]], seed: int = 0) -> dict[str, Any]:
    """Fit on ``train`` (vectors, class names), choosing the L2 penalty on a seeded VALIDATION part of it, refit on all
    of it, and measure on the ``test`` items whose class the training split has."""
    (x, names), (xt, names_t) = train, test
    classes = sorted(set(names))
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[n] for n in names])
    keep = [k for k, n in enumerate(names_t) if n in index]
    order = np.random.default_rng(seed).permutation(len(y))
    cut = max(1, int(VALIDATION * len(y)))
    val, fit_part = order[:cut], order[cut:]
    chosen = max(WEIGHT_DECAYS, key=lambda wd: classification(
        scores_of(x[val], fit(x[fit_part], y[fit_part], len(classes), wd)), y[val])["accuracy"])
    model = fit(x, y, len(classes), chosen)
    result = classification(scores_of(xt[keep], model), [index[names_t[k]] for k in keep])
    return {"n_train": len(y), "n": len(keep), "classes": len(classes), "weight_decay": chosen, **result}
