"""What compact vectors and one ranking across modalities cost and buy, on trained models.

    python -m benchmarks.search_quality [--samples 480] [--widths 64,128] [--report FILE]

A concept store of ``samples`` items (the suite's generator, tiny frozen encoders) is trained twice with the
defaults and the suite's curriculum: once plain, once with ``loss.matryoshka: widths``. On each model's held-out
ids it reports R@1 and R@10 per pair (both directions averaged) at each width (the prefixes and the full one) in
float, int8 and binary: what a narrower or coarser vector costs, with and without training for it.

Then the merged multi-modality ranking, as ``oneencoder evaluate`` measures it (calibrated on half the ids,
measured on the other half): the share of a query's true targets in the merged top 10 by raw cosine, by
calibrated match, and by calibrated match of hubness-corrected scores, and the largest modality's share of the top
10, on the plain model's store and on vectors with a known modality gap (``pipeline.synthetic.vectors.gapped``:
text finds image and audio alike, but text-image cosines sit higher).

Last, the plain model's index of the same store built by the index job as each ann kind (exact, the default at
this size; hnsw and ivf_pq forced): build time, and every text query's top 10 over each other modality against
exact search (recall@10, p50 / p99 of one query in-process).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from benchmarks.common import REPORT_HELP, benchmark, cli, finish, split_ints
from pipeline.config import StrictModel

PAIRS = (("image", "text"), ("audio", "text"), ("video", "text"))


class BenchmarkSearchQualityConfig(StrictModel):
    samples: int = Field(480, ge=96, description="Concept samples in the store trained on (24 concepts).")
    widths: list[int] = Field([64, 128], min_length=1, description="Matryoshka prefixes of the second model "
                              "(multiples of 8 below the model's width; a list, or '64,128').")
    gap_items: int = Field(800, ge=100, description="Paired items of the synthetic modality-gap vectors.")
    seed: int = Field(0, description="Corpus, training and vector seed.")
    report: str | None = Field(None, description=REPORT_HELP)

    @field_validator("widths", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_ints(value, "64,128")


JOB = benchmark("search_quality", "Matryoshka widths and int8/binary precision, and the merged ranking raw vs "
                "calibrated, on trained models", "benchmarks.search_quality:BenchmarkSearchQualityConfig")


def _train(store: str, output: str, widths: list[int] | None, seed: int) -> float:
    from pipeline.synthetic.concept_store import STAGES, VAL_FRACTION
    from pipeline.train.config import load_train_config
    from pipeline.train.job import run_train

    stages = [{"new": n, "anchor": a, **({"loss": {"matryoshka": widths}} if widths else {})}
              for n, a in (s.split(":") for s in STAGES.split(","))]
    t = time.perf_counter()
    run_train(load_train_config(None, features=store, output=output, stages=stages, val_fraction=VAL_FRACTION,
                                seed=seed))
    return time.perf_counter() - t


def _projected(model_dir: str, store: str, held_out_only: bool) -> dict[str, tuple[list[str], np.ndarray]]:
    from pipeline.artifact import read_artifact
    from pipeline.inference import load_model
    from pipeline.store.pairs import is_validation, load_features

    model, (fraction, seed) = load_model(model_dir), read_artifact(model_dir).held_out
    out = {}
    for m in model.modalities:
        features = load_features(store, m, {})
        ids = sorted(i for i in features if not held_out_only or is_validation(i, fraction, seed))
        out[m] = (ids, model.project(np.stack([features[i] for i in ids]), m))
    return out


def run(cfg: BenchmarkSearchQualityConfig, args: object = None) -> int:
    from pipeline.eval.search import search_quality
    from pipeline.index.compact import recall_at_widths
    from pipeline.runtime import init_ray
    from pipeline.synthetic.concept_store import write_concept_store
    from pipeline.synthetic.vectors import gapped

    init_ray()
    result: dict[str, Any] = {"samples": cfg.samples, "widths": cfg.widths, "compact": {}, "merged": {},
                              "train_s": {}}
    with tempfile.TemporaryDirectory(prefix="oneencoder-search-quality-") as workdir:
        store = os.path.join(workdir, "store")
        write_concept_store(store, n=cfg.samples, seed=cfg.seed)
        models = {"plain": None, "matryoshka": cfg.widths}
        projected = {}
        for name, widths in models.items():
            result["train_s"][name] = _train(store, os.path.join(workdir, name), widths, cfg.seed)
            print(f"{name} model trained in {result['train_s'][name]:.0f} s", flush=True)
            projected[name] = _projected(os.path.join(workdir, name), store, held_out_only=True)
        d = next(iter(projected["plain"].values()))[1].shape[1]
        for a, b in PAIRS:
            result["compact"][f"{a}-{b}"] = {
                name: recall_at_widths(*_pair(projected[name], a, b), sorted(set(cfg.widths) | {d}))
                for name in models}
            result["compact"][f"{a}-{b}"]["n"] = len(_pair(projected["plain"], a, b)[0])
        result["merged"]["concept store"] = search_quality(_projected(os.path.join(workdir, "plain"), store,
                                                                      held_out_only=False))["merged"]
        result["index"] = _index_kinds(os.path.join(workdir, "plain"), store, workdir)
    result["merged"]["modality gap"] = search_quality(gapped(cfg.gap_items, cfg.seed))["merged"]
    return finish("search_quality", cfg, result, format_search_quality)


def _index_kinds(model_dir: str, store: str, workdir: str) -> dict[str, Any]:
    """The store indexed as each ann kind: build seconds, text queries' recall@10 against exact search per target
    modality, one query's p50 / p99 in ms."""
    from pipeline.index.config import IndexConfig
    from pipeline.index.job import run_index
    from pipeline.index.segments import VectorIndex

    out: dict[str, Any] = {}
    for kind in ("exact", "hnsw", "ivf_pq"):
        folder = os.path.join(workdir, f"index-{kind}")
        t = time.perf_counter()
        run_index(IndexConfig(model=model_dir, features=store, output=folder, ann={"kind": kind}))
        built = time.perf_counter() - t
        index = VectorIndex(folder)
        targets = [m for m in index.modalities if m != "text"]
        found = total = 0
        times = []
        for q in np.asarray(index.segments["text"][0].vectors):
            for m in targets:
                t = time.perf_counter()
                approx = index.search(q, [m], 10)
                times.append((time.perf_counter() - t) * 1e3)
                exact = index.search(q, [m], 10, exact=True)
                found += len({h.id for h in approx} & {h.id for h in exact})
                total += len(exact)
        seg = index.segments[targets[0]][0]  # what the job built: ivf_pq below 256 vectors is an exact scan
        made = "exact" if seg.graph is None else kind
        out[kind] = {"built": made, "build_s": built, "recall": found / total, "queries": len(times) // len(targets),
                     "vectors": {m: index.size(m) for m in targets}, "p50_ms": float(np.percentile(times, 50)),
                     "p99_ms": float(np.percentile(times, 99))}
        print(f"index as {kind}: built in {built:.1f} s, recall@10 {out[kind]['recall']:.3f}", flush=True)
    return out


