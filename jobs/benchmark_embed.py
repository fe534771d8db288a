"""Benchmark the embed pipeline against its ceiling and a naive loop (paper architectures, random init).

    python -m jobs.benchmark_embed [--images 192] [--batch-size 16] [--preset paper|tiny] [--workdir DIR] [--trace-cpu] [--report FILE]
    python -m jobs.benchmark_embed --config jobs/configs/benchmark_embed_paper.yaml
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from jobs import registry
from jobs.benchmarks import BenchmarkEmbedConfig, benchmark_embed, format_benchmark, report_figures


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return registry.build_parser(registry.JOBS["benchmark-embed"], parser)


def main(argv: list[str] | None = None) -> int:
    return registry.main("benchmark-embed", argv)


def run(cfg: BenchmarkEmbedConfig, args: argparse.Namespace) -> int:
    from pipeline.runtime import init_ray

    init_ray()
    return report_figures(*_measure(cfg), cfg.report)


def _measure(cfg: BenchmarkEmbedConfig) -> tuple[str, dict]:
    result = benchmark_embed(cfg.workdir or tempfile.mkdtemp(prefix="oneencoder-bench-"), cfg.images, cfg.batch_size, cfg.preset,
                             cfg.trace_cpu)
    return format_benchmark(result), result



if __name__ == "__main__":
    sys.exit(main())
