"""An index folder: the aligned vectors as Parquet, and search segments over them.

Layout under the index folder OUT::

    index.json                                   the model and feature store it was built from (fingerprints),
                                                 the model's width (dim), the searched width (width: a Matryoshka
                                                 prefix, or dim), and each modality's segments (written last)
    vectors/<modality>/shard-00012.parquet       id, uri, vector (float32 [d], unit length): one per feature shard
    sample/<modality>/shard-00012.parquet        the shard's calibration sample: its rows whose id hash falls below
                                                 the sample fraction (held-out ids of the model, ~4k per modality)
    _progress/<modality>/shard-00012.json        the shard's projection marker (written after its vectors)
    bank/<modality>.npy                          the modality's query bank for the hubness correction
    segments/<modality>/segment-00003/           the shards one run added:
        vectors.npy                              float32 (N, d), memory-mapped by readers
        ids.arrow                                id, uri and the metadata columns asked for (Arrow IPC file,
                                                 memory-mapped)
        ivf_pq.faiss                             ann.kind ivf_pq: faiss IVF lists of product-quantised codes
                                                 (IndexIVFPQ, inner product), memory-mapped whole (only the list
                                                 centroids and code books are read), its candidates rescored from
                                                 vectors.npy
        hnsw.faiss                               ann.kind hnsw: the HNSW graph (faiss, inner product; its codes
                                                 memory-mapped, its links in memory): float vectors
                                                 (IndexHNSWFlat), int8 (IndexHNSWSQ, 8-bit per dimension) or sign
                                                 bits (IndexBinaryHNSW, Hamming), whose candidates are rescored from
                                                 vectors.npy
                                                 (neither when the segment is searched exactly)
        segment.json                             its shards, rows and parameters (written last)

A rerun projects only the store's new shards and adds them as one new segment; a search asks every segment
of the modality and merges. index.json's ``calibration`` holds each modality pair's match map
(``pipeline.index.calibration``). The Parquet files are the user's vectors (pyarrow, pandas, duckdb read them).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import logging
import os
import threading
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

FORMAT = "oneencoder-index/1"
MASKS_KEPT = 8  # filters (id_prefix, where) whose rows a segment keeps computed (5 MB each at 1M rows at most)


class IndexMismatchError(ValueError):
    """An index folder built from another model or feature store than the one it is used with."""


def model_fingerprint(model_dir: str) -> str:
    """sha256 of the artifact's weights and model config: what makes its vectors what they are."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(os.path.join(model_dir, name), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def store_fingerprint(run: dict | None, encoder: dict | None) -> str:
    """sha256 of a modality's run.json and encoder.json: which encoder, settings and manifest its shards come from."""
    text = json.dumps({"run": run, "encoder": encoder}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def vector_schema(dim: int) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("uri", pa.string()), ("vector", pa.list_(pa.float32(), dim))])


def vectors_table(ids: pa.Array, uris: pa.Array, vectors: np.ndarray) -> pa.Table:
    flat = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors, np.float32).ravel()),
                                             vectors.shape[1])
    return pa.Table.from_arrays([ids, uris, flat], schema=vector_schema(vectors.shape[1]))


def table_vectors(table: pa.Table) -> np.ndarray:
    """The ``vector`` column of a vectors table as float32 (N, d)."""
    column = table.column("vector").combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def segment_name(number: int) -> str:
    return f"segment-{number:05d}"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, np.float32))
    return buf.getvalue()


def arrow_file_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


GRAPH, IVF = "hnsw.faiss", "ivf_pq.faiss"
ANN_FILES = {"hnsw": GRAPH, "ivf_pq": IVF}  # a segment's index file per ann kind (exact: none)


def build_ann(vectors: np.ndarray, params: dict[str, Any], threads: int) -> bytes:
    """The index file of a segment of ``params["kind"]`` (``ANN_FILES``) over ``vectors``, serialised."""
    return build_ivf_pq(vectors, params, threads) if params["kind"] == "ivf_pq" else build_graph(vectors, params, threads)


