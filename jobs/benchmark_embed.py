"""Benchmark the embed pipeline against its ceiling and a naive loop (paper architectures, random init).

    python -m jobs.benchmark_embed [--images 192] [--batch-size 16] [--preset paper|tiny] [--workdir DIR] [--json FILE]
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from pipeline.benchmarks import benchmark_embed, format_benchmark, print_report
from pipeline.runtime import init_ray, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark_embed", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=192, help="generated images (default 192)")
    p.add_argument("--batch-size", type=int, default=16, help="encoder batch size (default 16)")
    p.add_argument("--preset", choices=["paper", "tiny"], default="paper", help="paper = ViT-B/16 at random init (default)")
    p.add_argument("--workdir", help="scratch folder (default: a new temp folder)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.images < 4 * args.batch_size:
        p.error(f"--images must be at least 4 x --batch-size ({4 * args.batch_size}), got {args.images}")
    setup_logging()
    init_ray()
    result = benchmark_embed(args.workdir or tempfile.mkdtemp(prefix="oneencoder-bench-"), args.images, args.batch_size, args.preset)
    print_report(format_benchmark(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
