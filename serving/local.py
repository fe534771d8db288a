"""Run the serving application on the current Ray instance (what ``oneencoder serve`` does)."""
from __future__ import annotations

import logging
from typing import Any

from serving.config import APP_NAME, load_serve_config

log = logging.getLogger("serving")


def prepare(config_path: str | None, **args: Any) -> tuple[Any, dict[str, Any]]:
    """(Serve application, http options) from a Serve config YAML plus ``args`` overrides (None = keep)."""
    from serving.app import build_application

    app_cfg = load_serve_config(config_path) if config_path else {"args": {}, "deployments": [], "http_options": {}}
    merged = {**app_cfg["args"], **{k: v for k, v in args.items() if v is not None}}
    overrides = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app_cfg.get("deployments") or []}
    return build_application(merged, overrides), app_cfg["http_options"]


def deploy(app: Any, http: dict[str, Any], host: str | None = None, port: int | None = None,
           wait_s: float = 600) -> str:
    """Start Serve's HTTP proxy (host/port from the flags, else the YAML), deploy, wait for /health; return the URL."""
    from ray import serve

    from serving.app import wait_until_ready

    host = host or http.get("host") or "127.0.0.1"
    port = int(port or http.get("port") or 8000)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    wait_until_ready(url, wait_s)
    return url