def build_ivf_pq(vectors: np.ndarray, params: dict[str, Any], threads: int) -> bytes:
    """A faiss IVF index over ``vectors`` (labels = row numbers): ``params["lists"]`` k-means cells over the inner
    product, each vector kept as ``params["code_bytes"]`` bytes of product-quantised code; serialised (faiss's own
    format, no pickle). The quantisers are trained on a sample of 39 vectors a cell (at least 256·39), drawn with a
    fixed seed, so a rebuild gives the same index."""
    import faiss

    from pipeline.index.config import TRAIN_PER_LIST

    faiss.omp_set_num_threads(threads)
    vectors = np.ascontiguousarray(vectors, np.float32)
    n, dim = vectors.shape
    quantizer = faiss.IndexFlatIP(dim)  # referenced until serialised: the IVF index does not own it here
    index = faiss.IndexIVFPQ(quantizer, dim, params["lists"], params["code_bytes"], 8, faiss.METRIC_INNER_PRODUCT)
    # the sample is sized here: no warning from faiss for a small segment's
    index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1
    take = min(n, max(TRAIN_PER_LIST * params["lists"], TRAIN_PER_LIST * 256))
    sample = vectors if take == n else vectors[np.sort(np.random.default_rng(0).choice(n, take, replace=False))]
    index.train(sample)
    index.add(vectors)
    return faiss.serialize_index(index).tobytes()


