"""Serve a model artifact on Ray Serve: OpenAI-compatible /v1/embeddings, /v1/search, /v1/models, /health.

    python -m jobs.serve --model models/sample [--features out/sample] [--config serving/serve_config.yaml] [--host --port]
    serve deploy serving/serve_config.yaml -a http://HEAD:8265     (on a cluster; set args.model there)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from pipeline.config import ConfigError
from pipeline.runtime import init_ray, setup_logging

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving", "serve_config.yaml")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m jobs.serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model artifact folder written by `oneencoder train`")
    p.add_argument("--features", help="feature store to index for /v1/search (default: none, search off)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="Ray Serve config YAML (default: serving/serve_config.yaml)")
    p.add_argument("--host", help="HTTP host (default: the config's http_options.host)")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's http_options.port)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from ray import serve

    from serving.local import deploy, prepare

    setup_logging(args.verbose)
    try:
        if args.port is not None and not 0 < args.port < 65536:
            raise ConfigError(f"--port = {args.port}: expected 1-65535")
        app, http = prepare(args.config, model=args.model, features=args.features)  # validated before Ray starts
        init_ray()
        url = deploy(app, http, host=args.host, port=args.port)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
