"""Typed configs of the evaluate job and the three benchmarks (the embed and train jobs have their own).

Each is read once from an optional YAML file plus CLI flags (flags win) with ``load_config``; the field
descriptions are the flags' help and the configuration reference.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config import StorageConfig, StrictModel

Preset = Literal["paper", "tiny"]
PRESET_HELP = "paper = the paper's architectures at random init (offline); tiny = the test-sized encoders."
REPORT_HELP = "Also write the figures as JSON to this file; null = console only."


class EvaluateConfig(StrictModel):
    model: str | None = Field(None, description="Model artifact folder (from the train job).")
    features: str | None = Field(None, description="Feature store folder (local or s3://).")
    labels: str | None = Field(None, description="YAML/JSON with labels (id -> class) and templates, for zero-shot classification.")
    output: str | None = Field(None, description="Report folder; null = MODEL/eval.")
    baseline: bool = Field(False, description="Also train a jointly trained baseline per stage pair (two 2-layer MLPs, InfoNCE) on the model's training ids and compare on its held-out ids: what freezing costs.")
    baseline_epochs: int = Field(100, ge=1, description="Epochs of each baseline pair.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="S3 access to the feature store.")


class BenchmarkEmbedConfig(StrictModel):
    images: int = Field(192, ge=8, description="Generated 320x240 JPEGs to embed.")
    batch_size: int = Field(16, ge=1, description="Encoder batch size.")
    preset: Preset = Field("paper", description=PRESET_HELP)
    workdir: str | None = Field(None, description="Scratch folder; null = a new temp folder.")
    report: str | None = Field(None, description=REPORT_HELP)

    @model_validator(mode="after")
    def _enough_batches(self) -> "BenchmarkEmbedConfig":
        if self.images < 4 * self.batch_size:  # the steady rate skips the first and last shard
            raise ValueError(f"images = {self.images}: expected at least 4 x batch_size ({4 * self.batch_size})")
        return self


class BenchmarkTrainConfig(StrictModel):
    samples: int = Field(64, ge=2, description="Generated image-text pairs.")
    batch_size: int = Field(16, ge=2, description="Training batch size.")
    epochs: int = Field(1, ge=1, description="Epochs timed for each approach.")
    preset: Preset = Field("paper", description=PRESET_HELP)
    report: str | None = Field(None, description=REPORT_HELP)

    @model_validator(mode="after")
    def _one_batch(self) -> "BenchmarkTrainConfig":
        if self.samples < self.batch_size:
            raise ValueError(f"samples = {self.samples}: expected at least batch_size ({self.batch_size})")
        return self


class BenchmarkServeConfig(StrictModel):
    preset: Preset = Field("paper", description=PRESET_HELP)
    requests: int = Field(96, ge=1, description="Most requests per concurrency level.")
    levels: list[int] = Field([1, 8, 32], min_length=1, description="Concurrency levels (a list, or '1,8,32' on the command line).")
    level_cap_s: float = Field(30.0, gt=0, description="Time cap per concurrency level, in seconds.")
    report: str | None = Field(None, description=REPORT_HELP)

    @field_validator("levels", mode="before")
    @classmethod
    def _split_levels(cls, value):
        if isinstance(value, str):
            try:
                return [int(x) for x in value.split(",") if x.strip()]
            except ValueError:
                raise ValueError(f"expected comma-separated integers, e.g. 1,8,32, got {value!r}") from None
        return value

    @field_validator("levels")
    @classmethod
    def _sorted_levels(cls, value: list[int]) -> list[int]:
        return sorted(set(value))

    @model_validator(mode="after")
    def _levels_fit(self) -> "BenchmarkServeConfig":
        if min(self.levels) < 1:
            raise ValueError(f"levels = {self.levels}: expected concurrency levels of at least 1")
        if self.requests < max(self.levels):
            raise ValueError(f"requests = {self.requests}: expected at least the largest level ({max(self.levels)})")
        return self