def _pair(projected: dict[str, tuple[list[str], np.ndarray]], a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    (ia, za), (ib, zb) = projected[a], projected[b]
    shared = sorted(set(ia) & set(ib))
    ra, rb = {x: k for k, x in enumerate(ia)}, {x: k for k, x in enumerate(ib)}
    return za[[ra[x] for x in shared]], zb[[rb[x] for x in shared]]


def format_search_quality(r: dict[str, Any]) -> str:
    lines = [f"Held-out pairs, R@1 / R@10 (both directions averaged): plain model vs trained with Matryoshka "
             f"prefixes {', '.join(map(str, r['widths']))}",
             "| pair | width | float plain | float Matryoshka | int8 plain | int8 Matryoshka | binary plain | "
             "binary Matryoshka |", "|---|---|---|---|---|---|---|---|"]
    for pair, c in r["compact"].items():
        for width in c["plain"]:
            cells = [f"{c[name][width][p]['recall@1']:.3f} / {c[name][width][p]['recall@10']:.3f}"
                     for p in ("float", "int8", "binary") for name in ("plain", "matryoshka")]
            lines.append(f"| {pair} (n {c['n']}) | {width} | " + " | ".join(cells) + " |")
    lines += ["", "Merged top 10 over several target modalities: share of true targets found (and the largest "
              "modality's share of the list)", "| vectors | query -> targets | raw cosine | calibrated | "
              "calibrated + hubness |", "|---|---|---|---|---|"]
    for store, merged in r["merged"].items():
        for q, m in merged.items():
            cells = []
            for ranking in ("raw", "calibrated", "calibrated_hubness"):
                if ranking in m:
                    share = max(m[ranking]["top10_share"].items(), key=lambda kv: kv[1])
                    cells.append(f"{m[ranking]['true_in_top10']:.3f} ({share[0]} {share[1]:.2f})")
                else:
                    cells.append("-")
            lines.append(f"| {store} (n {m['n']}) | {q} -> {'+'.join(m['targets'])} | " + " | ".join(cells) + " |")
    if "index" in r:
        lines += ["", "The plain model's index of the concept store, per ann kind: text queries' top 10 over each "
                  "other modality against exact search", "| kind | vectors | index job s | recall@10 | p50 / p99 ms |",
                  "|---|---|---|---|---|"]
        for kind, x in r["index"].items():
            vectors = ", ".join(f"{m} {n}" for m, n in x["vectors"].items())
            lines.append(f"| {kind}{'' if x['built'] == kind else ' (built: ' + x['built'] + ')'} | {vectors} | {x['build_s']:.1f} | {x['recall']:.3f} | {x['p50_ms']:.2f} / "
                         f"{x['p99_ms']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.search_quality``: exit 2 with one `error:` line for a bad config."""
    return cli(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
