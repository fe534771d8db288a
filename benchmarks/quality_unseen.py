"""Train with the defaults on an unseen corpus style; compare on a separate test corpus with a jointly trained baseline.

    python -m benchmarks.quality_unseen [--train 500] [--test 150] [--seeds 0] [--style other]
                                  [--baseline-epochs 100] [--config TRAIN_YAML] [--report FILE]

What a new user gets: a concept corpus in another style than the suite's (other caption templates, voice
and clips; ``--style``) is generated and encoded by the tiny frozen encoders into a feature store of
``--train`` samples; ``oneencoder train`` runs on it with no flags but the curriculum (or with
``--config``); a separately generated ``--test`` corpus is embedded raw through the artifact's own
encoders (``load_model(...).encode``). Beside it, the jointly trained pairwise baseline (a 2-layer MLP
per side, InfoNCE, ``--baseline-epochs`` epochs) is trained on the same training features and evaluated
on the same test corpus. Prints concept R@1 per direction, the baseline, their difference and the
one-sided sign-test p-value that the progressive model is worse; chance is 1/24.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import UNRECORDED, write_result
from pipeline.synthetic.concept_store import STAGES
from pipeline.synthetic.draw import STYLES

DIRECTIONS = (("image", "text"), ("text", "image"), ("audio", "text"), ("video", "text"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality_unseen", description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=500, help="training samples (default 500)")
    p.add_argument("--test", type=int, default=150, help="test samples, generated apart (default 150)")
    p.add_argument("--seeds", default="0", help="corpus and training seeds, comma-separated (default 0)")
    p.add_argument("--style", default="other", choices=STYLES, help="corpus style (default other: unseen by the suite)")
    p.add_argument("--stages", help=f"curriculum (default: the config's, else {STAGES})")
    p.add_argument("--tokens", type=int, default=1, help="K token vectors per item from each frozen encoder (default 1)")
    p.add_argument("--baseline-epochs", type=int, default=100, help="epochs of the baseline (default 100)")
    p.add_argument("--config", help="train config YAML instead of the defaults (features/output/stages set here)")
    p.add_argument("--report", help="where every run's figures go as JSON, with the command and machine (a path or "
                                    "a URI such as s3://...; default benchmarks/results/quality_unseen.json)")
    p.add_argument("--workdir", help="keep stores and models here (default: a temporary folder); a rerun reuses the "
                                     "stores and every leading stage trained with the same settings")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds or args.train < 48 or args.test < 24 or args.baseline_epochs < 1:
        parser.error("--seeds: comma-separated integers; --train >= 48, --test >= 24, --baseline-epochs >= 1")
    from pipeline.runtime import init_ray, setup_logging

    setup_logging()
    init_ray()
    runs = []
    with (contextlib.nullcontext(args.workdir) if args.workdir else tempfile.TemporaryDirectory(prefix="quality-unseen-")) as work:
        for seed in seeds:
            runs.append(unseen_run(os.path.join(work, f"s{seed}"), seed, args))
            print(format_table(runs[-1]), flush=True)
    if len(runs) > 1:
        print(format_ranges(runs))
    argv_used = sys.argv[1:] if argv is None else argv
    write_result("quality_unseen", " ".join(["python -m benchmarks.quality_unseen", *argv_used]),
                 {k: v for k, v in vars(args).items() if k not in UNRECORDED}, runs, args.report)
    return 0


def unseen_run(root: str, seed: int, args: argparse.Namespace) -> dict:
    """One run: training store, no-flag training, test corpus through the artifact, baseline per pair."""
    from pipeline.config import read_yaml_mapping
    from pipeline.eval.baseline import concept_hits, fit_baseline, torch_threads, worse_p_value
    from pipeline.inference import load_model
    from pipeline.store.pairs import load_features
    from pipeline.synthetic.concept_store import write_concept_store
    from pipeline.synthetic.corpus import concept_inputs
    from pipeline.train.config import load_train_config
    from pipeline.train.job import run_train

    store = os.path.join(root, f"features-{args.style}-{args.train}-k{args.tokens}")
    model_dir = os.path.join(root, f"model-k{args.tokens}")
    if not os.path.exists(os.path.join(store, "done")):
        write_concept_store(store, n=args.train, seed=seed, style=args.style, tokens=args.tokens)
        open(os.path.join(store, "done"), "w").close()
    started = time.time()
    stages = args.stages or (None if args.config and "stages" in read_yaml_mapping(args.config) else STAGES)
    result = run_train(load_train_config(args.config, features=store, output=model_dir, stages=stages, seed=seed))
    seconds = time.time() - started
    model = load_model(model_dir)
    rng = np.random.default_rng(10_000 + seed)  # a corpus apart from the training one
    test = [concept_inputs(i, rng, args.style) for i in range(args.test)]
    labels = ["{} {}".format(*_concept(i)) for i in range(args.test)]
    names = sorted({n for pair in DIRECTIONS for n in pair} & set(model.modalities))
    ours = {n: model.encode([t[_modality(n)] for t in test], n)[0] for n in names}
    raw = {n: model.items(n).frozen for n in names}  # the artifact's own frozen encoders
    test_features = {n: np.concatenate([raw[n].embed([t[_modality(n)] for t in test[i:i + 64]])
                                        for i in range(0, len(test), 64)]) for n in names}
    train_features = {n: load_features(store, n, {}) for n in names}
    out = {"seed": seed, "style": args.style, "train": args.train, "test": args.test, "tokens": args.tokens, "train_seconds": round(seconds, 1),
           "stages": [{k: s[k] for k in ("stage", "epochs_run", "best_epoch", "still_improving")} for s in result["stages"]],
           "directions": {}}
    with torch_threads(1):
        baselines = {}
        for q, t in DIRECTIONS:
            if q not in ours or t not in ours:
                continue
            key = tuple(sorted((q, t)))
            if key not in baselines:
                ids = sorted(set(train_features[key[0]]) & set(train_features[key[1]]))
                project = fit_baseline(np.stack([train_features[key[0]][i] for i in ids]),
                                       np.stack([train_features[key[1]][i] for i in ids]), args.baseline_epochs, seed)
                baselines[key] = {key[0]: project(test_features[key[0]], 0), key[1]: project(test_features[key[1]], 1)}
            hits = concept_hits(ours[q], ours[t], labels)
            base = concept_hits(baselines[key][q], baselines[key][t], labels)
            out["directions"][f"{q}->{t}"] = {"progressive": float(hits.mean()), "baseline": float(base.mean()),
                                              "p_worse": worse_p_value(hits, base)}
    return out


def _concept(i: int) -> tuple[str, str]:
    from pipeline.synthetic.draw import concept

    return concept(i)


def _modality(name: str):
    from pipeline.modality import Modality

    return Modality.parse(name)


def format_table(run: dict) -> str:
    stages = ", ".join(f"{s['stage']} {s['epochs_run']} epochs (best {s['best_epoch']})" for s in run["stages"])
    lines = [f"seed {run['seed']}, style {run['style']}, K {run['tokens']}: {run['train']} training / {run['test']} test samples, "
             f"trained in {run['train_seconds']:.0f} s ({stages})",
             "| direction | progressive | jointly trained baseline | baseline - progressive | p(worse) |",
             "|---|---|---|---|---|"]
    for name, r in run["directions"].items():
        lines.append(f"| {name.replace('->', ' → ')} | {r['progressive']:.3f} | {r['baseline']:.3f} | "
                     f"{r['baseline'] - r['progressive']:+.3f} | {r['p_worse']:.3f} |")
    return "\n".join(lines)


def format_ranges(runs: list[dict]) -> str:
    lines = [f"over {len(runs)} seeds (min .. max):"]
    for name in runs[0]["directions"]:
        rows = [r["directions"][name] for r in runs]
        gaps = [r["baseline"] - r["progressive"] for r in rows]
        mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
        lines.append(f"  {name}: mean progressive {mean('progressive'):.3f}, baseline {mean('baseline'):.3f}, "
                     f"baseline - progressive {mean('baseline') - mean('progressive'):+.3f}; "
                     f"progressive {min(r['progressive'] for r in rows):.3f} .. "
                     f"{max(r['progressive'] for r in rows):.3f}  baseline {min(r['baseline'] for r in rows):.3f} .. "
                     f"{max(r['baseline'] for r in rows):.3f}  baseline - progressive {min(gaps):+.3f} .. {max(gaps):+.3f}")
    return "\n".join(lines)


def format_result(runs: list[dict]) -> str:
    """The table of every seed's run, and the ranges over them when there are several."""
    return "\n".join([*(format_table(r) for r in runs), *([format_ranges(runs)] if len(runs) > 1 else [])])


if __name__ == "__main__":
    sys.exit(main())
