"""Evaluate a model artifact on a feature store: recall@1/5/10, median rank, zero-shot, modality gap, plots.

    python -m jobs.evaluate --model models/sample --features out/sample [--labels labels.yaml] [--output DIR] [--baseline]
    python -m jobs.evaluate --config jobs/configs/evaluate_tiny.yaml
"""
from __future__ import annotations

import argparse
import sys

from pipeline.config import config_from_args, require_fields
from pipeline.job_configs import EvaluateConfig
from pipeline.runtime import setup_logging


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model artifact folder (from the train job)")
    p.add_argument("--features", help="feature store folder (local or s3://)")
    p.add_argument("--labels", help="YAML/JSON with labels (id -> class) and templates, for zero-shot classification")
    p.add_argument("--output", help="report folder (default MODEL/eval)")
    p.add_argument("--baseline", action="store_true", default=None,
                   help="also train a jointly trained pairwise baseline on the same store and compare (sign test)")
    p.add_argument("--baseline-epochs", type=int, help="epochs of each baseline pair (default 100)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint of the feature store (default: AWS environment)")
    p.add_argument("--config", help="YAML config; flags override its fields")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluate import evaluate, format_report
    from pipeline.sources import storage_options

    setup_logging(args.verbose)
    try:
        cfg = config_from_args(EvaluateConfig, args)
        if args.endpoint_url:
            cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"endpoint_url": args.endpoint_url})})
        require_fields(cfg, model="the model artifact folder", features="the feature store folder")
        report = evaluate(cfg.model, cfg.features, cfg.labels, cfg.output, storage_options(cfg.storage),
                          baseline_epochs=cfg.baseline_epochs if cfg.baseline else None)
    except (ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
