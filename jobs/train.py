"""Train the projection progressively on a feature store (Ray Train) and write a model artifact.

    python -m jobs.train --features out/sample --output models/sample [--stages image:text,audio:text,video:text] [--epochs N]
    python -m jobs.train --from MODEL --features STORE --stages depth:image --output MODEL2   (add a modality)
    python -m jobs.train --tune [--trials N] ...   (= oneencoder tune: search each stage's settings first, Ray Tune)
    ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/train_tiny.yaml
"""
from __future__ import annotations

import argparse
import sys

from jobs import registry
from pipeline.config import ConfigError
from pipeline.train.config import TrainConfig, load_train_config


def build_parser(parser: argparse.ArgumentParser | None = None, tune: bool = False) -> argparse.ArgumentParser:
    """The train command's flags; with ``tune`` (``oneencoder tune``) the search is always on."""
    return registry.build_parser(registry.JOBS["tune" if tune else "train"], parser)


def add_flags(p: argparse.ArgumentParser) -> None:
    """Flags that are not TrainConfig fields: they change every stage, or switch the search on."""
    p.add_argument("--epochs", type=int, help="epochs of every stage (default: automatic, each stage's `steps` budget)")
    p.add_argument("--tune", action="store_true", help="search each stage's lr, step budget, weight decay and temperature "
                                                       "with Ray Tune (ASHA) first, as `oneencoder tune` does")
    p.add_argument("--trials", type=int, help="trials per stage of the search (default: the config's tune.trials, else 8)")


def load(model: type[TrainConfig], args: argparse.Namespace) -> TrainConfig:
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs = {args.epochs}: expected at least 1")
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials = {args.trials}: expected at least 1")
    flags = {name: getattr(args, name) for name in model.model_fields if name != "tune" and hasattr(args, name)}
    return load_train_config(args.config, epochs=args.epochs, search=args.tune, trials=args.trials, **flags)


def main(argv: list[str] | None = None) -> int:
    return registry.main("train", argv)


def run(cfg: TrainConfig, args: argparse.Namespace) -> int:
    from pipeline.runtime import init_ray
    from pipeline.train.job import run_train

    init_ray()
    result = run_train(cfg)
    for s in result["stages"]:
        best = s["best"]
        print(f"stage {s['stage']}: {s['epochs_run']} epochs, best epoch {s['best_epoch']}, "
              f"val loss {best['val/loss']:.4f}, val recall@1 {best['val/recall@1']:.3f}, temperature {best['temperature']:.3f}, {s['seconds']} s"
              + (" (validation loss still falling: more epochs would likely help)" if s.get("still_improving") else ""))
    for search in (result.get("tune") or {}).get("stages", []):
        best = search["best"]
        print(f"stage {search['stage']}: best of {len(search['trials'])} trials: lr {best['lr']:.3g}, steps {best['steps']}, "
              f"weight decay {best['weight_decay']:.3g}, temperature {best['temperature']:.3g} "
              f"(val loss {search['best_val_loss']:.4f})")
    print(f"model artifact: {result['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
