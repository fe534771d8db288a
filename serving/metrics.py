"""Prometheus metrics of the server (the jobs' are in ``pipeline.metrics``).

Each process records through ``ray.util.metrics`` (``ray.serve.metrics`` in replicas, which adds the deployment,
replica and application tags); each node's Ray metrics agent exports them as ``ray_oneencoder_*`` beside Ray's own
(``ray_serve_*``, ``ray_data_*``...) on its metrics port, where a Prometheus scraping a Ray cluster finds them. The
Gateway also answers ``GET /metrics`` on the API's own port (one port for a user to scrape): the ``ray_oneencoder_*``
and ``ray_serve_*`` families read from every live node's agent and merged. The agent exports every
``metrics_report_interval_ms`` (10 s by default), so a count shows up within about that long.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from pipeline.metrics import Metrics, agent_addresses, merge_families, scrape

PASSED_THROUGH = ("ray_oneencoder_", "ray_serve_")  # the families /metrics serves
ROUTES = ("/v1/embeddings", "/v1/search", "/v1/models", "/v1/media", "/health", "/metrics", "/openapi.json", "/docs",
          "/", "/search.js", "/search.css")

# name → (kind, description, tags); what the server records (and what docs/operations.md and the Grafana dashboard
# query, tested against this table)
SERVER = {
    "oneencoder_requests": ("counter", "HTTP requests answered, by route and status code.", ("route", "status")),
    "oneencoder_request_seconds": ("histogram", "Time to answer an HTTP request, by route.", ("route",)),
    "oneencoder_errors": ("counter", "Requests answered with an error, by route, status, error code and the stage "
                          "that refused it (auth, parse, request, embed, search, queue, internal).",
                          ("route", "status", "code", "stage")),
    "oneencoder_rejected": ("counter", "Requests refused because a deployment's queue was full (503), by deployment.",
                            ("deployment",)),
    "oneencoder_search_seconds": ("histogram", "Time to search the index for one query (after embedding it).", ()),
    "oneencoder_items": ("counter", "Inputs embedded by an encoder replica, by modality and model.", ("modality", "model")),
    "oneencoder_item_errors": ("counter", "Inputs that gave no vector, by modality, model and stage (read, decode, "
                               "encode).", ("modality", "model", "stage")),
    "oneencoder_batch_size": ("histogram", "Inputs per batch an encoder replica ran, by modality.", ("modality", "model")),
    "oneencoder_decode_seconds": ("histogram", "Time to decode one batch's media (ffmpeg, Pillow), by modality.",
                                  ("modality", "model")),
    "oneencoder_encode_seconds": ("histogram", "Time to run one batch through the frozen encoder, adapter and "
                                  "projection, by modality.", ("modality", "model")),
}


_server: Metrics | None = None


def server_metrics() -> Metrics:
    """This replica's server metrics."""
    global _server
    if _server is None:
        _server = Metrics(SERVER, "ray.serve.metrics")
    return _server


def route_of(path: str) -> str:
    """A request path as a metric label: one of ROUTES or ``other`` (a path sent by a client never becomes a label)."""
    return path if path in ROUTES else "other"


class RequestMetrics:
    """ASGI middleware counting each HTTP request by route and status and timing it (``oneencoder_requests``,
    ``oneencoder_request_seconds``)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = route_of(scope.get("path", ""))
            metrics = server_metrics()
            metrics.inc("oneencoder_requests", route=route, status=status[0])
            metrics.observe("oneencoder_request_seconds", time.perf_counter() - started, route=route)


# --- /metrics: the oneencoder and serve families of every node's agent, on the API port --------------------------
async def exposition() -> tuple[str, list[str]]:
    """(the merged families of every live node, the agents that did not answer)."""
    addresses = await asyncio.to_thread(agent_addresses)
    answers = await asyncio.gather(*(asyncio.to_thread(scrape, a) for a in addresses), return_exceptions=True)
    texts = [a for a in answers if isinstance(a, str)]
    failed = [addr for addr, a in zip(addresses, answers) if not isinstance(a, str)]
    return await asyncio.to_thread(merge_families, texts, PASSED_THROUGH), failed
