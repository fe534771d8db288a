"""Benchmark the Ray Serve application: req/s and p50/p99 at several concurrencies, batching on vs off,
and Serve's overhead over the same model in-process (loopback only, bounded in count and time).

    python -m jobs.benchmark_serve [--preset paper|tiny] [--requests 96] [--levels 1,8,32] [--json FILE]
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from pipeline.benchmarks import print_report
from pipeline.runtime import init_ray, setup_logging


def main(argv: list[str] | None = None) -> int:
    from serving.benchmark import benchmark_serve, format_serve_benchmark

    p = argparse.ArgumentParser(prog="python -m jobs.benchmark_serve", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["paper", "tiny"], default="paper", help="paper = ViT-B/16 + BERT-base at random init (default)")
    p.add_argument("--requests", type=int, default=96, help="most requests per concurrency level (default 96)")
    p.add_argument("--levels", default="1,8,32", help="concurrency levels (default 1,8,32)")
    p.add_argument("--level-cap-s", type=float, default=30.0, help="time cap per level in seconds (default 30)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    try:
        levels = tuple(sorted({int(x) for x in args.levels.split(",") if x.strip()}))
    except ValueError:
        p.error(f"--levels {args.levels!r}: expected comma-separated integers, e.g. 1,8,32")
    if not levels or levels[0] < 1 or args.requests < max(levels):
        p.error("need levels >= 1 and --requests >= the largest level")
    setup_logging()
    init_ray()
    with tempfile.TemporaryDirectory(prefix="oneencoder-serve-bench-") as workdir:
        result = benchmark_serve(workdir, args.preset, levels, args.requests, args.level_cap_s)
    print_report(format_serve_benchmark(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
