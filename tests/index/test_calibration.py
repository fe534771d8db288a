"""Calibration (one ranking across modality pairs, a "no match" threshold) and the hubness correction, on vectors
built so that each effect is known."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.eval.search import search_quality
from pipeline.index.calibration import corrected, fit, fit_held_out, isotonic
from pipeline.index.segments import Segment, search_segments
from pipeline.synthetic.vectors import gapped, unit

D = 64


def _unit(x: np.ndarray) -> np.ndarray:
    return unit(x)


def _gapped(n: int = 800, seed: int = 0, noise: float = 2.5) -> dict[str, tuple[list[str], np.ndarray]]:
    """text, image and audio of ``n`` paired items; every text-image cosine sits higher (``gapped``)."""
    return gapped(n, seed, noise, D)


def test_calibration_turns_a_merged_list_filled_by_one_modality_into_one_ranking():
    search = search_quality(_gapped())
    # each pair alone finds half its partners in its top 10 (calibration does not change a pair's own ranking)
    assert min(search["pairs"]["text->image"]["raw"]["recall@10"], search["pairs"]["text->audio"]["raw"]["recall@10"]) > 0.5
    merged = search["merged"]["text"]
    assert merged["targets"] == ["image", "audio"]
    assert merged["raw"]["top10_share"]["image"] > 0.95  # raw cosine: the image pair's higher range wins every slot
    assert 0.25 < merged["calibrated"]["top10_share"]["image"] < 0.75  # calibrated: both modalities in the list
    assert merged["calibrated"]["true_in_top10"] > merged["raw"]["true_in_top10"] + 0.1


def test_match_says_no_match_for_a_query_with_no_partner():
    vectors = _gapped(noise=1.0)  # a pair that finds most partners first
    half = {m: (ids[:400], z[:400]) for m, (ids, z) in vectors.items()}
    cal = fit(half)
    ids, text = vectors["text"]
    image = vectors["image"][1][400:]
    partners = cal.match("text", "image", np.sum(text[400:] * image, 1))         # each query's own partner
    strangers = cal.match("text", "image", (_unit(np.random.default_rng(9).normal(size=(400, D))) @ image.T).max(1))
    assert np.median(partners) > 0.5 > np.quantile(strangers, 0.99)  # a threshold of 0.5 separates them
    assert np.all(np.diff(np.asarray(cal.pairs["text->image"]["raw"])[:, 1]) >= 0)  # the map never falls


def test_isotonic_is_the_weighted_monotone_fit():
    points = isotonic(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1.0]), np.array([1, 1, 1, 1.0]))
    assert points == [[0.1, 0.0], [0.25, 0.5], [0.4, 1.0]]  # the violating middle pair pooled
    points = isotonic(np.array([0.1, 0.2]), np.array([1, 0.0]), np.array([3, 1.0]))
    assert points == [[0.125, 0.75]]


def test_the_hubness_correction_demotes_targets_near_every_query():
    rng = np.random.default_rng(1)
    n, hubs = 300, 30
    mean = np.zeros(D)
    mean[0] = 2.0  # the queries share a direction (as real embeddings do), so targets near it sit close to all

    def draw(k):
        return _unit(rng.normal(size=(k, D)) + mean)

    queries = draw(n)
    targets = _unit(np.concatenate([queries + 1.5 * rng.normal(size=(n, D)) / np.sqrt(D),
                                    _unit(mean) + 0.4 * rng.normal(size=(hubs, D)) / np.sqrt(D)]))  # hubs: no partner
    bank = draw(500)  # other queries of the same kind
    raw = queries @ targets.T
    fixed = corrected(raw, bank, targets)

    def r1(s):
        return float((s.argmax(1) == np.arange(n)).mean())

    def hub_share(s):
        return float((np.argsort(-s, 1)[:, :10] >= n).mean())

    assert hub_share(raw) > 0.3 and hub_share(fixed) < hub_share(raw) / 4  # hubs fill a third of every top 10
    assert r1(fixed) > r1(raw)


def test_segment_search_reranks_with_the_bank_and_carries_match():
    vectors = _gapped(n=400)
    cal = fit_held_out(vectors, held_out=0.5, seed=0)
    import pyarrow as pa

    segments = {m: [Segment(m, "s", z, pa.table({"id": ids, "uri": pa.nulls(len(ids), pa.string())}))]
                for m, (ids, z) in vectors.items() if m != "text"}
    q = vectors["text"][1][7]
    hits = search_segments(segments, q, ["image", "audio"], 10, query_modality="text", calibration=cal)
    assert {h.modality for h in hits} == {"image", "audio"}  # one list across both, by match
    assert [h.match for h in hits] == sorted((h.match for h in hits), reverse=True)
    raw = search_segments(segments, q, ["image", "audio"], 10)  # no query modality: no match, by cosine
    assert {h.modality for h in raw} == {"image"} and all(h.match is None for h in raw)
    fixed = search_segments(segments, q, ["image"], 10, query_modality="text", calibration=cal, hubness=True)
    # the correction reranks the best HUBNESS_FETCH·k (at least 40) candidates by cosine
    image = vectors["image"][1]
    pool = np.argsort(-(image @ q), kind="stable")[:40]
    expected = corrected(image[pool] @ q, cal.banks["text"], image[pool])
    best = np.argsort(-expected, kind="stable")[:10]
    assert [h.id for h in fixed] == [vectors["image"][0][i] for i in pool[best]]
    assert [h.score for h in fixed] == pytest.approx(expected[best], abs=1e-5)
