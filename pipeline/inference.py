"""Load a model artifact and embed raw inputs locally, without Ray."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from pipeline.artifact import read_artifact
from pipeline.config import EncoderConfig, LimitsConfig
from pipeline.decode import DecodeSettings, decode_bytes, decode_item
from pipeline.encoders.frozen import FrozenEncoder
from pipeline.encoders.presets import EncoderRef
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
        self.path, self.limits, self.batch_size = path, limits or LimitsConfig(), batch_size
        # e.g. {"num_gpus": 1} to run the frozen encoders on a GPU, {"torch_threads": 2}: runtime
        # settings of this process, unlike the recorded model, revision and preprocessing
        self.encoder_overrides = dict(encoder_overrides or {})
        self.model = OneEncoder(ModelConfig(**artifact.model)).eval()
        self.model.load_weights(load_file(artifact.weights_path))
        self.encoders_spec = artifact.encoders
        self._encoders: dict[str, tuple[FrozenEncoder, DecodeSettings]] = {}
        self.torch = torch

    @property
    def modalities(self) -> list[str]:
        return self.model.modalities

    @property
    def dim(self) -> int:
        return self.model.config.d

    def _encoder(self, modality: str) -> tuple[FrozenEncoder, DecodeSettings]:
        if modality not in self._encoders:
            if modality not in self.encoders_spec:
                raise ValueError(f"modality {modality!r} is not in this model (it has {', '.join(self.modalities)})")
            spec = self.encoders_spec[modality]
            m = Modality.parse(spec["modality"])
            ref = EncoderRef(m, spec["source"], spec["revision"], spec["name"], spec["build"])
            enc = EncoderConfig(**{**spec["encoder"], **self.encoder_overrides})
            needs_ffmpeg = m.spec.reads == "file"
            settings = DecodeSettings(m, InputSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["input"].items()}),
                                      self.limits, {}, find_ffmpeg() if needs_ffmpeg else "")
            self._encoders[modality] = (FrozenEncoder(ref, enc), settings)
        return self._encoders[modality]

    def embed(self, items: Iterable[Any], modality: str) -> np.ndarray:
        """Embed text strings, or image/audio/video file paths or bytes → float32 (N, d), L2-normalised.

        Raises ValueError naming the index of the first item that cannot be decoded or whose vector is
        not finite.
        """
        results = self.embed_items(list(items), modality)
        bad = [r for r in results if isinstance(r, ItemError)]
        if bad:
            raise ValueError(str(bad[0]))
        return np.stack([r[0] for r in results]) if results else np.zeros((0, self.dim), np.float32)

    def embed_items(self, items: list[Any], modality: str) -> list[tuple[np.ndarray, int] | ItemError]:
        """Per item, in order: (unit vector (d,), the frozen encoder's input tokens), or an ``ItemError`` in its
        place: undecodable, or non-finite values (e.g. an fp16 overflow on GPU). One bad item fails alone."""
        out: list[Any] = self.decode_all(items, modality)
        good = [i for i, d in enumerate(out) if not isinstance(d, ItemError)]
        if good:
            vectors, tokens = self.encode([out[i] for i in good], modality)
            finite = np.isfinite(vectors).all(axis=1)
            for j, i in enumerate(good):
                out[i] = ((vectors[j], int(tokens[j])) if finite[j] else
                          ItemError(i, f"{modality}: the encoder gave non-finite values for this input"))
        return out

    def decode_all(self, items: list[Any], modality: str) -> list[Any]:
        """Decode each item; one that cannot be decoded becomes an ``ItemError`` in its place."""
        settings = self._encoder(modality)[1]
        out = []
        for index, item in enumerate(items):
            try:
                out.append(self._decode(item, settings))
            except ItemError as e:
                out.append(ItemError(index, e.reason))
        return out

    def encode(self, decoded: list[Any], modality: str) -> tuple[np.ndarray, np.ndarray]:
        """Decoded inputs → ((N, d) unit vectors, (N,) encoder tokens per item), in batches."""
        encoder = self._encoder(modality)[0]
        out, tokens = np.zeros((len(decoded), self.dim), np.float32), np.zeros(len(decoded), np.int64)
        for start in range(0, len(decoded), self.batch_size):
            chunk = decoded[start:start + self.batch_size]
            feats, counts = encoder.embed_counted(chunk)
            with self.torch.no_grad():
                out[start:start + len(chunk)] = self.model(modality, self.torch.from_numpy(feats)).numpy()
            tokens[start:start + len(chunk)] = counts
        return out, tokens

    def warm(self, modality: str) -> None:
        """Load the frozen encoder of ``modality`` now rather than on first use."""
        self._encoder(modality)

    def project(self, features: np.ndarray, modality: str) -> np.ndarray:
        """Cached encoder features (N, K, D) from a feature store → (N, d) unit vectors."""
        with self.torch.no_grad():
            out = [self.model(modality, self.torch.from_numpy(np.asarray(features[i:i + 1024], np.float32)))
                   for i in range(0, len(features), 1024)]
        return self.torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    def _decode(self, item: Any, settings: DecodeSettings) -> Any:
        from pipeline.media.errors import DecodeError
        from pipeline.sources import ReadError

        try:
            if isinstance(item, str):
                return decode_item(item, settings)  # text, or a path / URI of media
            inline = settings.modality.spec.inline
            if inline or not isinstance(item, (bytes, bytearray)):
                raise DecodeError(f"expected {'a string' if inline else 'a path or bytes'}, "
                                  f"got {type(item).__name__}")
            return decode_bytes(bytes(item), settings)
        except (DecodeError, ReadError) as e:
            raise ItemError(-1, str(e)) from None


class ItemError(ValueError):
    """An input that cannot be decoded: its index in the request and why."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"item {index}: {reason}")
        self.index, self.reason = index, reason


def load_model(path: str, **kwargs: Any) -> LoadedModel:
    """Load the model artifact at ``path`` for local embedding (see LoadedModel.embed)."""
    return LoadedModel(path, **kwargs)
