"""Benchmark the Ray Serve application: req/s and p50/p99 at several concurrencies, batching on vs off,
and Serve's overhead over the same model in-process (loopback only, bounded in count and time).

    python -m jobs.benchmark_serve [--preset paper|tiny] [--requests 96] [--levels 1,8,32] [--report FILE]
    python -m jobs.benchmark_serve --config jobs/configs/benchmark_serve_paper.yaml
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from pipeline.benchmarks import benchmark_main
from pipeline.job_configs import BenchmarkServeConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark_serve", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["paper", "tiny"], help="paper = ViT-B/16 + BERT-base at random init (default)")
    p.add_argument("--requests", type=int, help="most requests per concurrency level (default 96)")
    p.add_argument("--levels", help="concurrency levels (default 1,8,32)")
    p.add_argument("--level-cap-s", type=float, help="time cap per level in seconds (default 30)")
    p.add_argument("--report", help="also write the figures as JSON to this file")
    p.add_argument("--config", help="YAML config; flags override its fields")
    return p


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(build_parser(), BenchmarkServeConfig, argv, _measure)


def _measure(cfg: BenchmarkServeConfig) -> tuple[str, dict]:
    from serving.benchmark import benchmark_serve, format_serve_benchmark

    with tempfile.TemporaryDirectory(prefix="oneencoder-serve-bench-") as workdir:
        result = benchmark_serve(workdir, cfg.preset, tuple(cfg.levels), cfg.requests, cfg.level_cap_s)
    return format_serve_benchmark(result), result


if __name__ == "__main__":
    sys.exit(main())
