"""Run the suite's quality bar under other seeds and torch thread counts: how far its figures move.

    python -m benchmarks.quality_sweep [--seeds 0,1,2] [--threads 1,2] [--styles hard,other] [--samples 480]
                                 [--epochs N] [--baseline-epochs 100] [--report FILE]

Each (style, seed, threads) run generates the concept corpus of that style with that seed, encodes it,
trains the curriculum with the training defaults (Ray Train, ``cpus_per_worker`` = threads; ``--epochs``
pins every stage instead) and trains the 2-layer MLP baseline, all on that many torch threads, then
prints concept R@1 per pair and, at the end, the range of every figure over the runs of each style. The assertions of ``tests/train/test_train.py`` must hold over that whole range.
To imitate a machine with other vector units, run it under ``ATEN_CPU_CAPABILITY=default``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from benchmarks.common import UNRECORDED, write_result
from pipeline.synthetic.concept_store import BASELINE_EPOCHS
from pipeline.synthetic.draw import STYLES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality_sweep", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="corpus and training seeds, comma-separated (default 0,1,2)")
    p.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated (default 1,2)")
    p.add_argument("--styles", default="hard,other",
                   help=f"corpus styles, comma-separated (of {', '.join(STYLES)}; default: the quality bar's, hard,other)")
    p.add_argument("--epochs", type=int, help="epochs of every stage (default: automatic, the training defaults)")
    p.add_argument("--baseline-epochs", type=int, default=BASELINE_EPOCHS, help=f"epochs of the baseline (default {BASELINE_EPOCHS})")
    p.add_argument("--samples", type=int, default=480, help="concept samples generated per run (default 480)")
    p.add_argument("--report", help="where every run's figures go as JSON, with the command and machine (a path or "
                                    "a URI such as s3://...; default benchmarks/results/quality_sweep.json)")
    return p


def _ints(text: str, flag: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        parser.error(f"{flag} takes comma-separated integers >= 0, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    seeds, threads = _ints(args.seeds, "--seeds", parser), _ints(args.threads, "--threads", parser)
    styles = [v.strip() for v in args.styles.split(",") if v.strip()]
    if not styles or set(styles) - set(STYLES):
        parser.error(f"--styles takes comma-separated styles of {', '.join(STYLES)}, got {args.styles!r}")
    if min(threads) < 1 or args.samples < 48 or (args.epochs is not None and args.epochs < 1) or args.baseline_epochs < 1:
        parser.error("--threads >= 1, --samples >= 48, --epochs >= 1 and --baseline-epochs >= 1 expected")
    from pipeline.runtime import init_ray, setup_logging

    setup_logging()
    init_ray()
    runs = []
    with tempfile.TemporaryDirectory(prefix="quality-sweep-") as work:
        for style in styles:
            for seed in seeds:
                for t in threads:
                    runs.append(sweep_run(os.path.join(work, f"{style}-s{seed}-t{t}"), seed, t, args.epochs,
                                          args.samples, style, args.baseline_epochs))
                    print(format_sweep(runs[-1:]), flush=True)
    for style in styles:
        print(format_sweep([r for r in runs if r["style"] == style], ranges=True))
    argv_used = sys.argv[1:] if argv is None else argv
    write_result("quality_sweep", " ".join(["python -m benchmarks.quality_sweep", *argv_used]),
                 {k: v for k, v in vars(args).items() if k not in UNRECORDED}, runs, args.report)
    return 0


def sweep_run(root: str, seed: int, threads: int, epochs: int | None, samples: int, style: str = "suite",
              baseline_epochs: int = BASELINE_EPOCHS) -> dict:
    """One quality-bar run: concept store of ``style``, curriculum and baseline with this seed on ``threads`` threads."""
    from pipeline.eval.baseline import compare
    from pipeline.synthetic.concept_store import STAGES, VAL_FRACTION, write_concept_store
    from pipeline.train.config import load_train_config
    from pipeline.train.job import run_train

    store, model = os.path.join(root, "features"), os.path.join(root, "model")
    labels = write_concept_store(store, n=samples, seed=seed, threads=threads, style=style)
    cfg = load_train_config(None, epochs=epochs, features=store, output=model, stages=STAGES, val_fraction=VAL_FRACTION,
                            seed=seed, cpus_per_worker=threads)
    run_train(cfg)
    return {"style": style, "seed": seed, "threads": threads,
            "pairs": compare(store, model, labels, VAL_FRACTION, baseline_epochs, seed=seed, threads=threads)}


def format_sweep(runs: list[dict], ranges: bool = False) -> str:
    """One line per run and pair, or (``ranges``) the min..max of every figure per pair over the runs."""
    lines = []
    if not ranges:
        for run in runs:
            for pair, r in run["pairs"].items():
                lines.append(f"{run['style']} seed {run['seed']} threads {run['threads']} {pair}: progressive {r['progressive']:.3f} "
                             f"baseline {r['baseline']:.3f} only-prog/only-base {r['only_progressive']}/"
                             f"{r['only_baseline']} p(worse) {r['p_worse']:.3f}")
        return "\n".join(lines)
    lines.append(f"{runs[0]['style']} corpus, over {len(runs)} runs (min .. max):")
    for pair in runs[0]["pairs"]:
        rows = [run["pairs"][pair] for run in runs]
        span = lambda key: f"{min(r[key] for r in rows):.3f} .. {max(r[key] for r in rows):.3f}"  # noqa: E731
        gap = [r["baseline"] - r["progressive"] for r in rows]
        lines.append(f"  {pair}: progressive {span('progressive')}  baseline {span('baseline')}  "
                     f"baseline - progressive {min(gap):.3f} .. {max(gap):.3f}  p(worse) {span('p_worse')}  "
                     f"chance {rows[0]['chance']:.3f}")
    return "\n".join(lines)


def format_result(runs: list[dict]) -> str:
    """The sweep's table: every run's figures, then their range per corpus style."""
    styles = list(dict.fromkeys(r["style"] for r in runs))
    return "\n".join([format_sweep(runs), *(format_sweep([r for r in runs if r["style"] == s], ranges=True)
                                              for s in styles)])


if __name__ == "__main__":
    sys.exit(main())
