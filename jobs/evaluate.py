"""Evaluate a model artifact on a feature store: recall@1/5/10, median rank, zero-shot, modality gap, plots.

    python -m jobs.evaluate --model models/sample --features out/sample [--labels labels.yaml] [--groups groups.json] [--output DIR]
        [--baseline]
    python -m jobs.evaluate --config jobs/configs/evaluate_tiny.yaml
"""
from __future__ import annotations

import argparse
import sys

from jobs import registry
from pipeline.config import config_from_args, require_fields
from pipeline.eval.report import EvaluateConfig


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return registry.build_parser(registry.JOBS["evaluate"], parser)


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help="S3-compatible endpoint of the feature store (default: AWS environment)")


def load(model: type[EvaluateConfig], args: argparse.Namespace) -> EvaluateConfig:
    cfg = config_from_args(model, args)
    if args.endpoint_url:
        cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"endpoint_url": args.endpoint_url})})
    require_fields(cfg, model="the model artifact folder", features="the feature store folder")
    return cfg


def main(argv: list[str] | None = None) -> int:
    return registry.main("evaluate", argv)


def run(cfg: EvaluateConfig, args: argparse.Namespace) -> int:
    from pipeline.eval.report import evaluate, format_report
    from pipeline.store.sources import storage_options

    report = evaluate(cfg.model, cfg.features, cfg.labels, cfg.output, storage_options(cfg.storage),
                      baseline_epochs=cfg.baseline_epochs if cfg.baseline else None, groups_path=cfg.groups,
                      benchmark=cfg.benchmark, probe_features=cfg.probe_features, probe_labels=cfg.probe_labels)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
