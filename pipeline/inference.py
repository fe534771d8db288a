"""Load a model artifact and embed raw inputs locally, without Ray (``ItemEncoder``s with the projection)."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from pipeline.artifact import EncoderRecord, read_artifact
from pipeline.config import EncoderConfig, LimitsConfig
from pipeline.encoders.presets import EncoderRef
from pipeline.item_encoder import Encoded, ItemEncoder, ItemError
from pipeline.media.decode import DecodeSettings
from pipeline.media.ffmpeg import find_ffmpeg
from pipeline.modalities import InputSpec
from pipeline.modality import Modality


class LoadedModel:
    """Frozen encoders + the trained projection: ``embed(items, modality)`` → (N, d) unit vectors."""

    def __init__(self, path: str, limits: LimitsConfig | None = None, batch_size: int = 16,
                 encoder_overrides: dict[str, Any] | None = None):
        import torch
        from safetensors.torch import load_file

        from pipeline.model import ModelConfig, OneEncoder

        artifact = read_artifact(path)
        self.path, self.limits, self._batch_size = path, limits or LimitsConfig(), batch_size
        # e.g. {"num_gpus": 1} to run the frozen encoders on a GPU, {"torch_threads": 2}: runtime
        # settings of this process, unlike the recorded model, revision and preprocessing
        self.encoder_overrides = dict(encoder_overrides or {})
        self.model = OneEncoder(ModelConfig(**artifact.model)).eval()
        self.model.load_weights(load_file(artifact.weights_path))
        self.encoders_spec = artifact.encoders
        self.held_out = artifact.held_out  # the ids training held out: what search calibration is fitted on
        self._items: dict[str, ItemEncoder] = {}
        self.torch = torch

    @property
    def batch_size(self) -> int:
        """Items per frozen-encoder forward pass (a Serve replica retunes it at runtime)."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = value
        for items in self._items.values():
            items.batch_size = value

    @property
    def modalities(self) -> list[str]:
        return self.model.modalities

    @property
    def dim(self) -> int:
        return self.model.config.d

    def items(self, modality: str) -> ItemEncoder:
        """The modality's one path from a raw item to a projected vector (its frozen encoder loaded on first use)."""
        if modality not in self._items:
            if modality not in self.encoders_spec:
                raise ValueError(f"modality {modality!r} is not in this model (it has {', '.join(self.modalities)})")
            record = self.encoders_spec[modality]
            m = Modality(record.modality)
            ref = EncoderRef(m, record.source, record.revision, record.name, record.build)
            enc = EncoderConfig(**{**record.encoder, **self.encoder_overrides})
            settings = self.decode_settings(modality)
            self._items[modality] = ItemEncoder(ref, enc, settings, project=lambda f: self.project(f, modality),
                                                batch_size=self.batch_size)
        return self._items[modality]

    def decode_settings(self, modality: str, storage: dict[str, Any] | None = None) -> DecodeSettings:
        """How ``modality``'s raw items are decoded for this model's frozen encoder (its input sizes, the limits);
        ``storage``: S3 access for s3:// items. http(s) items are refused."""
        return decode_settings(self.encoders_spec[modality], self.limits, storage)

    def embed(self, items: Iterable[Any], modality: str) -> np.ndarray:
        """Embed text strings, or media file paths/URIs or bytes → float32 (N, d), L2-normalised.

        Raises ValueError naming the index of the first item that cannot be decoded or whose vector is
        not finite.
        """
        return self._stacked(self.embed_items(list(items), modality))[0]

    def embed_items(self, items: list[Any], modality: str, limits: list[dict[str, Any] | None] | None = None,
                    timings: dict[str, float] | None = None) -> list[Encoded | ItemError]:
        """Per item, in order: its ``Encoded`` (unit vector (d,), the frozen encoder's input tokens), or an
        ``ItemError`` in its place: unreadable, undecodable, failing the encoder, or non-finite (e.g. an fp16
        overflow on GPU). One bad item fails alone. ``limits``: per item, limits replacing the model's for that
        item alone; ``timings`` receives the seconds spent decoding and encoding (``ItemEncoder.embed``)."""
        return self.items(modality).embed(items, limits, timings)

    def encode(self, decoded: list[Any], modality: str) -> tuple[np.ndarray, np.ndarray]:
        """Decoded inputs (what the modality's decoder gives) → ((N, d) unit vectors, (N,) encoder tokens per item).
        Raises ValueError naming the first item that gave no vector."""
        return self._stacked(self.items(modality).encode(decoded))

    def _stacked(self, results: list[Encoded | ItemError]) -> tuple[np.ndarray, np.ndarray]:
        """((N, d) vectors, (N,) tokens) of results that all succeeded; ValueError naming the first that did not."""
        bad = [r for r in results if isinstance(r, ItemError)]
        if bad:
            raise ValueError(str(bad[0]))
        if not results:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64)
        return np.stack([r.vector for r in results]), np.array([r.input_tokens for r in results], np.int64)

    def warm(self, modality: str) -> None:
        """Load the frozen encoder of ``modality`` now rather than on first use."""
        self.items(modality)

    def project(self, features: np.ndarray, modality: str) -> np.ndarray:
        """Cached encoder features (N, K, D) from a feature store → (N, d) unit vectors."""
        from pipeline.model import rows_per_chunk

        step = rows_per_chunk(features.shape[1] if np.ndim(features) == 3 else 1)
        with self.torch.no_grad():
            out = [self.model(modality, self.torch.from_numpy(np.array(features[i:i + step], np.float32)))
                   for i in range(0, len(features), step)]
        return self.torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)


def decode_settings(record: EncoderRecord, limits: LimitsConfig, storage: dict[str, Any] | None = None) -> DecodeSettings:
    """How the raw items of the frozen encoder ``record`` (an artifact's ``encoders[modality]``) are decoded for it,
    within ``limits``; needs neither the encoder nor the weights (a decoding replica holds no model)."""
    m = Modality(record.modality)
    spec = InputSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.input.items()})
    return DecodeSettings(m, spec, limits, storage or {}, find_ffmpeg() if m.spec.reads == "file" else "")


def load_model(path: str, **kwargs: Any) -> LoadedModel:
    """Load the model artifact at ``path`` for local embedding (see LoadedModel.embed)."""
    return LoadedModel(path, **kwargs)
