"""Typed, validated configuration of the progressive training job."""
from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config import ConfigError, StorageConfig, StrictModel, format_validation_errors, read_yaml_mapping
from pipeline.modality import Modality
from pipeline.model import ModelConfig


class LossConfig(StrictModel):
    """Weights of a stage's loss terms (0 turns a term off) and its learnable temperature's start and bounds."""

    infonce: float = Field(1.0, ge=0, description="Weight of symmetric InfoNCE.")
    align: float = Field(0.0, ge=0, description="Weight of the Wang–Isola alignment term.")
    uniform: float = Field(0.0, ge=0, description="Weight of the Wang–Isola uniformity term.")
    symile: float = Field(0.0, ge=0, description="Weight of the Symile loss (needs stage.third).")
    temperature: float = Field(0.07, gt=0, description="Initial temperature (learnable).")
    min_temperature: float = Field(0.01, gt=0, description="Lower bound of the temperature.")
    max_temperature: float = Field(1.0, gt=0, description="Upper bound of the temperature.")
    matryoshka: list[int] = Field(default_factory=list, description="Nested prefix widths trained besides the full one "
                                  "(Matryoshka: InfoNCE averaged over each prefix, renormalised, and the whole vector), "
                                  "e.g. [64, 128]: multiples of 8 below model.d, so `dimensions` can cut the vectors "
                                  "there; [] = the full width only.")

    @field_validator("matryoshka")
    @classmethod
    def _nested_widths(cls, value: list[int]) -> list[int]:
        if any(w < 8 or w % 8 for w in value) or value != sorted(set(value)):
            raise ValueError(f"loss.matryoshka={value}: expected increasing widths, each a multiple of 8 from 8 on")
        return value

    @model_validator(mode="after")
    def _temperature_inside(self) -> "LossConfig":
        lo, hi = self.min_temperature, self.max_temperature
        if not lo < self.temperature < hi:
            raise ValueError(f"loss.temperature={self.temperature} must lie inside ({lo}, {hi})")
        return self


FIRST_STAGE_LR, LATER_STAGE_LR = 3e-4, 1e-3


