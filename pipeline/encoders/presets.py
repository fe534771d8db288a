"""Encoder presets and the resolution of a modality's encoder from config."""
from __future__ import annotations

import dataclasses
import hashlib
import os

from pipeline.embed.config import EmbedConfig
from pipeline.encoders.offline import BUILD_VERSION, ensure_built
from pipeline.modality import Modality


@dataclasses.dataclass(frozen=True)
class EncoderRef:
    """Where a modality's frozen encoder comes from.

    ``source`` is a hub id or a local folder given to ``from_pretrained``; ``name`` is the
    "model@revision" identity written beside every feature; ``build`` names an offline build
    ("tiny"/"paper") that a worker recreates if ``source`` is missing on its node.
    """

    modality: Modality
    source: str
    revision: str | None
    name: str
    build: str | None = None
    cache_dir: str | None = None
    null: bool = False  # the null encoder (pipeline.encoders.null): benchmarks and tests of the pipeline alone

    def materialize(self) -> str:
        """The ``from_pretrained`` argument, rebuilding an offline build on this node if needed."""
        if self.build and not os.path.exists(os.path.join(self.source, "config.json")):
            return ensure_built(self.build, self.modality, self.cache_dir or os.path.dirname(os.path.dirname(self.source)))
        return self.source


def resolve_encoder(cfg: EmbedConfig, modality: Modality) -> EncoderRef:
    """The encoder for ``modality``: explicit model in config, else the preset (building offline ones)."""
    enc = cfg.encoder(modality)
    cache = cfg.resolved_cache_dir()
    if enc.model:
        if os.path.isdir(enc.model):
            path = os.path.abspath(enc.model)
            return EncoderRef(modality, path, None, f"{path}@sha256:{_weights_digest(path)}")
        return EncoderRef(modality, enc.model, enc.revision, f"{enc.model}@{enc.revision or 'main'}")
    if cfg.preset == "tiny":
        path = ensure_built("tiny", modality, cache)
        return EncoderRef(modality, path, None, f"oneencoder/tiny-{modality}@{BUILD_VERSION}", "tiny", cache)
    model_id = modality.spec.paper_model
    if cfg.random_init:
        path = ensure_built("paper", modality, cache)
        return EncoderRef(modality, path, None, f"{model_id}@random-init-{BUILD_VERSION}", "paper", cache)
    return EncoderRef(modality, model_id, enc.revision, f"{model_id}@{enc.revision or 'main'}")


def _weights_digest(folder: str) -> str:
    """Short sha256 over config and weight files of a local model folder (its identity)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith((".json", ".safetensors", ".txt", ".model")):
            with open(os.path.join(folder, name), "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]
