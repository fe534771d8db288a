"""Benchmark training on cached features against running the frozen encoders in every step.

    python -m jobs.benchmark_train [--samples 64] [--batch-size 16] [--epochs 1] [--preset paper|tiny] [--report FILE]
    python -m jobs.benchmark_train --config jobs/configs/benchmark_train_paper.yaml
"""
from __future__ import annotations

import argparse
import sys


from jobs import registry
from jobs.benchmarks import BenchmarkTrainConfig, benchmark_train, format_train_benchmark, report_figures


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return registry.build_parser(registry.JOBS["benchmark-train"], parser)


def main(argv: list[str] | None = None) -> int:
    return registry.main("benchmark-train", argv)


def run(cfg: BenchmarkTrainConfig, args: argparse.Namespace) -> int:
    return report_figures(*_measure(cfg), cfg.report)


def _measure(cfg: BenchmarkTrainConfig) -> tuple[str, dict]:
    result = benchmark_train(cfg.samples, cfg.batch_size, cfg.epochs, cfg.preset)
    return format_train_benchmark(result), result



if __name__ == "__main__":
    sys.exit(main())
