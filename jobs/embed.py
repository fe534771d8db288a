"""Embed a media manifest into a Parquet feature store.

    python -m jobs.embed --input data/manifest.jsonl --output out/ [--preset tiny|paper] [--config FILE]
    ray job submit --working-dir . -- python -m jobs.embed --config jobs/configs/embed_tiny.yaml

Flags are the config's fields (jobs/registry.py); `oneencoder config-reference embed` lists them all.
"""
from __future__ import annotations

import argparse
import sys

from jobs import registry
from pipeline.embed.config import EmbedConfig, require_paths


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return registry.build_parser(registry.JOBS["embed"], parser)


def main(argv: list[str] | None = None) -> int:
    return registry.main("embed", argv)


def run(cfg: EmbedConfig, args: argparse.Namespace) -> int:
    """Embed, print the summary; exit 1 when some shard is still missing (a rerun resumes), or when the pipeline
    stalled for ``no_progress_timeout_s`` (PipelineStalledError: one `error:` line saying what to do, from
    ``registry.execute``)."""
    from pipeline.embed.job import run_embed
    from pipeline.embed.resume import format_summary
    from pipeline.runtime import init_ray

    require_paths(cfg)
    init_ray(dashboard=False)
    summary = run_embed(cfg)
    print(format_summary(summary))
    return 0 if all(m["complete"] for m in summary["modalities"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
