"""Scores that mean the same thing across modality pairs, and a hubness correction.

Raw cosines of different pairs sit in different ranges (text→image higher than text→audio: the modality gap), so a
list merged by raw cosine is filled by one modality. **Calibration** fits, per (query modality, target modality),
a monotone map from score to ``match``: the probability that a hit with that score is the query's true partner,
among REFERENCE candidates (isotonic regression on held-out pairs). A list merged by ``match`` ranks each
modality's hits by how likely they are right (a pair that retrieves poorly earns low matches even for its best
hits), and a threshold on it says "no match".

**Hubness correction** (inverted softmax over a query bank): some targets ("hubs") sit near every query and crowd
every list. Each candidate's score is lowered by how close it sits to a bank of sample queries of the query's
modality: ``score − T · log(mean_b exp(s(b, target) / T))``. It reranks a search's candidates only, so it costs a
bank × candidates product per query, whatever the corpus size.

Both are fitted on a sample of ids drawn the same way in every modality (a hash of the id below a threshold, so
paired items are drawn together), from the ids the model held out of training.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

SAMPLE_ROWS = 4096   # sample items per modality the calibration and the query banks are drawn from
BANK_ROWS = 1024     # most sample queries of a modality in its bank
MIN_PAIRS = 16       # fewer shared sample ids than this: the pair is not calibrated
TEMPERATURE = 0.05   # the inverted softmax's temperature, on cosines
HARD_NEGATIVES = 20    # each sample query's best-scoring non-partners the match map is fitted on
RANDOM_NEGATIVES = 20  # and a random draw of its other non-partners (weighted for all of them)
REFERENCE = 1000       # match = P(partner) among this many candidates, whatever the sample's size
KNOTS = 256            # most points of a stored match map
MIN_BLOCK = 10.0       # least weight (items) behind one step of a match map
HUBNESS_FETCH = 4    # a hubness-corrected search reranks this many times k candidates (at least 40)


def id_fractions(ids: list[str], seed: int = 0) -> np.ndarray:
    """Each id's place in [0, 1), the hash ``pipeline.store.pairs.is_validation`` compares with its fraction."""
    from pipeline.store.pairs import id_fraction

    return np.fromiter((id_fraction(i, seed) for i in ids), np.float64, len(ids))


def sample_fraction(held_out: float, rows: int) -> float:
    """The fraction of ids (by their hash) a modality of ``rows`` items samples: the held-out ones (``held_out``,
    the model's val_fraction; all ids when 0), thinned to about SAMPLE_ROWS."""
    held = held_out if held_out > 0 else 1.0
    return float(min(held, SAMPLE_ROWS / max(rows, 1)))


def bank_offsets(bank: np.ndarray, targets: np.ndarray, temperature: float = TEMPERATURE) -> np.ndarray:
    """Each target's inverted-softmax offset against ``bank`` (B, d): ``T · log(mean_b exp(s(b, t) / T))`` (n,)."""
    if not len(bank):
        return np.zeros(len(targets), np.float32)
    z = (np.asarray(bank, np.float32) @ np.asarray(targets, np.float32).T) / temperature
    top = z.max(0)
    return (temperature * (top + np.log(np.exp(z - top).mean(0)))).astype(np.float32)


def corrected(scores: np.ndarray, bank: np.ndarray, targets: np.ndarray, temperature: float = TEMPERATURE
              ) -> np.ndarray:
    """``scores`` (…, n) against ``targets`` (n, d) with the hubness correction of a query bank applied."""
    return scores - bank_offsets(bank, targets, temperature)


@dataclasses.dataclass
class Calibration:
    """Per (query, target) pair: match maps for raw and hubness-corrected scores; per modality: a query bank."""

    pairs: dict[str, dict[str, Any]]          # "text->image": {"n", "raw": [[score, match], ...], "hubness": ...}
    banks: dict[str, np.ndarray]              # modality → (B, d) sample queries
    temperature: float = TEMPERATURE

    def has(self, query: str, target: str, hubness: bool = False) -> bool:
        return "hubness" in self.pairs.get(f"{query}->{target}", {}) if hubness else f"{query}->{target}" in self.pairs

    def match(self, query: str, target: str, scores: np.ndarray, hubness: bool = False) -> np.ndarray:
        """The probability that each hit of ``scores`` (raw or hubness-corrected, as ``hubness`` says) is the
        query's partner."""
        points = np.asarray(self.pairs[f"{query}->{target}"]["hubness" if hubness else "raw"])
        return np.interp(np.asarray(scores, np.float64), points[:, 0], points[:, 1])

    def record(self) -> dict[str, Any]:
        """What index.json keeps (the banks are files of their own)."""
        return {"temperature": self.temperature, "pairs": self.pairs,
                "banks": {m: int(len(b)) for m, b in self.banks.items()}}


