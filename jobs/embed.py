"""Embed a media manifest into a Parquet feature store.

    python -m jobs.embed --input data/manifest.jsonl --output out/ [--preset tiny|paper] [--config FILE]
    ray job submit --working-dir . -- python -m jobs.embed --config jobs/configs/embed_tiny.yaml
"""
from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, load_embed_config, require_paths
from pipeline.embed import ResumeMismatchError, format_summary, run_embed
from pipeline.runtime import init_ray, setup_logging
from pipeline.sources import ManifestError


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m jobs.embed", description=__doc__.splitlines()[0])
    p.add_argument("--input", help="manifest URI (JSONL, CSV or Parquet; local or s3://)")
    p.add_argument("--output", help="output folder (local or s3://)")
    p.add_argument("--preset", choices=["tiny", "paper"], help="encoder preset (default tiny)")
    p.add_argument("--random-init", action="store_true", default=None, help="build the preset's architectures with random weights, offline")
    p.add_argument("--config", help="YAML config; flags override its fields (see `oneencoder config-reference`)")
    p.add_argument("--modalities", help="comma-separated subset, e.g. image,text (default: all in the manifest)")
    p.add_argument("--overwrite", action="store_true", default=None, help="delete earlier output of these modalities and start over")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    try:
        cfg = load_embed_config(args.config, input=args.input, output=args.output, preset=args.preset,
                                random_init=args.random_init, modalities=args.modalities, overwrite=args.overwrite)
        require_paths(cfg)
        init_ray()
        summary = run_embed(cfg)
    except (ConfigError, ManifestError, ResumeMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0 if all(m["complete"] for m in summary["modalities"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
