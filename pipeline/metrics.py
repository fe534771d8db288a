"""Prometheus metrics recorded through Ray: the ``Metrics`` helper, and what the embed, index and train jobs count.

Each process records through ``ray.util.metrics`` (``ray.serve.metrics`` in Serve replicas); each node's Ray metrics
agent exports them as ``ray_<name>`` (counters with ``_total``) on its metrics port, every
``metrics_report_interval_ms`` (10 s by default). The server's are in ``serving.metrics``.
"""
from __future__ import annotations

import time
import urllib.request
from typing import Any

LATENCY_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
BOUNDARIES = {"oneencoder_batch_size": BATCH_SIZES}

# name → (kind, description, tags)
JOBS = {
    "oneencoder_job_rows": ("counter", "Rows a job wrote (embed: feature rows; index: vectors; train: examples seen), "
                            "by job and modality.", ("job", "modality")),
    "oneencoder_job_errors": ("counter", "Inputs a job recorded as error rows, by job, modality and stage (read, "
                              "decode, encode).", ("job", "modality", "stage")),
}


class Metrics:
    """The metrics of ``table``, created in this process on first use (Ray registers them with its agent)."""

    def __init__(self, table: dict[str, tuple[str, str, tuple[str, ...]]], api: str = "ray.util.metrics"):
        self.table, self.api, self._made = table, api, {}  # api: ray.serve.metrics in Serve replicas (its tags)

    def _get(self, name: str) -> Any:
        made = self._made.get(name)
        if made is None:
            import importlib

            api = importlib.import_module(self.api)
            kind, description, tags = self.table[name]
            made = (api.Counter(name, description=description, tag_keys=tags) if kind == "counter" else
                    api.Histogram(name, description=description, boundaries=BOUNDARIES.get(name, LATENCY_S),
                                  tag_keys=tags))
            self._made[name] = made
        return made

    def inc(self, name: str, value: float = 1.0, **tags: Any) -> None:
        if value and _on_ray():
            self._get(name).inc(value, tags={k: str(v) for k, v in tags.items()})

    def observe(self, name: str, value: float, **tags: Any) -> None:
        if _on_ray():
            self._get(name).observe(value, tags={k: str(v) for k, v in tags.items()})


def _on_ray() -> bool:
    """Whether this process is part of a Ray instance (outside one, e.g. a local `fit_stage`, nothing is recorded)."""
    import ray

    return ray.is_initialized()


_jobs: Metrics | None = None


def job_metrics() -> Metrics:
    """This worker's job metrics (embed, index and train workers)."""
    global _jobs
    if _jobs is None:
        _jobs = Metrics(JOBS)
    return _jobs


def count_rows(job: str, modality: str, valid: Any, stages: Any = None) -> None:
    """A batch's rows in the job metrics: ``valid`` (bool per row) counted as rows, the others as errors by their
    ``stages``."""
    import collections

    import numpy as np

    valid = np.asarray(valid, bool)
    metrics = job_metrics()
    metrics.inc("oneencoder_job_rows", int(valid.sum()), job=job, modality=modality)
    if stages is not None and not valid.all():
        for stage, n in collections.Counter(np.asarray(stages, object)[~valid].tolist()).items():
            metrics.inc("oneencoder_job_errors", n, job=job, modality=modality, stage=stage)


# --- reading the agents' exports (the server's /metrics, tests) -------------------------------------------------
NODES_KEPT_S = 30.0   # how long the list of nodes' metrics addresses is reused
SCRAPE_TIMEOUT_S = 3.0
_nodes: tuple[float, list[str]] = (0.0, [])


def agent_addresses() -> list[str]:
    """host:port of every live node's metrics agent (kept NODES_KEPT_S)."""
    global _nodes
    if time.monotonic() - _nodes[0] > NODES_KEPT_S:
        import ray

        found = [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes()
                 if n.get("Alive") and n.get("MetricsExportPort")]
        _nodes = (time.monotonic(), found)
    return _nodes[1]


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=SCRAPE_TIMEOUT_S) as response:
        return response.read().decode("utf-8", "replace")


def merge_families(texts: list[str], prefixes: tuple[str, ...]) -> str:
    """Prometheus text exposition of several agents → one, keeping the families whose names start with ``prefixes``;
    a family's HELP and TYPE once, then its samples from every agent (their NodeAddress tags tell them apart)."""
    families: dict[str, dict[str, Any]] = {}
    for text in texts:
        current = None
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                current = families.setdefault(name, {"help": None, "type": None, "samples": []}) \
                    if name.startswith(prefixes) else None
                key = "help" if line.startswith("# HELP ") else "type"
                if current is not None and current[key] is None:
                    current[key] = line
            elif line and not line.startswith("#") and current is not None:
                current["samples"].append(line)
    out = []
    for family in families.values():
        out += [line for line in (family["help"], family["type"]) if line] + family["samples"]
    return "\n".join(out) + "\n" if out else ""
