"""The one path from a raw item to a vector: read → decode → frozen encode → optional projection.

The embed job's decode tasks call ``decode_raw``; its encoder actors (features, no projection),
``load_model`` and the Serve replicas (projected vectors) hold an ``ItemEncoder``. Whatever the caller,
one bad item fails alone: a read or decode error is that item's ``ItemError`` (stage ``read`` or
``decode``), a batch whose forward pass fails is retried item by item (stage ``encode``), and a
vector that is not finite (an fp16 overflow on GPU) is that item's error.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from pipeline.config import EncoderConfig
from pipeline.encoders.presets import EncoderRef
from pipeline.media.decode import DecodeSettings, decode_bytes, decode_item
from pipeline.media.errors import DecodeError
from pipeline.store.errors import ReadError
from pipeline.store.integrity import nonzero_tokens


class ItemError(ValueError):
    """An item that gave no vector: its index in the request, the stage that failed and why."""

    def __init__(self, index: int, reason: str, stage: str = "decode"):
        super().__init__(f"item {index}: {reason}")
        self.index, self.reason, self.stage = index, reason, stage

    def at(self, index: int) -> "ItemError":
        return ItemError(index, self.reason, self.stage)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One item's vector: the (K*D) frozen features, or the (d,) projected unit vector; and how many input tokens
    its frozen encoder read (what the API reports as usage; not K, the vectors kept per item, called ``tokens`` in
    the configs)."""

    vector: np.ndarray
    input_tokens: int


def decode_raw(raw: Any, settings: DecodeSettings, index: int = -1) -> Any:
    """One raw item → what its modality's encoder takes. ``raw``: inline text, a media path/URI (read with the
    size limit), or media bytes (decoded from memory where the decoder allows). Raises ItemError."""
    try:
        if isinstance(raw, str):
            return decode_item(raw, settings)
        if settings.modality.is_inline or not isinstance(raw, (bytes, bytearray)):
            raise DecodeError(f"expected {'a string' if settings.modality.is_inline else 'a path, URI or bytes'}, "
                              f"got {type(raw).__name__}")
        return decode_bytes(bytes(raw), settings)
    except ReadError as e:
        raise ItemError(index, str(e), "read") from None
    except DecodeError as e:
        raise ItemError(index, str(e), "decode") from None
    except Exception as e:  # a decoder bug must not lose the item or fail its batch
        raise ItemError(index, f"{type(e).__name__}: {e}", "decode") from None


def with_limits(settings: DecodeSettings, tighter: dict[str, Any] | None) -> DecodeSettings:
    """``settings`` with some limits replaced for one item (e.g. {"max_audio_seconds": 5.0}); None keeps them."""
    return dataclasses.replace(settings, limits=settings.limits.model_copy(update=tighter)) if tighter else settings


class ItemEncoder:
    """One modality's frozen encoder (loaded once, here) and, optionally, the trained projection after it.

    ``project``: cached-feature batch (B, K, D) float32 → (B, d) unit vectors; None keeps the frozen
    features, flattened to K*D and cast to ``dtype`` (the feature store's storage type, in which
    finiteness is checked: float16 overflows where float32 would not).
    """

    def __init__(self, ref: EncoderRef, enc: EncoderConfig, settings: DecodeSettings,
                 project: Callable[[np.ndarray], np.ndarray] | None = None, dtype: Any = np.float32,
                 batch_size: int = 16):
        from pipeline.encoders.frozen import FrozenEncoder
        from pipeline.encoders.null import NullEncoder

        self.modality, self.settings, self.project = ref.modality, settings, project
        self.dtype, self.batch_size = np.dtype(dtype), batch_size
        self.frozen = NullEncoder(ref, enc) if ref.null else FrozenEncoder(ref, enc)

    def embed(self, raw: list[Any], limits: list[dict[str, Any] | None] | None = None,
              timings: dict[str, float] | None = None) -> list[Encoded | ItemError]:
        """Raw items (text, paths/URIs, bytes) → per item, in order, its Encoded or its ItemError. ``limits``: per
        item, limits that replace the settings' for that item alone (e.g. {"max_audio_seconds": 5.0}, a request's
        share of its budget); None, or None for an item, keeps the settings'. ``timings``, when given, receives the
        seconds spent decoding (``decode``) and encoding (``encode``)."""
        started = time.perf_counter()
        out: list[Any] = []
        for index, item in enumerate(raw):
            try:
                out.append(decode_raw(item, with_limits(self.settings, limits[index] if limits else None), index))
            except ItemError as e:
                out.append(e)
        decoded = time.perf_counter()
        good = [i for i, d in enumerate(out) if not isinstance(d, ItemError)]
        for i, result in zip(good, self.encode([out[i] for i in good])):
            out[i] = result.at(i) if isinstance(result, ItemError) else result
        if timings is not None:
            timings.update(decode=decoded - started, encode=time.perf_counter() - decoded)
        return out

    def encode(self, decoded: list[Any]) -> list[Encoded | ItemError]:
        """Decoded items → per item its Encoded or ItemError (stage ``encode``), in batches of ``batch_size``."""
        out: list[Encoded | ItemError] = []
        for start in range(0, len(decoded), self.batch_size):
            chunk = decoded[start:start + self.batch_size]
            try:
                out += self._encode_batch(chunk, start)
            except Exception:  # isolate the failing item(s): each alone
                for j, item in enumerate(chunk):
                    try:
                        out += self._encode_batch([item], start + j)
                    except Exception as e:
                        out.append(ItemError(start + j, f"{self.modality}: {type(e).__name__}: {str(e)[:300]}", "encode"))
        return out

    def _encode_batch(self, chunk: list[Any], first: int) -> list[Encoded | ItemError]:
        features, tokens = self.frozen.embed_counted(chunk)
        if self.project is not None:
            vectors = np.asarray(self.project(features.astype(np.float32)), np.float32)
        else:
            vectors = features.reshape(len(chunk), -1).astype(self.dtype)
        hint = " in float16 (use dtype: float32)" if self.project is None and self.dtype == np.float16 else ""
        bad = [None if ok else f"the encoder gave non-finite values for this input{hint}"
               for ok in np.isfinite(vectors).all(axis=1)]
        if self.project is None and features.shape[1] > 1 and getattr(self.frozen.enc, "sequence", False):
            # a zero vector is padding in the store: a real token stored as zeros would be refused by every reader
            whole = nonzero_tokens(vectors.reshape(features.shape)).sum(axis=1) == np.minimum(tokens, features.shape[1])
            bad = [b or (None if w else f"the encoder gave an all-zero token vector for this input{hint} (a zero vector "
                         "is padding in the store)") for b, w in zip(bad, whole)]
        return [Encoded(vectors[j], int(tokens[j])) if bad[j] is None else
                ItemError(first + j, f"{self.modality}: {bad[j]}", "encode") for j in range(len(chunk))]