def fit(sample: dict[str, tuple[list[str], np.ndarray]], temperature: float = TEMPERATURE,
        bank_rows: int = BANK_ROWS) -> Calibration:
    """Calibration from sample vectors per modality (ids, (n, d) unit vectors): every modality its query bank (the
    first ``bank_rows`` of its sample in id-hash order, at most half of it), every ordered pair of modalities with at
    least MIN_PAIRS shared ids its maps (a modality with itself too: a search over several modalities that include
    the query's own ranks its hits by how likely they are the query's item itself). The hubness map is fitted on
    the shared ids outside the query's bank, as a real query is not in the bank."""
    banks, in_bank = {}, {}
    for m, (ids, z) in sample.items():
        first = np.argsort(id_fractions(ids, seed=1), kind="stable")[:min(bank_rows, len(ids) // 2)]
        banks[m], in_bank[m] = np.asarray(z, np.float32)[first], {ids[k] for k in first}
    pairs: dict[str, dict[str, Any]] = {}
    for q, (ids_q, zq) in sample.items():
        for t, (ids_t, zt) in sample.items():  # t == q too: there the partner is the item itself (a duplicate)
            where_t = {i: k for k, i in enumerate(ids_t)}
            rows = sorted((i, k, where_t[i]) for k, i in enumerate(ids_q) if i in where_t)  # by id: any row order
            rows = [(k, kt) for _, k, kt in rows]
            if len(rows) < MIN_PAIRS:
                continue
            rq, rt = map(np.array, zip(*rows))
            sims = np.asarray(zq, np.float32)[rq] @ np.asarray(zt, np.float32)[rt].T
            rng = np.random.default_rng(zlib.crc32(f"{q}->{t}".encode()))  # the same draw whatever else is fitted
            entry = {"n": len(rows), "raw": _pair_map(sims, rng)}
            out = np.array([ids_q[k] not in in_bank[q] for k in rq])
            if out.sum() >= MIN_PAIRS:
                fixed = corrected(sims[np.ix_(out, out)], banks[q], np.asarray(zt, np.float32)[rt[out]], temperature)
                entry["hubness"] = _pair_map(fixed, rng)
            pairs[f"{q}->{t}"] = entry
    return Calibration(pairs, banks, temperature)


def _pair_map(sims: np.ndarray, rng: np.random.Generator) -> list[list[float]]:
    """The match map of a square score matrix whose diagonal holds the partners: isotonic P(partner | score) over
    each query's partner, its HARD_NEGATIVES best non-partners and a random RANDOM_NEGATIVES of the rest (weighted
    for all of them), every query's non-partners weighted to REFERENCE − 1 candidates."""
    n = len(sims)
    others = np.where(np.eye(n, dtype=bool), -np.inf, sims)
    order = np.argsort(-others, axis=1)[:, :n - 1]                 # each query's non-partners, best first
    hard = order[:, :min(HARD_NEGATIVES, n - 1)]
    rest = order[:, hard.shape[1]:]
    take = min(RANDOM_NEGATIVES, rest.shape[1])
    rows = np.arange(n)[:, None]
    picked = rest[rows, rng.random(rest.shape).argsort(1)[:, :take]] if take else rest[:, :0]
    per = (REFERENCE - 1) / (n - 1)                                # one non-partner stands for this many
    scores = np.concatenate([np.diag(sims), sims[rows, hard].ravel(), sims[rows, picked].ravel()])
    labels = np.concatenate([np.ones(n), np.zeros(hard.size + picked.size)])
    weights = np.concatenate([np.ones(n), np.full(hard.size, per),
                              np.full(picked.size, per * rest.shape[1] / take if take else 0.0)])
    return isotonic(scores, labels, weights, min_block=MIN_BLOCK)


def isotonic(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray, knots: int = KNOTS,
             min_block: float = 0.0) -> list[list[float]]:
    """Weighted isotonic (non-decreasing) regression of ``labels`` on ``scores`` by pool-adjacent-violators, each
    block holding at least ``min_block`` weight (pooled downwards from the top), as at most ``knots``
    (score, value) points to interpolate between."""
    order = np.argsort(scores, kind="stable")
    blocks: list[list[float]] = []                                 # [Σw·y, Σw, Σw·s]
    for s, y, w in zip(scores[order].tolist(), labels[order].tolist(), weights[order].tolist()):
        blocks.append([w * y, w, w * s])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            last = blocks.pop()
            blocks[-1] = [blocks[-1][0] + last[0], blocks[-1][1] + last[1], blocks[-1][2] + last[2]]
    # a block of a few items (a lone partner above every non-partner) would claim a certainty the sample cannot
    # show: pooled into the block below until it holds MIN_BLOCK items' weight
    merged: list[list[float]] = []
    for b in reversed([b for b in blocks if b[1] > 0]):
        if merged and merged[-1][1] < min_block:
            merged[-1] = [merged[-1][0] + b[0], merged[-1][1] + b[1], merged[-1][2] + b[2]]
        else:
            merged.append(b)
    points = [[b[2] / b[1], b[0] / b[1]] for b in reversed(merged)]
    if len(points) > knots:
        keep = np.unique(np.linspace(0, len(points) - 1, knots).round().astype(int))
        points = [points[k] for k in keep]
    return [[round(x, 6), round(p, 8)] for x, p in points]


def fit_held_out(projected: dict[str, tuple[list[str], np.ndarray]], held_out: float, seed: int,
                 temperature: float = TEMPERATURE) -> Calibration:
    """Calibration of vectors held in memory (a small store projected at start-up), on the same sample the index
    job draws: the ids the model held out (``held_out`` = its val_fraction, ``seed`` its seed), thinned to about
    SAMPLE_ROWS per modality."""
    sample = {}
    for m, (ids, z) in projected.items():
        keep = id_fractions(ids, seed) < sample_fraction(held_out, len(ids))
        sample[m] = ([i for i, k in zip(ids, keep) if k], np.asarray(z)[keep])
    return fit(sample, temperature)
