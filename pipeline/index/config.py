"""The index job's config (``oneencoder index``, ``python -m jobs.index``)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.config import StorageConfig, StrictModel, split_modalities
from pipeline.index.metadata import MAX_COLUMNS
from pipeline.modality import Modality


class AnnConfig(StrictModel):
    """How each segment's nearest-neighbour index is built (faiss HNSW); the defaults follow the segment's size."""

    kind: Literal["auto", "exact", "hnsw"] = Field(
        "auto", description="auto = exact (brute force over the segment's vectors) below exact_below vectors, HNSW "
        "above; exact or hnsw force one.")
    exact_below: int = Field(20_000, ge=0, description="Segments with fewer vectors are searched exactly (kind auto): "
                             "a scan of 20,000 256-d vectors takes under a millisecond and is always right.")
    connectivity: int | None = Field(None, ge=2, le=256, description="HNSW edges per node (M); null = 16 below 1M "
                                     "vectors, 32 from 1M on (larger graphs need more edges for the same recall).")
    expansion_add: int | None = Field(None, ge=8, description="HNSW candidates kept while building (efConstruction); "
                                      "null = 128.")
    expansion_search: int | None = Field(None, ge=8, description="HNSW candidates kept while searching (ef); null = 64 "
                                         "(recall rises and speed falls as it grows).")
    precision: Literal["float", "int8", "binary"] = Field(
        "float", description="What the HNSW graph holds per vector: float (4 bytes a dimension), int8 (1 byte: "
        "faiss's 8-bit scalar quantiser) or binary (the sign bits: 1/32 of float, Hamming distance). The graph's "
        "candidates are rescored from the float vectors on disk (memory-mapped, read for rescore·k rows a query), "
        "so scores stay cosines; see docs/search.md for recall and bytes per vector of each.")
    rescore: int | None = Field(None, ge=1, le=100, description="Candidates an int8 or binary graph is asked for, "
                                "as a multiple of k, before rescoring; null = 2 for int8, 32 for binary (1 for float: "
                                "its scores are exact).")
    segment_rows: int = Field(2_000_000, ge=1, description="Most vectors in one segment: a run that adds more builds "
                              "several (a graph is built in one task's memory: ~1 KB per 256-d vector with its "
                              "edges); each query asks every segment.")
    build_cpus: int | None = Field(None, ge=1, description="CPUs of the task that builds a segment's graph (its "
                                   "threads); null = every CPU of the largest node.")

    def chosen(self, vectors: int) -> dict[str, int | str]:
        """The kind and HNSW parameters for a segment of ``vectors`` vectors."""
        kind = self.kind if self.kind != "auto" else ("exact" if vectors < self.exact_below else "hnsw")
        if kind == "exact":
            return {"kind": "exact"}
        params: dict[str, int | str] = {"kind": "hnsw",
                                        "connectivity": self.connectivity or (16 if vectors < 1_000_000 else 32),
                                        "expansion_add": self.expansion_add or 128,
                                        "expansion_search": self.expansion_search or 64}
        if self.precision != "float":
            params.update(precision=self.precision, rescore=self.rescore or RESCORE[self.precision])
        return params


RESCORE = {"float": 1, "int8": 2, "binary": 32}  # recall@10 at 1M 256-d vectors: int8 0.958, binary 0.847


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
