"""The model artifact: one folder, one format, written and read only here.

    config.json        {"format": FORMAT, "model": ModelConfig fields}: written last, it marks a whole artifact
    model.safetensors  the projection's weights (never pickle)
    encoders.json      modality -> the frozen encoder record its features came from (the embed job's)
    metrics.json       {"stages": [one record per trained stage, in curriculum order]}
    provenance.json    features, training config, seed, creation time, versions; `from` for a grown model

Torch-free to read (the serving gateway reads it too).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.store.files import write_bytes_atomic, write_json

if TYPE_CHECKING:  # annotations only
    from pipeline.config import EncoderConfig
    from pipeline.encoders.presets import EncoderRef
    from pipeline.modalities import InputSpec

FORMAT = "oneencoder-artifact/1"


class ArtifactError(ValueError):
    """A folder that is not a (whole) model artifact; the message names the folder and what it lacks."""


@dataclasses.dataclass(frozen=True)
class EncoderRecord:
    """How one modality's features were made, and what rebuilds that frozen encoder and its inputs: the embed job
    writes it into the feature store (``_progress/<modality>/encoder.json``), training copies it into the artifact
    (``encoders.json``) and ``load_model`` reads it back. Written and parsed only here."""

    modality: str
    name: str                  # the "model@revision" identity written beside every feature
    source: str                # what ``from_pretrained`` loads: a hub id or a local folder
    revision: str | None
    build: str | None          # the offline build ("tiny"/"paper") that recreates ``source`` where it is missing
    encoder: dict[str, Any]    # the EncoderConfig fields the features were made with (``tokens`` = K, dtype, ...)
    input: dict[str, Any]      # the InputSpec its decoders targeted (image size, sample rate, frames)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def of(cls, ref: "EncoderRef", enc: "EncoderConfig", spec: "InputSpec") -> "EncoderRecord":
        """What a model artifact needs to rebuild modality ``ref``'s frozen encoder (``enc``) and its inputs
        (``spec``), as it reads back from JSON (tuples become lists), so a stored record compares equal."""
        return cls(ref.modality.value, ref.name, ref.source, ref.revision, ref.build, enc.model_dump(mode="json"),
                   json.loads(json.dumps(dataclasses.asdict(spec))))

    @classmethod
    def from_json(cls, data: Any, where: str) -> "EncoderRecord":
        """The record in ``data`` (a parsed encoder.json); ArtifactError naming ``where`` and what it lacks."""
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = fields if not isinstance(data, dict) else [name for name in fields if name not in data]
        if missing:
            raise ArtifactError(f"{where}: the encoder record has no {', '.join(missing)}")
        if not isinstance(data["encoder"], dict) or not isinstance(data["input"], dict):
            raise ArtifactError(f"{where}: the encoder record's 'encoder' and 'input' must be objects")
        return cls(**{name: data[name] for name in fields})


@dataclasses.dataclass(frozen=True)
class Artifact:
    """What a model artifact folder holds (weights stay on disk until asked for)."""

    path: str
    model: dict[str, Any]              # ModelConfig fields: d, layers, heads, ff, dropout, in_dims, tokens
    encoders: dict[str, EncoderRecord]
    stages: list[dict[str, Any]]
    provenance: dict[str, Any]

    @property
    def modalities(self) -> list[str]:
        return list(self.model["in_dims"])

    @property
    def held_out(self) -> tuple[float, int]:
        """(val_fraction, seed) of the training run: which ids it held out (by id hash), what search calibration is
        fitted on; (0.0, 0) for an artifact without a recorded config."""
        config = self.provenance.get("config", {})
        return float(config.get("val_fraction", 0.0)), int(config.get("seed", 0))

    def widths(self, modality: str) -> list[int]:
        """The vector widths ``modality`` was trained for: the full width, and the Matryoshka prefixes of the stage
        that trained it (the first stage naming it: a modality is trained once, as a stage's new one or as the first
        stage's anchor). A ``dimensions`` below the full width is only meaningful at one of these."""
        for stage in self.stages:
            if modality in (stage.get("new"), stage.get("anchor")):
                return sorted(set(stage.get("matryoshka", [])) | {int(self.model["d"])})
        return [int(self.model["d"])]

    @property
    def weights_path(self) -> str:
        return os.path.join(self.path, "model.safetensors")

    def weights(self) -> bytes:
        with open(self.weights_path, "rb") as fh:
            return fh.read()

    def features_mismatch(self, store: Any, modality: str) -> str | None:
        """Why the ``modality`` features of the feature store ``store`` are not what this model was trained on
        (another frozen encoder, another K), or None when they are. Indexing them (serving) or aligning a new
        modality to them (``train --from``) would otherwise mix spaces."""
        record, run = store.encoder_record(modality) or {}, store.run_record(modality) or {}
        trained, k = self.encoders[modality].name, self.model["tokens"][modality]
        if record.get("name") != trained:
            return f"its {modality} features come from encoder {record.get('name')!r}, but the model was trained on {trained!r}"
        settings = self.encoders[modality].encoder
        kept, trained_kept = _kept(run, k), _kept(settings if "tokens" in settings else {}, k)
        if kept != trained_kept:
            return f"its {modality} features keep {_said(kept)}, but the model was trained on {_said(trained_kept)}"
        return None

    @property
    def created(self) -> float:
        return os.path.getmtime(os.path.join(self.path, "config.json"))


def _kept(settings: dict[str, Any], k: int) -> tuple[str, Any]:
    """What an encoder's settings (or a store's run.json) keep of each item: ("K", K) pooled tokens, or ("all", cap)
    for its token sequence up to ``max_tokens``; ``k`` when they say nothing (records older than ``tokens``)."""
    if settings.get("tokens") == "all":
        return ("all", settings.get("max_tokens"))
    return ("K", settings.get("tokens", k))


def _said(kept: tuple[str, Any]) -> str:
    return f"K={kept[1]} tokens" if kept[0] == "K" else f"each item's token sequence (up to {kept[1]})"


def is_artifact(path: str) -> bool:
    return os.path.exists(os.path.join(path, "config.json"))


def read_artifact(path: str) -> Artifact:
    """The artifact at ``path``; ArtifactError when it is missing, of another format, or lacks a file."""
    if not is_artifact(path):
        raise ArtifactError(f"no model artifact at {path}: expected config.json and model.safetensors "
                            "written by `oneencoder train`")
    config = _read(path, "config.json")
    if config.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a OneEncoder model artifact (config.json format {config.get('format')!r}, "
                            f"expected {FORMAT!r})")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        raise ArtifactError(f"model artifact {path} has no model.safetensors")
    encoders = _read(path, "encoders.json")
    missing = [m for m in config["model"]["in_dims"] if m not in encoders]
    if missing:
        raise ArtifactError(f"model artifact {path}: encoders.json has no record for {', '.join(missing)}")
    records = {m: EncoderRecord.from_json(record, f"model artifact {path}: encoders.json {m!r}")
               for m, record in encoders.items()}
    optional = {name: _read(path, f"{name}.json") if os.path.exists(os.path.join(path, f"{name}.json")) else {}
                for name in ("metrics", "provenance")}
    return Artifact(path, config["model"], records, optional["metrics"].get("stages", []), optional["provenance"])


def write_artifact(path: str, model: dict[str, Any], weights: bytes, encoders: dict[str, EncoderRecord],
                   stages: list[dict[str, Any]], provenance: dict[str, Any]) -> None:
    """Write a whole artifact at ``path``: config.json is removed first and written last, so a reader never
    takes a half-written folder for a model."""
    os.makedirs(path, exist_ok=True)
    marker = os.path.join(path, "config.json")
    if os.path.exists(marker):
        os.remove(marker)
    write_bytes_atomic(os.path.join(path, "model.safetensors"), weights)
    write_json(os.path.join(path, "encoders.json"), {m: record.to_json() for m, record in encoders.items()})
    write_json(os.path.join(path, "metrics.json"), {"stages": stages})
    write_json(os.path.join(path, "provenance.json"), provenance)
    write_json(marker, {"format": FORMAT, "model": model})


def _read(path: str, name: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, name), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"model artifact {path}: cannot read {name} ({type(e).__name__}: {e})") from None


