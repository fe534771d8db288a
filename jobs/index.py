"""Index a feature store for search: the model's aligned vectors as Parquet, and ANN segments over them.

    python -m jobs.index --model models/sample --features out/sample --output out/sample-index
    python -m jobs.index --config jobs/configs/index_tiny.yaml
    ray job submit --working-dir . -- python -m jobs.index --config jobs/configs/index_tiny.yaml

A rerun after more shards were embedded projects only those and adds them as a new segment.
"""
from __future__ import annotations

import argparse
import sys

from jobs import registry
from pipeline.config import require_fields
from pipeline.index.config import IndexConfig


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return registry.build_parser(registry.JOBS["index"], parser)


def main(argv: list[str] | None = None) -> int:
    return registry.main("index", argv)


def load(model: type[IndexConfig], args: argparse.Namespace) -> IndexConfig:
    from pipeline.config import config_from_args

    cfg = config_from_args(model, args)
    require_fields(cfg, model="the model artifact folder", features="the feature store folder",
                   output="the index folder")
    from pipeline.artifact import read_artifact

    read_artifact(cfg.model)  # a missing or damaged artifact is named before Ray starts
    return cfg


def run(cfg: IndexConfig, args: argparse.Namespace) -> int:
    from pipeline.index.job import format_summary, run_index
    from pipeline.runtime import init_ray

    init_ray(dashboard=False)
    print(format_summary(run_index(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
