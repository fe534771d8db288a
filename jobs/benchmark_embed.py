"""Benchmark the embed pipeline against its ceiling and a naive loop (paper architectures, random init).

    python -m jobs.benchmark_embed [--images 192] [--batch-size 16] [--preset paper|tiny] [--workdir DIR] [--report FILE]
    python -m jobs.benchmark_embed --config jobs/configs/benchmark_embed_paper.yaml
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from pipeline.benchmarks import benchmark_embed, benchmark_main, format_benchmark
from pipeline.job_configs import BenchmarkEmbedConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark_embed", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, help="generated images (default 192)")
    p.add_argument("--batch-size", type=int, help="encoder batch size (default 16)")
    p.add_argument("--preset", choices=["paper", "tiny"], help="paper = ViT-B/16 at random init (default)")
    p.add_argument("--workdir", help="scratch folder (default: a new temp folder)")
    p.add_argument("--report", help="also write the figures as JSON to this file")
    p.add_argument("--config", help="YAML config; flags override its fields")
    return p


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(build_parser(), BenchmarkEmbedConfig, argv, _measure)


def _measure(cfg: BenchmarkEmbedConfig) -> tuple[str, dict]:
    result = benchmark_embed(cfg.workdir or tempfile.mkdtemp(prefix="oneencoder-bench-"), cfg.images, cfg.batch_size, cfg.preset)
    return format_benchmark(result), result


if __name__ == "__main__":
    sys.exit(main())
