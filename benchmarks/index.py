"""Nearest-neighbour search at corpus scale: faiss (the index job's) against usearch, both against exact search.

    python -m benchmarks.index [--vectors 1000000] [--dim 256] [--queries 1000] [--report FILE]

Synthetic unit vectors shaped like embeddings (``clusters`` directions, each item one of them plus noise; the
queries drawn the same way) stand in for a corpus. The ground truth is exact search (a matrix product). For each
library it builds an HNSW graph with the same parameters (``connectivity``, ``expansion_add``, on every CPU),
then raises the search width ef until recall@k against the ground truth reaches ``recall_target``, and at that
ef times single queries (p50 / p99, one thread: a request's latency). The index job's compact graphs (int8 and
binary codes) and its IVF-PQ segments (``ann.kind ivf_pq``: about 4·√N lists, ``ivf_pq_bytes`` of codes a vector,
32 lists visited, memory-mapped), both through its own segment code, order their candidates only
approximately: for them the number of candidates rescored from the float vectors (``rescore``·k) is raised instead
until the target, which is what ``ann.rescore`` should be at this size. It also reports bytes per vector
(the serialised index, or compact graph, over the vector count), exact search's own p50 over the same vectors,
the time to open a segment folder as ``oneencoder serve --index`` does (memory-mapped) at a tenth of the vectors
and at all of them, and what a rerun that adds a tenth more costs as a second segment against appending to the
graph.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from benchmarks.common import REPORT_HELP, benchmark, cli, finish
from pipeline.config import StrictModel

EFS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
RESCORES = (1, 2, 4, 8, 16, 32, 64, 128)  # candidates rescored, as a multiple of k (compact codes, IVF-PQ)


class BenchmarkIndexConfig(StrictModel):
    vectors: int = Field(1_000_000, ge=1000, description="Vectors indexed.")
    dim: int = Field(256, ge=8, description="Their width.")
    queries: int = Field(1000, ge=10, description="Queries timed and scored (recall against exact search).")
    k: int = Field(10, ge=1, description="Neighbours asked for (recall@k).")
    clusters: int = Field(2000, ge=1, description="Directions the synthetic vectors gather around.")
    noise: float = Field(1.0, gt=0, description="Spread around each direction (relative to the direction's length).")
    connectivity: int = Field(16, ge=2, description="HNSW M of both libraries (the index job's default below 1M).")
    expansion_add: int = Field(128, ge=8, description="efConstruction of both libraries (the index job's default).")
    recall_target: float = Field(0.95, gt=0, le=1, description="Recall@k each library's ef is raised to reach.")
    libraries: list[str] = Field(["faiss", "usearch"], min_length=1, description="Libraries compared (faiss, the "
                                 "index job's, always runs: the segment timings use its graph).")
    precisions: list[str] = Field(["int8", "binary"], description="Compact graphs of the index job (ann.precision) "
                                  "also measured, each with its default rescoring; [] = none.")
    ivf_pq_bytes: int = Field(32, ge=0, description="Also measure the index job's IVF-PQ segments with codes of "
                              "this many bytes a vector (rescored as the compact graphs are); 0 = not.")
    seed: int = Field(0, description="Random seed.")
    report: str | None = Field(None, description=REPORT_HELP)

    @field_validator("libraries", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and "faiss" not in value:
            value = ["faiss", *value]
        unknown = [v for v in value if v not in LIBRARIES] if isinstance(value, list) else []
        if unknown:
            raise ValueError(f"{', '.join(map(str, unknown))}: expected some of {', '.join(LIBRARIES)}")
        return value

    @field_validator("precisions", mode="before")
    @classmethod
    def _precisions(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in value if v not in ("int8", "binary")] if isinstance(value, list) else []
        if bad:
            raise ValueError(f"{', '.join(map(str, bad))}: expected some of int8, binary")
        return value


JOB = benchmark("index", "nearest-neighbour search: faiss vs usearch HNSW vs exact, build time, recall, latency",
                "benchmarks.index:BenchmarkIndexConfig")


def synthetic(n: int, dim: int, clusters: int, noise: float, rng: np.random.Generator,
              centers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``clusters`` random directions (returned too, to draw queries from)."""
    if centers is None:
        centers = rng.standard_normal((clusters, dim)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        x = centers[rng.integers(0, len(centers), stop - start)]
        x = x + rng.standard_normal(x.shape).astype(np.float32) * (noise / np.sqrt(dim))
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centers


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The true top ``k`` rows per query (matrix products in blocks)."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for start in range(0, len(vectors), 200_000):
        s = queries @ vectors[start:start + 200_000].T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        cand_i = np.concatenate([best_i, top + start], 1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def latencies(search, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p99 in ms of ``search(q)`` one query at a time."""
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


class Usearch:
    name = "usearch"

    def __init__(self, dim: int, m: int, ef_add: int):
        from usearch.index import Index

        self.index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=m, expansion_add=ef_add)

    def build(self, vectors: np.ndarray, threads: int) -> None:
        self.index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=threads)

    def set_ef(self, ef: int) -> None:
        self.index.expansion_search = ef

    def batch(self, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
        return self.index.search(queries, k, threads=threads).keys.astype(np.int64)

    def one(self, k: int):
        return lambda q: self.index.search(q, k, threads=1)

    def size(self) -> int:
        return len(self.index.save())


class Faiss:
    name = "faiss"

    def __init__(self, dim: int, m: int, ef_add: int):
        import faiss

        self.faiss = faiss
        self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_add

    def build(self, vectors: np.ndarray, threads: int) -> None:
        self.faiss.omp_set_num_threads(threads)
        self.index.add(vectors)

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def batch(self, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
        self.faiss.omp_set_num_threads(threads)
        return self.index.search(queries, k)[1]

    def one(self, k: int):
        self.faiss.omp_set_num_threads(1)
        return lambda q: self.index.search(q[None], k)

    def serialized(self) -> bytes:
        return self.faiss.serialize_index(self.index).tobytes()

    def size(self) -> int:
        return len(self.serialized())


class JobSegment:
    """The index job's segment with an int8 or binary graph (``ann.precision``) or IVF-PQ lists (``ann.kind ivf_pq``):
    built by ``build_ann`` into a folder, opened as a server opens it (memory-mapped), searched through
    ``Segment.search`` (candidates rescored from the memory-mapped float vectors)."""

    def __init__(self, params: dict[str, Any], name: str):
        self.params, self.name = params, name
        # reported beside the rescoring, which is the knob raised: a graph's width stays at the float graph's
        # default ef, IVF-PQ's lists visited at the job's probes
        self.ef = params.get("probes", 64)
        self.folder = tempfile.TemporaryDirectory()

    @classmethod
    def graph(cls, m: int, ef_add: int, precision: str) -> "JobSegment":
        from pipeline.index.config import RESCORE

        return cls({"kind": "hnsw", "connectivity": m, "expansion_add": ef_add, "expansion_search": 64,
                    "precision": precision, "rescore": RESCORE[precision]}, f"faiss {precision} HNSW, rescored")

    @classmethod
    def ivf_pq(cls, n: int, dim: int, code_bytes: int) -> "JobSegment":
        """IVF-PQ with the index job's parameters for ``n`` vectors (``AnnConfig.chosen``: about 4·√N lists, 32
        visited), ``code_bytes`` a vector."""
        from pipeline.index.config import AnnConfig

        params = AnnConfig(kind="ivf_pq", code_bytes=code_bytes).chosen(n, dim)
        return cls(params, f"faiss IVF{params['lists']},PQ{params['code_bytes']} (index job), rescored")

    def build(self, vectors: np.ndarray, threads: int) -> None:
        import pyarrow as pa

        from pipeline.index.segments import ANN_FILES, Segment, arrow_file_bytes, build_ann

        data = build_ann(vectors, self.params, threads)
        self.index_bytes = len(data)
        ids = pa.table({"id": pa.array(np.arange(len(vectors)).astype(str)), "uri": pa.nulls(len(vectors), pa.string())})
        np.save(os.path.join(self.folder.name, "vectors.npy"), vectors)
        for name, blob in (("ids.arrow", arrow_file_bytes(ids)), (ANN_FILES[self.params["kind"]], data)):
            with open(os.path.join(self.folder.name, name), "wb") as fh:
                fh.write(blob)
        record = {"rows": len(vectors), "ann": self.params}
        self.segment = Segment.open(self.folder.name, "image", record)

    def set_rescore(self, rescore: int) -> None:
        self.segment.rescore = rescore  # a graph searches max(ef, rescore·k) wide

    def batch(self, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
        return np.stack([self.segment.search(q, k)[1] for q in queries])

    def one(self, k: int):
        return lambda q: self.segment.search(q, k)

    def size(self) -> int:
        """The index file (codes, links, centroids: what a server holds or maps); the float vectors it rescores from
        stay on disk."""
        return self.index_bytes


LIBRARIES = {"faiss": Faiss, "usearch": Usearch}


def run(cfg: BenchmarkIndexConfig, args: object = None) -> int:
    rng = np.random.default_rng(cfg.seed)
    threads = os.cpu_count() or 1
    started = time.perf_counter()
    vectors, centers = synthetic(cfg.vectors, cfg.dim, cfg.clusters, cfg.noise, rng)
    queries, _ = synthetic(cfg.queries, cfg.dim, cfg.clusters, cfg.noise, rng, centers)
    print(f"{cfg.vectors} x {cfg.dim} vectors made in {time.perf_counter() - started:.1f} s", flush=True)
    t = time.perf_counter()
    truth = exact_top(vectors, queries, cfg.k)
    exact_s = time.perf_counter() - t
    exact_p50, exact_p99 = latencies(lambda q: np.argpartition(-(vectors @ q), cfg.k)[:cfg.k], queries[:100])
    result: dict[str, Any] = {"vectors": cfg.vectors, "dim": cfg.dim, "k": cfg.k, "threads": threads,
                              "exact": {"p50_ms": exact_p50, "p99_ms": exact_p99, "batch_s": exact_s,
                                        "bytes_per_vector": cfg.dim * 4},
                              "libraries": {}}
    builders = [(name, lambda name=name: LIBRARIES[name](cfg.dim, cfg.connectivity, cfg.expansion_add))
                for name in cfg.libraries]
    builders += [(f"faiss-{p}", lambda p=p: JobSegment.graph(cfg.connectivity, cfg.expansion_add, p))
                 for p in cfg.precisions]
    if cfg.ivf_pq_bytes:
        builders.append(("faiss-ivfpq", lambda: JobSegment.ivf_pq(cfg.vectors, cfg.dim, cfg.ivf_pq_bytes)))
    for name, make in builders:
        lib = make()
        t = time.perf_counter()
        lib.build(vectors, threads)
        build_s = time.perf_counter() - t
        print(f"{name}: built in {build_s:.1f} s", flush=True)
        curve = []
        # a float graph widens its search (ef); compact codes rescore more candidates (their order is approximate)
        knob, values = ("rescore", RESCORES) if hasattr(lib, "set_rescore") else ("ef", EFS)
        for value in values:
            getattr(lib, f"set_{knob}")(value)
            r = recall(lib.batch(queries, cfg.k, threads), truth)
            curve.append({knob: value, "recall": r})
            print(f"{name}: {knob} {value}: recall@{cfg.k} {r:.4f}", flush=True)
            if r >= cfg.recall_target:
                break
        chosen = {"ef": getattr(lib, "ef", None), **curve[-1]}
        p50, p99 = latencies(lib.one(cfg.k), queries)
        if name == "faiss":
            whole = lib.serialized()
        label = lib.name if knob == "rescore" else f"{lib.name} HNSW"
        result["libraries"][name] = {"label": label, "rescore": chosen.get("rescore"),
                                     "build_s": build_s, "ef": chosen["ef"], "recall": chosen["recall"],
                                     "reached": chosen["recall"] >= cfg.recall_target, "p50_ms": p50, "p99_ms": p99,
                                     "bytes_per_vector": lib.size() / cfg.vectors, "curve": curve}
        del lib
    result["open"] = _open_times(vectors, cfg, whole)
    result["growth"] = _growth(vectors[:len(vectors) // 10], queries, cfg)
    return finish("index", cfg, result, format_index)


def _open_times(vectors: np.ndarray, cfg: BenchmarkIndexConfig, whole: bytes) -> dict[str, Any]:
    """Seconds to open a segment folder as a serving replica does (vectors memory-mapped, ids and graph links read)
    and answer a first query, at a tenth of the vectors and at all of them (``whole``: the graph over all of them,
    as the index job writes it)."""
    import json

    import pyarrow as pa

    from pipeline.index.segments import GRAPH, Segment, arrow_file_bytes, build_graph, npy_bytes

    out = {}
    params = {"kind": "hnsw", "connectivity": cfg.connectivity, "expansion_add": cfg.expansion_add,
              "expansion_search": 64}
    for n in (len(vectors) // 10, len(vectors)):
        with tempfile.TemporaryDirectory() as folder:
            ids = pa.table({"id": pa.array([f"item-{i:09d}" for i in range(n)]), "uri": pa.nulls(n, pa.string())})
            graph = whole if n == len(vectors) else build_graph(vectors[:n], params, os.cpu_count() or 1)
            for name, data in (("vectors.npy", npy_bytes(vectors[:n])), ("ids.arrow", arrow_file_bytes(ids)),
                               (GRAPH, graph)):
                with open(os.path.join(folder, name), "wb") as fh:
                    fh.write(data)
            record = {"rows": n, "ann": params}
            with open(os.path.join(folder, "segment.json"), "w") as fh:
                json.dump(record, fh)
            t = time.perf_counter()
            seg = Segment.open(folder, "image", record)
            seg.search(vectors[0], cfg.k)
            out[str(n)] = time.perf_counter() - t
            del seg
    small, large = (out[str(n)] for n in (len(vectors) // 10, len(vectors)))
    return {"seconds": out, "ratio": large / small}


def _growth(vectors: np.ndarray, queries: np.ndarray, cfg: BenchmarkIndexConfig) -> dict[str, Any]:
    """A rerun that adds a tenth more vectors: a second segment (built alone, searched beside the first) against
    appending to the first graph (loaded, grown, saved again); p50 of a query over what each leaves."""
    import faiss

    from pipeline.index.segments import build_graph

    threads = os.cpu_count() or 1
    cut = len(vectors) * 10 // 11
    params = {"connectivity": cfg.connectivity, "expansion_add": cfg.expansion_add}
    base = build_graph(vectors[:cut], params, threads)
    t = time.perf_counter()
    second = build_graph(vectors[cut:], params, threads)
    segment_s = time.perf_counter() - t
    t = time.perf_counter()
    grown = faiss.deserialize_index(np.frombuffer(base, np.uint8))
    grown.add(vectors[cut:])
    faiss.serialize_index(grown).tobytes()
    append_s = time.perf_counter() - t
    first, second = (faiss.deserialize_index(np.frombuffer(b, np.uint8)) for b in (base, second))
    faiss.omp_set_num_threads(1)
    for index in (first, second, grown):
        index.hnsw.efSearch = 64
    two = latencies(lambda q: (first.search(q[None], cfg.k), second.search(q[None], cfg.k)), queries)[0]
    one = latencies(lambda q: grown.search(q[None], cfg.k), queries)[0]
    return {"base": cut, "added": len(vectors) - cut, "segment_s": segment_s, "append_s": append_s,
            "two_segments_p50_ms": two, "one_graph_p50_ms": one}


def format_index(r: dict[str, Any]) -> str:
    lines = [f"{r['vectors']} x {r['dim']} unit vectors, recall@{r['k']} against exact search, {r['threads']} threads "
             "building; latency = one query, one thread",
             "| search | build s | ef (IVF: nprobe) / rescore | recall | p50 ms | p99 ms | bytes/vector |",
             "|---|---|---|---|---|---|---|",
             f"| exact (numpy) | - | - | 1.000 | {r['exact']['p50_ms']:.2f} | {r['exact']['p99_ms']:.2f} | "
             f"{r['exact']['bytes_per_vector']:.0f} |"]
    for name, lib in r["libraries"].items():
        mark = "" if lib["reached"] else " (target not reached)"
        knob = f"{lib['ef']}" + (f" / {lib['rescore']}k" if lib.get("rescore") else "")
        lines.append(f"| {lib.get('label', name + ' HNSW')} | {lib['build_s']:.1f} | {knob} | {lib['recall']:.3f}{mark} | "
                     f"{lib['p50_ms']:.3f} | {lib['p99_ms']:.3f} | {lib['bytes_per_vector']:.0f} |")
    seconds = r["open"]["seconds"]
    sizes = sorted(seconds, key=int)
    lines.append(f"\nOpening a segment (memory-mapped) and a first query: {int(sizes[0]):,} vectors "
                 f"{seconds[sizes[0]]:.3f} s, {int(sizes[1]):,} vectors {seconds[sizes[1]]:.3f} s "
                 f"(x{r['open']['ratio']:.2f})")
    g = r["growth"]
    lines.append(f"Adding {g['added']:,} vectors to {g['base']:,}: a second segment {g['segment_s']:.2f} s (then a query "
                 f"over both {g['two_segments_p50_ms']:.3f} ms p50), appending to the graph and saving it again "
                 f"{g['append_s']:.2f} s (a query {g['one_graph_p50_ms']:.3f} ms p50)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.index``: exit 2 with one `error:` line for a bad config."""
    return cli(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
