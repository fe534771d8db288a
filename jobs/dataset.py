"""`oneencoder dataset NAME --root DIR --split SPLIT --output OUT`: a dataset as it ships → a manifest and its groups
(retrieval) or labels (classification), for `oneencoder embed` and `oneencoder evaluate` (docs/datasets.md).

    python -m jobs.dataset coco --root /data/coco --split test --output out/coco-test
"""
from __future__ import annotations

import argparse
import json
import sys

from jobs import registry
from pipeline.datasets import DatasetConfig


def run(cfg: DatasetConfig, args: argparse.Namespace | None = None) -> int:
    from pipeline.datasets import write_dataset

    summary = write_dataset(cfg)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return registry.main("dataset", argv)


if __name__ == "__main__":
    sys.exit(main())
