"""What calibration and the hubness correction do to search, measured on a store's paired items.

The store's ids are split in two by a hash: the calibration and the query banks are fitted on one half as the
index job fits them (``pipeline.index.calibration.fit``), and measured on the other half:

- per (query, target) pair, R@1 and R@10 with raw scores and with the hubness correction;
- per query modality with two or more target modalities, the merged ranking over all of them (what
  ``/v1/search`` returns for several ``target_modality``): the share of a query's true targets (its partner in
  each target modality) in the merged top 10, ranked by raw cosine, by calibrated match, and by calibrated
  match of hubness-corrected scores; and which modalities fill the top 10.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.index.calibration import TEMPERATURE, Calibration, corrected, fit, id_fractions

TOP = 10
SPLIT_SEED = 2  # the fit / test halves (another hash than the training split's and the banks')


def search_quality(projected: dict[str, tuple[list[str], np.ndarray]], temperature: float = TEMPERATURE
                   ) -> dict[str, Any]:
    """The report's ``search`` section; ``projected``: modality → (ids, unit vectors)."""
    halves: tuple[dict, dict] = ({}, {})
    for m, (ids, z) in projected.items():
        test = id_fractions(ids, SPLIT_SEED) >= 0.5
        for half, keep in zip(halves, (~test, test)):
            half[m] = ([i for i, k in zip(ids, keep) if k], np.asarray(z)[keep])
    cal = fit(halves[0], temperature)
    test = halves[1]
    out: dict[str, Any] = {"fit_items": {m: len(v[0]) for m, v in halves[0].items()},
                           "test_items": {m: len(v[0]) for m, v in test.items()}, "temperature": temperature,
                           "pairs": {}, "merged": {}}
    for pair in cal.pairs:
        q, t = pair.split("->")
        if q == t:
            continue
        ids, (zq, zt) = _shared(test, [q, t])
        if len(ids) < 2:
            continue
        sims = zq @ zt.T
        row = {"n": len(ids), "raw": _recall(sims)}
        if cal.has(q, t, hubness=True):
            row["hubness"] = _recall(corrected(sims, cal.banks[q], zt, temperature))
        out["pairs"][pair] = row
    for q in test:
        targets = [t for t in test if t != q and cal.has(q, t)]
        if len(targets) < 2:
            continue
        ids, vectors = _shared(test, [q, *targets])
        if len(ids) < 2:
            continue
        out["merged"][q] = {"targets": targets, "n": len(ids), **_merged(cal, q, targets, vectors)}
    return out


def _shared(sample: dict[str, tuple[list[str], np.ndarray]], modalities: list[str]
            ) -> tuple[list[str], list[np.ndarray]]:
    """The ids every one of ``modalities`` has (sorted), and each modality's vectors in that order."""
    common = sorted(set.intersection(*(set(sample[m][0]) for m in modalities)))
    rows = [{i: k for k, i in enumerate(sample[m][0])} for m in modalities]
    return common, [np.asarray(sample[m][1])[[r[i] for i in common]] for m, r in zip(modalities, rows)]


def _recall(sims: np.ndarray) -> dict[str, float]:
    """R@1 and R@10 of a square score matrix whose diagonal holds the partners."""
    rank = (sims > np.diag(sims)[:, None]).sum(1)
    return {"recall@1": float((rank < 1).mean()), "recall@10": float((rank < TOP).mean())}


def _merged(cal: Calibration, q: str, targets: list[str], vectors: list[np.ndarray]) -> dict[str, Any]:
    """Share of true targets in the merged top 10 and the modalities filling it, for three rankings."""
    zq, zts = vectors[0], vectors[1:]
    n = len(zq)
    raw = [zq @ zt.T for zt in zts]                                                      # per target: (n, n)
    hub = [corrected(s, cal.banks[q], zt, cal.temperature) for s, zt in zip(raw, zts)]
    rankings = {"raw": raw, "calibrated": [cal.match(q, t, s) for t, s in zip(targets, raw)]}
    if all(cal.has(q, t, hubness=True) for t in targets):
        rankings["calibrated_hubness"] = [cal.match(q, t, s, hubness=True) for t, s in zip(targets, hub)]
    out: dict[str, Any] = {}
    cosines = np.concatenate(raw, axis=1)
    for name, scores in rankings.items():
        merged = np.concatenate(scores, axis=1)                                          # (n, n · targets)
        top = np.lexsort((-cosines, -merged), axis=1)[:, :TOP]                           # ties: by cosine
        modality, item = top // n, top % n
        true = (item == np.arange(n)[:, None]).sum(1)                                    # partners in the top 10
        out[name] = {"true_in_top10": float(true.mean() / len(targets)),
                     "top10_share": {t: float((modality == k).mean()) for k, t in enumerate(targets)}}
    return out


def format_search(search: dict[str, Any]) -> list[str]:
    """Console lines: R@1/R@10 raw vs hubness-corrected per pair; merged top-10 raw vs calibrated."""
    if not search or not search["pairs"]:
        return []
    lines = ["", f"search (calibrated on half the ids, measured on the other half; hubness: inverted softmax, "
                 f"T={search['temperature']}):",
             f"{'query -> target':<20}{'n':>6}  R@1 raw  hubness   R@10 raw  hubness"]
    for pair, r in search["pairs"].items():
        h = r.get("hubness", {})
        lines.append(f"{pair.replace('->', ' -> '):<20}{r['n']:>6}  {r['raw']['recall@1']:>7.3f}  "
                     f"{h.get('recall@1', float('nan')):>7.3f}   {r['raw']['recall@10']:>8.3f}  "
                     f"{h.get('recall@10', float('nan')):>7.3f}")
    if search["merged"]:
        lines.append("merged ranking over several target modalities: share of true targets in the top 10")
        for q, r in search["merged"].items():
            cells = ", ".join(f"{name} {r[name]['true_in_top10']:.3f}"
                              for name in ("raw", "calibrated", "calibrated_hubness") if name in r)
            lines.append(f"  {q} -> {'+'.join(r['targets'])} ({r['n']} queries): {cells}")
    return lines