def same_vectors(a: Artifact, b: Artifact, modality: str) -> bool:
    """Whether ``a`` and ``b`` give bit-identical ``modality`` vectors: the same frozen encoder (its record), the same
    projection shape, and byte-equal weights on the modality's path (its adapter, modality token and positions, and
    the shared Universal Projection). A model grown with ``train --from`` keeps its base's modalities so: a client's
    stored vectors of them stay valid."""
    from safetensors import safe_open

    if modality not in a.encoders or modality not in b.encoders:
        return False
    if a.encoders[modality].to_json() != b.encoders[modality].to_json():
        return False
    shape = ("d", "layers", "heads", "ff")
    if any(a.model[k] != b.model[k] for k in shape) or any(
            a.model[k][modality] != b.model[k][modality] for k in ("in_dims", "tokens")):
        return False
    prefixes = (f"adapters.{modality}.", f"modality_tokens.{modality}", f"positions.{modality}", "up.")
    with safe_open(a.weights_path, "numpy") as fa, safe_open(b.weights_path, "numpy") as fb:
        names = sorted(n for n in fa.keys() if n.startswith(prefixes))
        if names != sorted(n for n in fb.keys() if n.startswith(prefixes)):
            return False
        return all(np.array_equal(fa.get_tensor(n), fb.get_tensor(n)) and fa.get_tensor(n).dtype == fb.get_tensor(n).dtype
                   for n in names)
