"""Serve a model artifact on Ray Serve: OpenAI-compatible /v1/embeddings, /v1/search, /v1/models, /health.

    python -m jobs.serve --model models/sample [--features out/sample | --index out/sample-index] [--config serving/serve_config.yaml] [--host --port]
    serve deploy serving/serve_config.yaml -a http://HEAD:8265     (on a cluster; set args.model there)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from jobs import registry
from pipeline.config import ConfigError
from serving.config import ServeArgs

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving", "serve_config.yaml")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return registry.build_parser(registry.JOBS["serve"], parser)


def add_flags(p: argparse.ArgumentParser) -> None:
    """--config here is a whole Ray Serve config (its applications[0].args are the ServeArgs)."""
    p.set_defaults(config=DEFAULT_CONFIG)
    p.add_argument("--host", help="HTTP host (default: the config's http_options.host)")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's http_options.port)")


def load(model: type[ServeArgs], args: argparse.Namespace) -> ServeArgs:
    """The Serve config's args with the flags over them, validated before Ray starts."""
    from serving.config import load_serve_config, parse_args

    if args.port is not None and not 0 < args.port < 65536:
        raise ConfigError(f"--port = {args.port}: expected 1-65535")
    flags = {k: v for k, v in (("model", args.model), ("features", args.features),
                                               ("index", args.index)) if v is not None}
    return parse_args({**load_serve_config(args.config)["args"], **flags}, args.config)


def main(argv: list[str] | None = None) -> int:
    return registry.main("serve", argv)


def run(cfg: ServeArgs, args: argparse.Namespace) -> int:
    from ray import serve

    from pipeline.runtime import init_ray
    from serving.local import deploy, prepare

    try:
        app, http = prepare(args.config, model=cfg.model, features=cfg.features, index=cfg.index)
    except ValueError as e:  # e.g. a deployment the model has no modality for, or a store of other encoders
        raise ConfigError(f"{e} (Serve config: {args.config})") from None
    init_ray()
    url = deploy(app, http, host=args.host, port=args.port)
    print(f"serving {url}  (Ctrl-C stops)\n"
          f"  curl {url}/health\n"
          f"  curl {url}/v1/embeddings -H 'Content-Type: application/json' "
          "-d '{\"model\": \"oneencoder\", \"input\": [\"a red circle\"]}'", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
