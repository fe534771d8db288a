"""Search as it is served, at corpus scale: a replica's start-up from an index folder against re-projecting the
store, and /v1/search against /v1/embeddings on one server.

    python -m benchmarks.search [--sizes 100000,1000000] [--requests 300] [--report FILE]

For each size it writes a synthetic image feature store (clustered random features at the tiny image encoder's
width, ``shard_rows`` per shard), indexes it with the index job's defaults (exact below 20,000 vectors, an HNSW
graph below 1M, IVF-PQ lists from 1M) and times what a replica does to answer /v1/search when it starts, each in a
fresh process after its imports: open the index folder (``serve --index``, in the Gateway: segments memory-mapped)
or read and project the store through the model (``serve --features``, the SearchIndex deployment), then answer a
first query; with the growth of the process's private memory and of the index file pages mapped into it. Like for
like, each size is also indexed with the kind the defaults did not choose there (HNSW only below 1M: a graph over
1M takes minutes to build). The model is the tiny preset's text and image encoders with an untrained projection
(start-up and latency do not depend on the weights).

Then one server (one replica per deployment, loopback) with the smallest size's index answers ``requests`` text
queries at concurrency 1, alternating /v1/embeddings (the query alone) and /v1/search (the same query embedded and
searched in the Gateway, k 10 over image): p50 / p99 of each and their difference, beside the search's own p50
in-process.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from benchmarks.common import REPORT_HELP, benchmark, cli, finish, split_ints
from pipeline.config import StrictModel

log = logging.getLogger(__name__)


class BenchmarkSearchConfig(StrictModel):
    sizes: list[int] = Field([100_000, 1_000_000], min_length=1, description="Store sizes (image items) indexed "
                             "and started from (a list, or '100000,1000000' on the command line).")
    shard_rows: int = Field(100_000, ge=100, description="Rows per feature shard of the synthetic stores.")
    clusters: int = Field(2000, ge=1, description="Directions the synthetic features gather around.")
    repeats: int = Field(5, ge=1, description="Fresh processes started from each index (the median is reported: "
                         "tens of milliseconds move with the machine's noise).")
    requests: int = Field(300, ge=10, description="Text queries sent to each endpoint (concurrency 1).")
    k: int = Field(10, ge=1, description="Hits asked for.")
    seed: int = Field(0, description="Random seed.")
    report: str | None = Field(None, description=REPORT_HELP)

    @field_validator("sizes", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_ints(value, "100000,1000000")


JOB = benchmark("search", "search as served: replica start-up from an index vs re-projection, /v1/search latency",
                "benchmarks.search:BenchmarkSearchConfig")

_STARTUP = """
import json, os, sys, time
import numpy as np
import faiss, torch
import serving.app  # imported before the clock starts, as a replica's process has them (the Gateway's module)
from serving.config import ServeArgs
from serving.search import Searcher
def memory():  # resident private memory, and file pages mapped into the process (shared page cache)
    d = dict(line.split(":") for line in open("/proc/self/status") if line.startswith(("RssAnon", "RssFile")))
    return {k: int(v.split()[0]) * 1024 for k, v in d.items()}
args, query = json.loads(sys.argv[1]), np.asarray(json.loads(sys.argv[2]), np.float32)
before = memory()
t = time.perf_counter()
searcher = Searcher(ServeArgs(**args))
opened = time.perf_counter()
hits = searcher.search(query, "text", ["image"], 10)["hits"]
done = time.perf_counter()
after = memory()
print(json.dumps({"open_s": opened - t, "query_s": done - opened, "seconds": done - t,
                  "private_mb": (after["RssAnon"] - before["RssAnon"]) / 2**20,
                  "mapped_mb": (after["RssFile"] - before["RssFile"]) / 2**20, "hits": len(hits)}))
"""


def write_store(root: str, model_dir: str, n: int, shard_rows: int, clusters: int, rng: np.random.Generator) -> None:
    """``n`` image feature rows shaped as the model's image encoder writes them, ``shard_rows`` per shard."""
    import pyarrow as pa

    from pipeline.artifact import read_artifact
    from pipeline.store.features import ERROR_SCHEMA, FeatureStore, features_table

    artifact = read_artifact(model_dir)
    record, dim = artifact.encoders["image"], int(artifact.model["in_dims"]["image"])
    store = FeatureStore(root, {})
    store.start_run("image", {"items": n, "encoder": record.name, "tokens": 1, "dtype": "float16"}, record.to_json())
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    for shard, start in enumerate(range(0, n, shard_rows)):
        rows = min(shard_rows, n - start)
        x = centers[rng.integers(clusters, size=rows)] + rng.normal(size=(rows, dim)).astype(np.float32)
        flat = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).ravel()), dim)
        ids = [f"img-{i:09d}" for i in range(start, start + rows)]
        table = features_table(ids, "image", [None] * rows, record.name, flat, 1, dim)
        store.commit_shard("image", shard, table, ERROR_SCHEMA.empty_table(), dim)


