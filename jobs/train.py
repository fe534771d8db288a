"""Train the projection progressively on a feature store (Ray Train) and write a model artifact.

    python -m jobs.train --features out/sample --output models/sample [--stages image:text,audio:text,video:text] [--epochs N]
    python -m jobs.train --from MODEL --features STORE --stages depth:image --output MODEL2   (add a modality)
    python -m jobs.train --tune [--trials N] ...   (= oneencoder tune: search each stage's settings first, Ray Tune)
    ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/train_tiny.yaml
"""
from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError
from pipeline.runtime import init_ray, setup_logging
from pipeline.train_config import load_train_config


def build_parser(parser: argparse.ArgumentParser | None = None, tune: bool = False) -> argparse.ArgumentParser:
    """The train command's flags; with ``tune`` (``oneencoder tune``) the search is always on."""
    p = parser or argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.splitlines()[0])
    p.add_argument("--features", help="feature store folder written by the embed job")
    p.add_argument("--output", help="model artifact folder")
    p.add_argument("--stages", help="curriculum, e.g. image:text,audio:text,video:text (each new:anchor)")
    p.add_argument("--from", dest="from_model", metavar="MODEL",
                   help="grow this model artifact: its modalities stay frozen (their vectors unchanged) and --stages "
                        "add new ones, e.g. --from models/v1 --stages depth:image")
    p.add_argument("--epochs", type=int, help="epochs of every stage (default: automatic, each stage's `steps` budget)")
    p.add_argument("--config", help="YAML config; flags override its fields")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    if tune:
        p.set_defaults(tune=True)
    else:
        p.add_argument("--tune", action="store_true", help="search each stage's lr, step budget, weight decay and temperature "
                                                           "with Ray Tune (ASHA) first, as `oneencoder tune` does")
    p.add_argument("--trials", type=int, help="trials per stage of the search (default: the config's tune.trials, else 8)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from pipeline.train import run_train

    setup_logging(args.verbose)
    try:
        if args.epochs is not None and args.epochs < 1:
            raise ConfigError(f"--epochs = {args.epochs}: expected at least 1")
        if args.trials is not None and args.trials < 1:
            raise ConfigError(f"--trials = {args.trials}: expected at least 1")
        cfg = load_train_config(args.config, epochs=args.epochs, features=args.features, output=args.output,
                                stages=args.stages, from_model=args.from_model, search=args.tune, trials=args.trials)
        init_ray()
        result = run_train(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
