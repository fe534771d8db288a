"""The index job's config (``oneencoder index``, ``python -m jobs.index``)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config import StorageConfig, StrictModel, split_modalities
from pipeline.index.metadata import MAX_COLUMNS
from pipeline.modality import Modality


class AnnConfig(StrictModel):
    """How each segment's nearest-neighbour index is built (faiss); the defaults follow the segment's size."""

    kind: Literal["auto", "exact", "hnsw", "ivf_pq"] = Field(
        "auto", description="auto = exact (brute force over the segment's vectors) below exact_below vectors, hnsw "
        "below ivf_from, ivf_pq from there (hnsw at every size when precision asks for a compact graph); exact, hnsw "
        "or ivf_pq force one. hnsw: a graph, the best recall on weakly clustered vectors and the lowest latency, "
        "its links (~130 B a vector) read into memory at start-up; ivf_pq: faiss IVF lists of product-quantised "
        "codes, memory-mapped (start-up and memory do not grow with the segment), candidates rescored from the "
        "float vectors. docs/search.md measures both.")
    exact_below: int = Field(20_000, ge=0, description="Segments with fewer vectors are searched exactly (kind auto): "
                             "a scan of 20,000 256-d vectors takes under a millisecond and is always right.")
    ivf_from: int = Field(1_000_000, ge=0, description="Segments with this many vectors or more get ivf_pq (kind "
                          "auto): from 1M vectors a graph holds over 1 GB and is read at every replica's start.")
    lists: int | None = Field(None, ge=1, description="ivf_pq: inverted lists (k-means cells); null = 4·√N, at most "
                              "N/39 (each cell trained on 39 or more vectors).")
    probes: int | None = Field(None, ge=1, description="ivf_pq: lists visited per query (nprobe); null = 32.")
    code_bytes: int | None = Field(None, ge=1, description="ivf_pq: bytes of product-quantised code per vector "
                                   "(must divide the searched width); null = width/8 (32 bytes at 256-d, 1/32 of "
                                   "the float vector).")
    connectivity: int | None = Field(None, ge=2, le=256, description="HNSW edges per node (M); null = 16 below 1M "
                                     "vectors, 32 from 1M on (larger graphs need more edges for the same recall).")
    expansion_add: int | None = Field(None, ge=8, description="HNSW candidates kept while building (efConstruction); "
                                      "null = 128.")
    expansion_search: int | None = Field(None, ge=8, description="HNSW candidates kept while searching (ef); null = 64 "
                                         "(recall rises and speed falls as it grows).")
    precision: Literal["float", "int8", "binary"] = Field(
        "float", description="What an HNSW graph holds per vector: float (4 bytes a dimension), int8 (1 byte: "
        "faiss's 8-bit scalar quantiser) or binary (the sign bits: 1/32 of float, Hamming distance). The graph's "
        "candidates are rescored from the float vectors on disk (memory-mapped, read for rescore·k rows a query), "
        "so scores stay cosines; see docs/search.md for recall and bytes per vector of each.")
    rescore: int | None = Field(None, ge=1, le=100, description="Candidates an ivf_pq index or an int8 or binary "
                                "graph is asked for, as a multiple of k, before rescoring from the float vectors; "
                                "null = 32 for ivf_pq and binary, 2 for int8 (1 for a float graph: its scores are "
                                "exact).")
    segment_rows: int = Field(2_000_000, ge=1, description="Most vectors in one segment: a run that adds more builds "
                              "several (an index is built in one task's memory: ~1 KB per 256-d vector with an HNSW "
                              "graph's edges); each query asks every segment.")
    build_cpus: int | None = Field(None, ge=1, description="CPUs of the task that builds a segment's index (its "
                                   "threads); null = every CPU of the largest node.")

    @model_validator(mode="after")
    def _precision_is_a_graphs(self) -> "AnnConfig":
        if self.kind in ("exact", "ivf_pq") and self.precision != "float":
            raise ValueError(f"precision={self.precision!r} sets what an HNSW graph holds, but kind={self.kind!r}: "
                             "use kind hnsw (or auto) with it" + (", or code_bytes for smaller IVF-PQ codes"
                                                                  if self.kind == "ivf_pq" else ""))
        return self

    def check_width(self, dim: int) -> None:
        """ValueError when IVF-PQ segments may be built (kind ivf_pq, or auto over float vectors) and code_bytes does
        not divide ``dim``."""
        ivf = self.kind == "ivf_pq" or (self.kind == "auto" and self.precision == "float")
        if ivf and self.code_bytes and dim % self.code_bytes:
            raise ValueError(f"ann.code_bytes={self.code_bytes}: must divide the searched width {dim} (each code "
                             "byte quantises width/code_bytes dimensions)")

    def chosen(self, vectors: int, dim: int) -> dict[str, int | str]:
        """The kind and its parameters for a segment of ``vectors`` vectors of ``dim`` dimensions."""
        kind = self.kind
        if kind == "auto":
            kind = ("exact" if vectors < self.exact_below else
                    "ivf_pq" if vectors >= self.ivf_from and self.precision == "float" else "hnsw")
        if kind == "ivf_pq" and vectors < IVF_MIN:
            kind = "exact"  # too few vectors to train the codes' 256 centroids: a scan is as fast
        if kind == "exact":
            return {"kind": "exact"}
        if kind == "ivf_pq":
            self.check_width(dim)
            code = self.code_bytes or max(b for b in range(1, max(1, dim // 8) + 1) if dim % b == 0)
            lists = self.lists or max(1, min(int(4 * vectors ** 0.5), vectors // TRAIN_PER_LIST))
            return {"kind": "ivf_pq", "lists": min(lists, vectors), "probes": min(self.probes or 32, lists),
                    "code_bytes": code, "precision": "pq", "rescore": self.rescore or RESCORE["pq"]}
        params: dict[str, int | str] = {"kind": "hnsw",
                                        "connectivity": self.connectivity or (16 if vectors < 1_000_000 else 32),
                                        "expansion_add": self.expansion_add or 128,
                                        "expansion_search": self.expansion_search or 64}
        if self.precision != "float":
            params.update(precision=self.precision, rescore=self.rescore or RESCORE[self.precision])
        return params


# recall@10 at 1M 256-d vectors (benchmarks.index): int8 graph 0.958, binary graph 0.847, IVF-PQ (32 lists
# visited, 32-byte codes) 0.998 with 32·k candidates rescored (0.946 with 16·k)
RESCORE = {"float": 1, "int8": 2, "binary": 32, "pq": 32}
IVF_MIN = 256          # fewer vectors than a code's 256 centroids: the segment is searched exactly
TRAIN_PER_LIST = 39    # k-means wants 39 or more training vectors a cell (faiss's own minimum)


class IndexConfig(StrictModel):
    model: str | None = Field(None, description="Model artifact folder (from the train job) whose vectors are indexed.")
    features: str | None = Field(None, description="Feature store (local or s3://) written by the embed job.")
    output: str | None = Field(None, description="Index folder (local or s3://): vectors/<modality>/*.parquet (id, uri, "
                               "vector) and the search segments; a rerun adds what the store gained since.")
    modalities: list[Modality] | None = Field(None, description="Modalities to index; null = every modality of the "
                                              "model that the store holds.")
    actors: int | None = Field(None, ge=1, description="Projection actors (each reads, checks and projects whole "
                               "feature shards); null = one per cluster CPU.")
    width: int | None = Field(None, ge=8, description="Width of the searched vectors: a Matryoshka prefix the model was "
                              "trained for (renormalised), e.g. 64 for a quarter of the memory per vector; null = "
                              "the model's full width. The Parquet vectors keep the full width either way.")
    metadata: list[str] | None = Field(None, max_length=MAX_COLUMNS, description="Manifest columns kept with each vector (read "
                                       "from the JSONL, CSV or Parquet manifest the store was embedded from, as "
                                       "text) for /v1/search's `where` filter, e.g. [split, year]; null = none.")
    ann: AnnConfig = Field(default_factory=AnnConfig, description="Nearest-neighbour index of each segment.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="S3 access to the store and the output.")

    _split_modalities = field_validator("modalities", mode="before")(split_modalities)

    @field_validator("metadata", mode="before")
    @classmethod
    def _split_metadata(cls, value: object) -> object:
        if isinstance(value, str):  # --metadata split,year
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError(f"{value}: a column named twice")
        return value