def build_graph(vectors: np.ndarray, params: dict[str, Any], threads: int) -> bytes:
    """An HNSW graph over ``vectors`` (labels = row numbers) holding ``params["precision"]`` codes (float, int8 or
    binary: ``AnnConfig.precision``), serialised (faiss's own format, no pickle)."""
    import faiss

    faiss.omp_set_num_threads(threads)
    vectors = np.ascontiguousarray(vectors, np.float32)
    precision = params.get("precision", "float")
    if precision == "binary":
        index = faiss.IndexBinaryHNSW(vectors.shape[1], params["connectivity"])
    elif precision == "int8":
        index = faiss.IndexHNSWSQ(vectors.shape[1], faiss.ScalarQuantizer.QT_8bit, params["connectivity"],
                                  faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexHNSWFlat(vectors.shape[1], params["connectivity"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params["expansion_add"]
    if precision == "binary":
        if len(vectors):
            index.add(np.packbits(vectors > 0, axis=1))
        return faiss.serialize_index_binary(index).tobytes()
    if len(vectors):
        if not index.is_trained:
            index.train(vectors)  # the scalar quantiser's range per dimension, from the segment's own vectors
        index.add(vectors)
    return faiss.serialize_index(index).tobytes()


def open_graph(path: str, expansion_search: int, precision: str = "float") -> Any:
    """A graph file opened for search: its codes memory-mapped, its links read; one thread per query (a server
    answers many queries at once, each on its own)."""
    import faiss

    faiss.omp_set_num_threads(1)
    read = faiss.read_index_binary if precision == "binary" else faiss.read_index
    graph = read(path, faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    graph.hnsw.efSearch = expansion_search
    return graph


def open_ivf(path: str, probes: int) -> Any:
    """An IVF-PQ file opened for search: its inverted lists (codes and ids) memory-mapped, so opening reads only the
    list centroids and code books, whatever the segment's size; one thread per query."""
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    index.nprobe = probes
    lists = faiss.downcast_InvertedLists(index.invlists)
    if hasattr(lists, "prefetch_nthread"):  # mapped lists: no thread pool touching each query's lists first
        lists.prefetch_nthread = 0           # (32 threads by default: +1 ms a query, measured; the OS pages them in)
    return index


@dataclasses.dataclass
class Segment:
    """One segment, opened for search: its vectors and ids memory-mapped, its graph (if any) viewed from disk."""

    modality: str
    name: str
    vectors: np.ndarray           # float32 (N, d), memory-mapped
    ids: pa.Table                 # id, uri
    graph: Any = None             # faiss HNSW graph (float, int8 or binary codes), IVF-PQ index, or None: exact
    expansion_search: int = 64
    precision: str = "float"      # the index's codes: candidates of int8, binary or pq (IVF-PQ) codes are rescored
    rescore: int = 1              # ... from ``vectors``, the index asked for rescore·k of them

    @classmethod
    def open(cls, folder: str, modality: str, record: dict[str, Any]) -> "Segment":
        vectors = np.load(os.path.join(folder, "vectors.npy"), mmap_mode="r")
        ids = pa.ipc.open_file(pa.memory_map(os.path.join(folder, "ids.arrow"))).read_all()
        if len(vectors) != ids.num_rows or len(vectors) != record["rows"]:
            raise IndexMismatchError(f"{folder}: {len(vectors)} vectors and {ids.num_rows} ids, but segment.json "
                                     f"says {record['rows']} rows")
        ann, graph = record["ann"], None
        precision = ann.get("precision", "float")
        if ann["kind"] == "hnsw":
            graph = open_graph(os.path.join(folder, GRAPH), ann["expansion_search"], precision)
        elif ann["kind"] == "ivf_pq":
            graph = open_ivf(os.path.join(folder, IVF), ann["probes"])
        return cls(modality, os.path.basename(folder), vectors, ids, graph, ann.get("expansion_search", 64),
                   precision, ann.get("rescore", 1))

    def __post_init__(self) -> None:
        self._masks: collections.OrderedDict[Any, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self._masks_lock = threading.Lock()  # a server searches from several threads

    def __len__(self) -> int:
        return len(self.vectors)

    def _filter(self, id_prefix: str | None, where: dict[str, list[str]] | None
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The rows ``id_prefix`` and ``where`` keep: (boolean mask, row numbers), or (None, None) for no filter.
        Computing them reads every id (O(rows)); the last MASKS_KEPT filters' results are kept (a server sees the
        same few filters again and again: a split, a partition), at one byte a row and 4 bytes a kept row."""
        from pipeline.index.metadata import where_mask

        if not id_prefix and not where:
            return None, None
        key = (id_prefix, tuple(sorted((c, tuple(v)) for c, v in (where or {}).items())))
        with self._masks_lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        mask = where_mask(self.ids, where or {})
        if id_prefix:
            prefixed = pc.starts_with(self.ids.column("id"), id_prefix).to_numpy(zero_copy_only=False)
            mask = prefixed if mask is None else mask & prefixed
        found = (mask, np.flatnonzero(mask).astype(np.int32 if len(mask) < 2**31 else np.int64))
        with self._masks_lock:
            self._masks[key] = found
            while len(self._masks) > MASKS_KEPT:
                self._masks.popitem(last=False)
        return found

    def search(self, query: np.ndarray, k: int, exact: bool = False, id_prefix: str | None = None,
               where: dict[str, list[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` rows by inner product with ``query`` (d,): (scores, row numbers), best first.

        With ``id_prefix`` only rows whose id starts with it, with ``where`` only rows whose metadata columns hold
        one of the listed values (``pipeline.index.metadata``): a selective filter (at most a tenth of the rows)
        is searched exactly over those rows; a broad one through the graph, asking for more until ``k`` pass."""
        n = len(self.vectors)
        if not n or k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        mask, allowed = self._filter(id_prefix, where)
        if mask is not None:
            if not len(allowed):
                return np.zeros(0, np.float32), np.zeros(0, np.int64)
            if len(allowed) <= n // 10 or exact or self.graph is None:
                return _top(np.asarray(self.vectors[allowed]) @ query, k, allowed)
        if exact or self.graph is None:
            return _top(np.asarray(self.vectors) @ query, k)
        want = k * self.rescore
        asked = np.ascontiguousarray(query, np.float32)[None]
        if self.precision == "binary":
            asked = np.packbits(asked > 0, axis=1)
        while True:
            count = min(n, want if mask is None else want * 4)
            scores, rows = self.graph.search(asked, count)
            scores, rows = scores[0], rows[0]
            scores, rows = scores[rows >= 0], rows[rows >= 0]  # -1: fewer found than asked
            if mask is not None:
                keep = mask[rows]
                rows, scores = rows[keep], scores[keep]
            if len(rows) >= k or count >= n:
                break
            want *= 4
        if len(rows) < k and len(rows) < (n if allowed is None else len(allowed)):
            # the lists an IVF query visits (or a graph's reach under a filter) held fewer than k: scan instead
            return self.search(query, k, True, id_prefix, where)
        if self.precision != "float":  # the codes' order is approximate: the float vectors decide
            rows = np.sort(rows)  # in file order: fewer pages touched
            return _top(np.asarray(self.vectors[rows]) @ query, k, rows)
        return scores[:k], rows[:k]


def _top(scores: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of ``scores`` (ties by row number), with their rows (``rows`` maps positions to rows)."""
    top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
    top = top[np.lexsort((top, -scores[top]))]
    return scores[top].astype(np.float32), (top if rows is None else rows[top]).astype(np.int64)


def read_record(uri: str, storage: dict[str, Any] | None = None) -> dict[str, Any]:
    """The index.json of the index folder ``uri`` (local or s3://); IndexMismatchError when there is none, or it is
    not a OneEncoder index's."""
    from pipeline.store.features import FeatureStore
    from pipeline.store.integrity import StoreError

    folder = FeatureStore(uri, storage or {})
    try:
        record = folder.read_json("index.json")
    except StoreError as e:
        raise IndexMismatchError(str(e)) from None
    if record is None:
        raise IndexMismatchError(f"no index at {uri}: expected index.json written by `oneencoder index`")
    if record.get("format") != FORMAT:
        raise IndexMismatchError(f"{folder.where('index.json')}: not a OneEncoder index (format "
                                 f"{record.get('format')!r}, expected {FORMAT!r})")
    return record


def check_model(record: dict[str, Any], uri: str, model_dir: str) -> None:
    """IndexMismatchError naming both when ``model_dir`` is not the model the index ``record`` was built from."""
    built, given = record["model"], model_fingerprint(model_dir)
    if built["sha256"] != given:
        raise IndexMismatchError(
            f"index {uri} was built from model {built['path']} (sha256 {built['sha256'][:12]}), not from "
            f"{model_dir} (sha256 {given[:12]}): its vectors are in another space. Build an index for this model "
            f"with `oneencoder index --model {model_dir} --features STORE --output DIR`")


def local_copy(uri: str, storage: dict[str, Any] | None = None) -> str:
    """A local folder holding the index ``uri``: itself when local; an S3 index is copied once into a cache folder
    named by its location and index.json (a rebuilt index is copied again)."""
    if not uri.startswith("s3://"):
        return uri
    from pipeline.config import cache_root
    from pipeline.store.features import FeatureStore

    record = read_record(uri, storage)
    key = hashlib.sha256((uri + json.dumps(record, sort_keys=True)).encode()).hexdigest()[:16]
    dest = os.path.join(cache_root(), "index", key)
    if not os.path.exists(os.path.join(dest, "index.json")):
        folder = FeatureStore(uri, storage or {})
        tmp = dest + f".tmp-{os.getpid()}"
        for modality, entry in record["modalities"].items():
            for name in entry["segments"]:
                rel = f"segments/{modality}/{name}"
                folder.fs.get(folder._p(rel) + "/", os.path.join(tmp, rel) + "/", recursive=True)
        for modality in (record.get("calibration") or {}).get("banks", {}):
            os.makedirs(os.path.join(tmp, "bank"), exist_ok=True)
            folder.fs.get(folder._p(f"bank/{modality}.npy"), os.path.join(tmp, "bank", f"{modality}.npy"))
        with open(os.path.join(tmp, "index.json"), "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        if not os.path.exists(dest):
            os.replace(tmp, dest)
        else:  # another replica finished the same copy first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return dest


class VectorIndex:
    """An index folder opened for search: its segments memory-mapped (an S3 index from a local copy)."""

    def __init__(self, uri: str, storage: dict[str, Any] | None = None):
        self.uri, self.record = uri, read_record(uri, storage)
        root = local_copy(uri, storage)
        self.dim = int(self.record["dim"])
        self.width = int(self.record.get("width", self.dim))  # what the segments hold: the first `width`, renormalised
        self.segments: dict[str, list[Segment]] = {}
        for modality, entry in self.record["modalities"].items():
            self.segments[modality] = []
            for name in entry["segments"]:
                folder = os.path.join(root, "segments", modality, name)
                with open(os.path.join(folder, "segment.json"), encoding="utf-8") as fh:
                    self.segments[modality].append(Segment.open(folder, modality, json.load(fh)))
        self.calibration = open_calibration(self.record.get("calibration"), root)

    @property
    def modalities(self) -> list[str]:
        return list(self.segments)

    def size(self, modality: str) -> int:
        return sum(len(s) for s in self.segments.get(modality, []))

    def check_model(self, model_dir: str) -> None:
        """IndexMismatchError naming both when ``model_dir`` is not the model this index was built from."""
        check_model(self.record, self.uri, model_dir)

    def search(self, query: np.ndarray, modalities: list[str] | None, k: int, exact: bool = False,
               id_prefix: str | None = None, query_modality: str | None = None, hubness: bool = False,
               where: dict[str, list[str]] | None = None) -> list[Hit]:
        """The top ``k`` over ``modalities`` (all when None), best first: see ``search_segments``."""
        return search_segments(self.segments, query, modalities, k, exact, id_prefix, query_modality=query_modality,
                               calibration=self.calibration, hubness=hubness, where=where)


def open_calibration(record: dict[str, Any] | None, root: str) -> Any:
    """The index's Calibration (its match maps and query banks, memory-mapped), or None for an index without one."""
    from pipeline.index.calibration import Calibration

    if not record:
        return None
    banks = {m: np.load(os.path.join(root, "bank", f"{m}.npy"), mmap_mode="r") for m in record.get("banks", {})}
    return Calibration(record["pairs"], banks, record["temperature"])


@dataclasses.dataclass
class Hit:
    """One search result: ``score`` the cosine (hubness-corrected when asked), ``match`` the calibrated probability
    that it is the query's partner (None where the pair is not calibrated)."""

    score: float
    modality: str
    id: str
    uri: str | None
    match: float | None = None
    metadata: dict[str, str | None] | None = None  # the index's metadata columns, where it keeps some


def search_segments(segments: dict[str, list[Segment]], query: np.ndarray, modalities: list[str] | None, k: int,
                    exact: bool = False, id_prefix: str | None = None, *, query_modality: str | None = None,
                    calibration: Any = None, hubness: bool = False, where: dict[str, list[str]] | None = None
                    ) -> list[Hit]:
    """The top ``k`` of ``segments`` over ``modalities`` (all when None), best first.

    With ``hubness`` (needs the query's bank in ``calibration``), each segment's best HUBNESS_FETCH·k candidates are
    rescored with the inverted-softmax correction and the best ``k`` kept. Where ``calibration`` maps
    (query_modality → target), hits carry ``match``; a search over several modalities ranks by ``match`` when all
    of them are calibrated, else by score (ties: modality, then id)."""
    from pipeline.index.calibration import HUBNESS_FETCH, corrected
    from pipeline.index.compact import prefix

    query = np.asarray(query, np.float32)
    width = next((seg.vectors.shape[1] for segs in segments.values() for seg in segs), len(query))
    if len(query) > width:  # an index built at a Matryoshka width: the query's prefix, renormalised
        query = prefix(query, width)
    targets = list(dict.fromkeys(modalities or list(segments)))
    bank = calibration.banks.get(query_modality) if calibration is not None and hubness else None
    hits: list[Hit] = []
    for m in targets:
        mapped = calibration is not None and calibration.has(query_modality, m, hubness=bank is not None)
        for seg in segments.get(m, []):
            scores, rows = seg.search(query, k if bank is None else max(k * HUBNESS_FETCH, 40), exact, id_prefix,
                                      where)
            if bank is not None and len(rows):
                scores = corrected(scores, bank, np.asarray(seg.vectors[rows]), calibration.temperature)
                best = np.lexsort((rows, -scores))[:k]
                scores, rows = scores[best], rows[best]
            matches = calibration.match(query_modality, m, scores, bank is not None) if mapped else [None] * len(rows)
            taken = seg.ids.take(pa.array(rows, pa.int64()))
            extra = [c for c in taken.column_names if c not in ("id", "uri")]
            metadata = taken.select(extra).to_pylist() if extra else [None] * len(rows)
            hits.extend(Hit(float(s), m, i, u, None if p is None else float(p), meta) for s, i, u, p, meta in
                        zip(scores, taken.column("id").to_pylist(), taken.column("uri").to_pylist(), matches, metadata))
    by_match = len(targets) > 1 and all(h.match is not None for h in hits)
    hits.sort(key=lambda h: ((-h.match,) if by_match else ()) + (-h.score, h.modality, h.id))
    return hits[:k]
