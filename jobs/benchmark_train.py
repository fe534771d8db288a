"""Benchmark training on cached features against running the frozen encoders in every step.

    python -m jobs.benchmark_train [--samples 64] [--batch-size 16] [--epochs 1] [--preset paper|tiny] [--json FILE]
"""
from __future__ import annotations

import argparse
import sys

from pipeline.benchmarks import benchmark_train, format_train_benchmark, print_report
from pipeline.runtime import setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark_train", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=64, help="image-text pairs (default 64)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--epochs", type=int, default=1, help="epochs timed for each approach (default 1)")
    p.add_argument("--preset", choices=["paper", "tiny"], default="paper", help="paper = ViT-B/16 + BERT-base at random init (default)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.samples < args.batch_size or args.batch_size < 2 or args.epochs < 1:
        p.error("need --samples >= --batch-size >= 2 and --epochs >= 1")
    setup_logging()
    result = benchmark_train(args.samples, args.batch_size, args.epochs, args.preset)
    print_report(format_train_benchmark(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
