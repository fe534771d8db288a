"""Benchmark training on cached features against running the frozen encoders in every step.

    python -m jobs.benchmark_train [--samples 64] [--batch-size 16] [--epochs 1] [--preset paper|tiny] [--report FILE]
    python -m jobs.benchmark_train --config jobs/configs/benchmark_train_paper.yaml
"""
from __future__ import annotations

import argparse
import sys

from pipeline.benchmarks import benchmark_main, benchmark_train, format_train_benchmark
from pipeline.job_configs import BenchmarkTrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark_train", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, help="image-text pairs (default 64)")
    p.add_argument("--batch-size", type=int, help="batch size (default 16)")
    p.add_argument("--epochs", type=int, help="epochs timed for each approach (default 1)")
    p.add_argument("--preset", choices=["paper", "tiny"], help="paper = ViT-B/16 + BERT-base at random init (default)")
    p.add_argument("--report", help="also write the figures as JSON to this file")
    p.add_argument("--config", help="YAML config; flags override its fields")
    return p


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(build_parser(), BenchmarkTrainConfig, argv, _measure, needs_ray=False)


def _measure(cfg: BenchmarkTrainConfig) -> tuple[str, dict]:
    result = benchmark_train(cfg.samples, cfg.batch_size, cfg.epochs, cfg.preset)
    return format_train_benchmark(result), result


if __name__ == "__main__":
    sys.exit(main())