def startup(args: dict[str, Any], query: np.ndarray, repeats: int = 1) -> dict[str, Any]:
    """What a replica does to answer /v1/search, from ``args``, in ``repeats`` fresh processes: seconds to open
    (``open_s``: what readiness waits for), to answer a first query (``query_s``) and both (``seconds``), and the
    growth of its private resident memory and of the file pages mapped into it (an index's files, shared with every
    process on the node through the page cache); the median of each over the processes."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _STARTUP, json.dumps(args), json.dumps(query.tolist())],
                             capture_output=True, text=True, check=False)
        if out.returncode:
            raise RuntimeError(f"search start-up failed: {out.stderr[-2000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {**{key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "hits"},
            "hits": min(r["hits"] for r in runs), "runs": repeats}


def _latencies(url: str, texts: list[str], k: int) -> dict[str, Any]:
    import requests

    session = requests.Session()
    times: dict[str, list[float]] = {"embeddings": [], "search": []}
    calls = {"embeddings": ("/v1/embeddings", lambda t: {"model": "oneencoder", "input": t}),
             "search": ("/v1/search", lambda t: {"query": t, "target_modality": ["image"], "k": k})}
    for i, text in enumerate(texts):
        for name in (("embeddings", "search") if i % 2 else ("search", "embeddings")):  # neither always first
            path, body = calls[name]
            t = time.perf_counter()
            r = session.post(url + path, json=body(text), timeout=60)
            elapsed = time.perf_counter() - t
            if r.status_code != 200:
                raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:200]}")
            if i >= 10:  # the first ten of each are warm-up
                times[name].append(elapsed * 1e3)
    out = {name: {"p50_ms": statistics.median(v), "p99_ms": float(np.percentile(v, 99)), "requests": len(v)}
           for name, v in times.items()}
    out["difference_p50_ms"] = out["search"]["p50_ms"] - out["embeddings"]["p50_ms"]
    return out


def run(cfg: BenchmarkSearchConfig, args: object = None) -> int:
    from pipeline.index.config import IndexConfig
    from pipeline.index.job import run_index
    from pipeline.index.segments import VectorIndex
    from pipeline.inference import load_model
    from pipeline.runtime import init_ray
    from benchmarks.serve import write_untrained_artifact

    init_ray()
    rng = np.random.default_rng(cfg.seed)
    result: dict[str, Any] = {"sizes": {}, "k": cfg.k}
    with tempfile.TemporaryDirectory(prefix="oneencoder-search-bench-") as workdir:
        model_dir = write_untrained_artifact(os.path.join(workdir, "model"), "tiny")
        model = load_model(model_dir, encoder_overrides={"torch_threads": 1})
        texts = [f"a photo of item number {i} in the benchmark" for i in range(cfg.requests + 10)]
        queries = model.embed(texts[:200], "text")
        indexes = {}
        for n in sorted(cfg.sizes):
            store, index = os.path.join(workdir, f"store-{n}"), os.path.join(workdir, f"index-{n}")
            t = time.perf_counter()
            write_store(store, model_dir, n, cfg.shard_rows, cfg.clusters, rng)
            written = time.perf_counter() - t
            t = time.perf_counter()
            record = run_index(IndexConfig(model=model_dir, features=store, output=index))
            built = time.perf_counter() - t
            kind = _kind(index)
            print(f"{n:,} vectors: store written in {written:.1f} s, indexed in {built:.1f} s ({kind})", flush=True)
            from_index = startup({"model": model_dir, "index": index}, queries[0], cfg.repeats)
            from_store = startup({"model": model_dir, "features": store}, queries[0])
            print(f"{n:,} vectors: start-up from the index {from_index['seconds']:.2f} s, re-projecting the store "
                  f"{from_store['seconds']:.2f} s", flush=True)
            kinds = {kind: from_index}  # (a store's re-projection is started once: seconds, not milliseconds)
            for other in ("hnsw", "ivf_pq"):  # like for like: each kind at each size, where it is not the default
                if other != kind and (other == "ivf_pq" or n < 1_000_000):  # (a graph over 1M takes ~7 min)
                    forced = os.path.join(workdir, f"index-{n}-{other}")
                    run_index(IndexConfig(model=model_dir, features=store, output=forced, ann={"kind": other}))
                    kinds[other] = startup({"model": model_dir, "index": forced}, queries[0], cfg.repeats)
                    print(f"{n:,} vectors: start-up from an {other} index {kinds[other]['seconds']:.2f} s", flush=True)
            seg = VectorIndex(index)
            times = []
            for q in queries:
                t0 = time.perf_counter()
                seg.search(q, ["image"], cfg.k)
                times.append((time.perf_counter() - t0) * 1e3)
            result["sizes"][str(n)] = {"index_s": built, "segments": len(record["modalities"]["image"]["segments"]),
                                       "kind": kind, "from_index": from_index, "from_store": from_store, "kinds": kinds,
                                       "in_process_p50_ms": statistics.median(times),
                                       "in_process_p99_ms": float(np.percentile(times, 99))}
            indexes[n] = index
        sizes = sorted(cfg.sizes)
        first, last = result["sizes"][str(sizes[0])], result["sizes"][str(sizes[-1])]
        result["startup_ratio"] = {"index": last["from_index"]["seconds"] / first["from_index"]["seconds"],
                                   "index_open": last["from_index"]["open_s"] / first["from_index"]["open_s"],
                                   "store": last["from_store"]["seconds"] / first["from_store"]["seconds"],
                                   **{kind: last["kinds"][kind]["seconds"] / first["kinds"][kind]["seconds"]
                                      for kind in ("hnsw", "ivf_pq")
                                      if kind in first["kinds"] and kind in last["kinds"]}}
        result["http"] = {"size": sizes[0], **_serve(model_dir, indexes[sizes[0]], texts, cfg.k)}
    return finish("search", cfg, result, format_search)


def _serve(model_dir: str, index: str, texts: list[str], k: int) -> dict[str, Any]:
    from ray import serve

    from benchmarks.serve import _held_port
    from serving.app import build_application
    from serving.local import deploy

    one = {"num_replicas": 1, "autoscaling_config": None}
    overrides = {"Gateway": {**one, "ray_actor_options": {"num_cpus": 0.25}},  # which searches the index itself
                 "encoder-text": {**one, "ray_actor_options": {"num_cpus": 0.5}}}
    app = build_application({"model": model_dir, "index": index, "modalities": ["text"], "torch_threads": 1},
                            overrides)
    with _held_port() as held:
        url = deploy(app, {}, host="127.0.0.1", port=held.getsockname()[1])
    try:
        return _latencies(url, texts, k)
    finally:
        serve.shutdown()


def _kind(index: str) -> str:
    """The ann kind of the index's first image segment (what the index job's defaults chose)."""
    with open(os.path.join(index, "segments", "image", "segment-00000", "segment.json"), encoding="utf-8") as fh:
        return json.load(fh)["ann"]["kind"]


def format_search(r: dict[str, Any]) -> str:
    lines = ["| vectors | index job s | default kind | from the index: open + first query s | private / mapped MB | "
             "by kind: open + first query s | re-projecting the store s | private MB | search p50 / p99 ms "
             "in-process |", "|---|---|---|---|---|---|---|---|---|"]
    for n, s in r["sizes"].items():
        by_kind = ", ".join(f"{k} {v['open_s']:.3f} + {v['query_s']:.3f}" for k, v in sorted(s["kinds"].items()))
        i = s["from_index"]
        lines.append(f"| {int(n):,} | {s['index_s']:.0f} | {s['kind']} | {i['open_s']:.3f} + {i['query_s']:.3f} | "
                     f"{i['private_mb']:.0f} / {i['mapped_mb']:.0f} | {by_kind} | {s['from_store']['seconds']:.2f} | "
                     f"{s['from_store']['private_mb']:.0f} | {s['in_process_p50_ms']:.2f} / "
                     f"{s['in_process_p99_ms']:.2f} |")
    ratio = r["startup_ratio"]
    sizes = sorted(r["sizes"], key=int)
    kinds = "".join(f", {k} x{ratio[k]:.2f}" for k in ("hnsw", "ivf_pq") if k in ratio)
    lines.append(f"\nStart-up at {int(sizes[-1]):,} over {int(sizes[0]):,} vectors (median of "
                 f"{r['sizes'][sizes[0]]['from_index']['runs']} processes): opening the default index x"
                 f"{ratio['index_open']:.2f} (target <= 1.2), with its first query x{ratio['index']:.2f}{kinds}; "
                 f"x{ratio['store']:.2f} re-projecting the store")
    h = r["http"]
    lines.append(f"One server, {int(h['size']):,} vectors, concurrency 1: /v1/embeddings p50 "
                 f"{h['embeddings']['p50_ms']:.1f} ms (p99 {h['embeddings']['p99_ms']:.1f}), /v1/search p50 "
                 f"{h['search']['p50_ms']:.1f} ms (p99 {h['search']['p99_ms']:.1f}): "
                 f"{h['difference_p50_ms']:+.1f} ms (target <= 3 ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.search``: exit 2 with one `error:` line for a bad config."""
    return cli(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
