"""Benchmark the Ray Serve application: req/s and p50/p99 at several concurrencies, batching on vs off,
and Serve's overhead over the same model in-process (loopback only, bounded in count and time).

    python -m jobs.benchmark_serve [--preset paper|tiny] [--requests 96] [--levels 1,8,32] [--report FILE]
    python -m jobs.benchmark_serve --config jobs/configs/benchmark_serve_paper.yaml
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from jobs import registry
from jobs.benchmarks import BenchmarkServeConfig, report_figures



def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return registry.build_parser(registry.JOBS["benchmark-serve"], parser)


def main(argv: list[str] | None = None) -> int:
    return registry.main("benchmark-serve", argv)


def run(cfg: BenchmarkServeConfig, args: argparse.Namespace) -> int:
    from pipeline.runtime import init_ray

    init_ray()
    return report_figures(*_measure(cfg), cfg.report)


def _measure(cfg: BenchmarkServeConfig) -> tuple[str, dict]:
    from jobs.serve_benchmark import benchmark_serve, format_serve_benchmark

    with tempfile.TemporaryDirectory(prefix="oneencoder-serve-bench-") as workdir:
        result = benchmark_serve(workdir, cfg.preset, tuple(cfg.levels), cfg.requests, cfg.level_cap_s)
    return format_serve_benchmark(result), result



if __name__ == "__main__":
    sys.exit(main())