class StageConfig(StrictModel):
    new: Modality = Field(description="Modality aligned in this stage (the first stage trains new and anchor jointly).")
    anchor: Modality = Field(description="Already-aligned modality it is aligned to (text by default).")
    third: Modality | None = Field(None, description="Optional third modality in each batch, for the Symile loss.")
    extra_anchors: list[Modality] = Field(default_factory=list, description="Further aligned modalities the new one is aligned "
                                     "to as well, an InfoNCE term each (e.g. video to text and image: 'video:text+image').")
    negatives: Literal["auto", "batch", "bank"] = Field("auto", description="Negatives of the new -> anchor term: the batch's "
                                                        "anchors, or besides them a bank of up to `bank_size` training anchors "
                                                        "(a later stage's frozen anchor vectors, computed once per stage); "
                                                        "auto = batch in stage 1 (it trains both sides), bank in later stages.")
    bank_size: int = Field(4096, ge=2, description="Training anchors in the bank (negatives: bank), per worker.")
    epochs: int | None = Field(None, ge=1, description="Epochs of this stage; null = enough epochs for `steps` optimizer steps, "
                               "at most `max_epochs` (many on a small store, one on a large one).")
    steps: int = Field(1500, ge=1, description="Optimizer steps a stage with automatic epochs aims at.")
    max_epochs: int = Field(200, ge=1, description="Most epochs a stage with automatic epochs runs.")
    batch_size: int = Field(64, ge=2, description="Pairs per batch per worker (InfoNCE negatives).")
    lr: float | None = Field(None, gt=0, description="AdamW peak learning rate; null = 3e-4 for the joint first stage, "
                             "1e-3 for a later stage (only the new adapter and token train).")
    warmup: float = Field(0.05, ge=0, lt=1, description="Share of the stage's steps over which lr rises linearly to its peak.")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="lr after warm-up: cosine decay to a tenth of the peak by the last step, or constant.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    feature_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the cached encoder features fed to the trained "
                                   "adapters, in training only (regularises a small store).")
    loss: LossConfig = Field(default_factory=LossConfig, description="Loss terms of the stage.")
    patience: int | None = Field(None, ge=0, description="Early stopping: epochs without a lower validation loss; "
                                 "null = a fifth of the stage's epochs (at least 5); 0 = off.")

    @property
    def modalities(self) -> list[str]:
        """Every modality in the stage's batches: new, anchor, third (if any), extra anchors."""
        return [n for n in (self.new, self.anchor, self.third, *self.extra_anchors) if n]

    def learning_rate(self, index: int) -> float:
        """The stage's lr, or the default for its position in the curriculum."""
        return self.lr if self.lr is not None else (FIRST_STAGE_LR if index == 0 else LATER_STAGE_LR)

    def resolved(self, steps_per_epoch: int) -> "StageConfig":
        """This stage with its budget made concrete for ``steps_per_epoch``: epochs and patience set."""
        epochs = self.epochs or min(self.max_epochs, -(-self.steps // max(1, steps_per_epoch)))
        patience = self.patience if self.patience is not None else max(5, epochs // 5)
        return self.model_copy(update={"epochs": epochs, "patience": patience})

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of the peak lr at optimizer ``step`` (0-based) of ``total``: linear warm-up, then the schedule."""
        warm = int(self.warmup * total)
        if step < warm:
            return (step + 1) / warm
        if self.schedule == "constant" or total <= warm + 1:
            return 1.0
        progress = (step - warm) / (total - warm - 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    @model_validator(mode="after")
    def _distinct(self) -> "StageConfig":
        names = self.modalities
        if len(set(names)) != len(names):
            raise ValueError(f"a stage needs distinct modalities, got new={self.new!r} anchor={self.anchor!r} "
                             f"third={self.third!r} extra_anchors={self.extra_anchors!r}")
        if self.loss.symile and not self.third:
            raise ValueError("loss.symile > 0 needs stage.third (a third modality in each batch)")
        return self


class TuneSettings(StrictModel):
    """Hyper-parameter search per stage (``oneencoder tune`` or a ``tune:`` block): Ray Tune, ASHA, trials on cached features."""

    trials: int = Field(8, ge=1, description="Trials (settings sampled) per stage.")
    lr: tuple[float, float] = Field((1e-4, 3e-3), description="Peak learning rate range (log-uniform).")
    steps: list[int] = Field(default_factory=lambda: [500, 1500, 3000], min_length=1, description="Step budgets tried.")
    weight_decay: tuple[float, float] = Field((1e-4, 0.1), description="AdamW weight decay range (log-uniform).")
    temperature: tuple[float, float] = Field((0.03, 0.2), description="Initial temperature range (uniform).")
    grace_epochs: int = Field(10, ge=1, description="ASHA: epochs every trial runs before it can be stopped.")
    reduction_factor: int = Field(3, ge=2, description="ASHA: a rung keeps 1 in this many trials.")
    cpus_per_trial: float = Field(1.0, gt=0, description="Logical CPUs per trial (its torch threads).")

    @model_validator(mode="after")
    def _ranges(self) -> "TuneSettings":
        for name in ("lr", "weight_decay", "temperature"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"tune.{name} = [{low}, {high}]: expected 0 < low <= high")
        if min(self.steps) < 1:
            raise ValueError(f"tune.steps = {self.steps}: expected positive step budgets")
        return self


class TrainConfig(StrictModel):
    features: str | None = Field(None, description="Feature store folder written by the embed job (local or s3://).")
    output: str | None = Field(None, description="Model artifact folder to write (local).")
    from_model: str | None = Field(None, description="A model artifact to grow (`--from`): everything it has stays frozen, "
                                   "so its modalities' vectors are unchanged, and `stages` add new modalities to it; "
                                   "null = train a new model from stage 1.")
    stages: list[StageConfig] = Field(default_factory=lambda: [StageConfig(new="image", anchor="text")],
                                      description="Curriculum: stage 1 trains jointly; later stages add one modality each.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Projection model shape (in_dims and tokens "
                               "are set by training from the feature store: leave them out).")
    seed: int = Field(0, description="Seed of initialisation and shuffling.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of ids held out for validation (by id hash).")
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP).")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs per worker.")
    max_failures: int = Field(1, ge=0, description="Worker failures survived per run (each restarts from the last checkpoint).")
    checkpoint_every_steps: int = Field(50, ge=1, description="Optimizer steps between checkpoints (a whole number of epochs, at least one): a small store's short epochs are checkpointed together.")
    in_memory_mb: float = Field(2048, ge=0, description="A worker whose share of a stage's training features (float32) is at most "
                                "this many MiB reads it once and shuffles it in memory each epoch; a larger share streams "
                                "through Ray Data every epoch (0 = always stream).")
    keep_checkpoints: int | None = Field(3, ge=1, description="Latest epoch checkpoints kept (each holds the best weights so far of every stage); null = all.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="S3 access for the feature store.")
    tune: TuneSettings | None = Field(None, description="Search each stage's lr, step budget, weight decay and temperature "
                                      "with Ray Tune before training it (`oneencoder tune`); null = train with the stages' settings.")

    @field_validator("model")
    @classmethod
    def _shape_only(cls, value: ModelConfig) -> ModelConfig:
        if value.in_dims or value.tokens:
            raise ValueError("model.in_dims and model.tokens are set by training from the feature store: leave them out")
        return value

    @field_validator("stages", mode="before")
    @classmethod
    def _parse_stages(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_stage_list(value)
        return value

    @model_validator(mode="after")
    def _curriculum(self) -> "TrainConfig":
        for k, stage in enumerate(self.stages):
            if any(w >= self.model.d for w in stage.loss.matryoshka):
                raise ValueError(f"stages[{k}].loss.matryoshka={stage.loss.matryoshka}: every width must be below "
                                 f"model.d={self.model.d} (the full width is always trained)")
        if self.from_model is None:  # else checked against the grown model's modalities (check_curriculum)
            check_curriculum(self.stages, None)
        elif not self.stages:
            raise ValueError("stages: expected at least one stage")
        return self


def check_curriculum(stages: list[StageConfig], aligned: set[str] | None) -> None:
    """Each stage's anchors must be aligned by then and its new modality must not be. ``aligned``: the modalities
    of the model being grown (``from_model``), or None when stage 1 is the joint first stage. Raises ValueError."""
    if not stages:
        raise ValueError("stages: expected at least one stage")
    if aligned is None:
        first = stages[0]
        if first.third or first.extra_anchors:
            raise ValueError("stage 1: third and extra_anchors must be modalities aligned by an earlier stage "
                             f"(got third={first.third!r}, extra_anchors={first.extra_anchors!r})")
        if first.negatives == "bank":
            raise ValueError("stage 1: negatives 'bank' needs a frozen anchor (a later stage); stage 1 trains both sides")
        known, later = {first.new, first.anchor}, list(enumerate(stages[1:], start=2))
    else:
        known, later = set(aligned), list(enumerate(stages, start=1))
    for i, stage in later:
        so_far = f"(aligned so far: {', '.join(sorted(known))})"
        if stage.third and stage.third not in known:
            raise ValueError(f"stage {i}: third={stage.third!r} is not aligned yet {so_far}")
        for extra in stage.extra_anchors:
            if extra not in known:
                raise ValueError(f"stage {i}: extra anchor {extra!r} is not aligned yet {so_far}")
        if stage.anchor not in known:
            raise ValueError(f"stage {i} ({stage.new}:{stage.anchor}): anchor {stage.anchor!r} is not aligned yet {so_far}")
        if stage.new in known:
            raise ValueError(f"stage {i}: {stage.new!r} is already aligned; a later stage adds a new modality")
        known.add(stage.new)


def parse_stage_list(text: str, **common: Any) -> list[dict[str, Any]]:
    """'image:text,audio:text,video:text+image' → stage dicts (each 'new:anchor', extra anchors after '+')."""
    stages = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        new, _, anchors = part.partition(":")
        names = [a.strip() for a in anchors.split("+")]
        if part.count(":") != 1 or not new.strip() or not all(names):
            raise ValueError(f"stage {part!r}: expected 'new:anchor' or 'new:anchor+other', e.g. image:text or video:text+image")
        stage = {"new": new.strip(), "anchor": names[0], **common}
        if names[1:]:
            stage["extra_anchors"] = names[1:]
        stages.append(stage)
    return stages


def load_train_config(path: str | None = None, epochs: int | None = None, search: bool = False, trials: int | None = None,
                      **overrides: Any) -> TrainConfig:
    """YAML (optional) + non-None overrides (CLI flags), validated once; ``search`` turns the tune search on (the
    YAML's ``tune:`` block, else its defaults), ``trials`` sets its trials. Raises ConfigError."""
    data = read_yaml_mapping(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    if search or trials is not None:
        data["tune"] = {**(data.get("tune") or {}), **({"trials": trials} if trials is not None else {})}
    try:
        if isinstance(data.get("stages"), str):
            data["stages"] = parse_stage_list(data["stages"])
        if epochs is not None:
            data["stages"] = [{**(s if isinstance(s, dict) else s.model_dump()), "epochs": epochs}
                              for s in (data.get("stages") or [{"new": "image", "anchor": "text"}])]
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_errors(e, path or "command line")) from None
    except ValueError as e:
        raise ConfigError(f"invalid config ({path or 'command line'}): {e}") from None
