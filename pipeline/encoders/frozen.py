"""A frozen Hugging Face encoder: its own processor, batched forward, pooling to K tokens (or the sequence, padded).

What is specific to a modality (processor class, how a batch is fed, which tower of a dual-tower
checkpoint) comes from its registry module; this class only loads, runs and pools.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

import numpy as np

from pipeline.config import EncoderConfig
from pipeline.encoders.presets import EncoderRef
from pipeline.encoders.towers import load_encoder_model
from pipeline.modalities import InputSpec

log = logging.getLogger(__name__)


def read_input_spec(ref: EncoderRef, enc: EncoderConfig) -> InputSpec:
    """Input sizes for ``ref`` from its preprocessor and model config JSON (no weights, no transformers import)."""
    spec = ref.modality.spec
    if spec.input_spec is None:
        return InputSpec()
    return spec.input_spec(_config_json(ref, "preprocessor_config.json"), _config_json(ref, "config.json"), enc)


def _config_json(ref: EncoderRef, filename: str) -> dict[str, Any]:
    source = ref.materialize()
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{ref.modality} encoder folder {source} has no {filename}: "
                                    "expected a save_pretrained() folder with its processor files")
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(source, filename, revision=ref.revision)
        except Exception as e:
            raise FileNotFoundError(
                f"cannot get {filename} of {ref.modality} encoder {source!r} ({type(e).__name__}): it is not in "
                "the local Hugging Face cache and the hub is unreachable; download it where the hub is reachable, "
                f"or set encoders.{ref.modality}.model to a local folder") from None
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    # a dual-tower checkpoint (CLIP, SigLIP, CLAP) keeps each tower's settings in a sub-config
    return {**config.get(f"{ref.modality.spec.tower}_config", {}), **config} if filename == "config.json" else config


class FrozenEncoder:
    """A pre-trained encoder in eval mode with gradients off; ``embed`` maps inputs to (B, K, D) arrays.

    Attributes the modality modules' ``forward`` use: ``processor``, ``model``, ``device``, ``dtype``,
    ``enc`` (EncoderConfig), ``tower_output`` and ``run(**inputs)`` → hidden states (B, T, D).
    """

    def __init__(self, ref: EncoderRef, enc: EncoderConfig):
        import torch
        import transformers

        self.torch = torch
        self.modality = ref.modality
        self.spec = ref.modality.spec
        self.enc = enc
        threads = enc.torch_threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        self.device = "cuda" if enc.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        source = ref.materialize()
        model, self.tower_output, self.dim = load_encoder_model(source, ref.revision, self.spec.tower, ref.modality)
        self.processor = Serialized(getattr(transformers, self.spec.processor).from_pretrained(source, revision=ref.revision))
        dtype = getattr(torch, enc.precision) if self.device == "cuda" else torch.float32
        self.model = model.to(self.device, dtype=dtype).eval().requires_grad_(False)
        self.dtype = dtype
        log.info("loaded %s encoder %s on %s (%d threads)", ref.modality, ref.name, self.device, threads)

    def run(self, **inputs: Any):
        """The model on prepared inputs → (B, T, D): its last hidden states, or, for a dual-tower checkpoint's
        tower, the projected embedding as one token (T = 1)."""
        out = self.model(**inputs)
        if self.tower_output:
            return getattr(out, self.tower_output).unsqueeze(1)
        return out.last_hidden_state

    def embed(self, inputs: list[Any]) -> np.ndarray:
        """Encode a batch of decoded items (the modality's decoder output) and pool each item's valid tokens
        to K vectors: float32 (B, K, D)."""
        return self.embed_counted(inputs)[0]

    def embed_counted(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``embed`` plus each item's number of valid encoder tokens (text tokens, patches, frames): int64 (B,)."""
        torch = self.torch
        with torch.inference_mode():
            hidden, lengths = self.spec.forward(self, inputs)
            valid = lengths.clamp(max=hidden.shape[1])
            if self.enc.sequence:
                kept = padded_tokens(hidden.float(), valid, self.enc.max_tokens)
                longest = int(valid.max()) if len(valid) else 0
                if longest > self.enc.max_tokens and not getattr(self, "_cut_said", False):
                    self._cut_said = True
                    log.warning("%s: an item has %d tokens; only its first %d are kept (encoders.%s.max_tokens)",
                                self.modality.value, longest, self.enc.max_tokens, self.modality.value)
            else:
                kept = pool_tokens(hidden.float(), valid, self.enc.tokens)
            return kept.cpu().numpy(), lengths.cpu().numpy().astype(np.int64)


class Serialized:
    """A processor that threads may share: one call at a time. A fast tokenizer sets its padding and truncation
    on the shared Rust object in each call, and two calls at once fail with "Already borrowed"; the model's
    forward, the heavy part, runs outside this lock. Attributes (``sampling_rate``, ...) pass through."""

    def __init__(self, processor: Any):
        self._processor, self._lock = processor, threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._processor(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)


def padded_tokens(hidden, lengths, cap: int):
    """Each item's first ``min(lengths[b], cap)`` tokens, then zero vectors up to ``cap`` (``tokens: all``).

    hidden: (B, T, D) float tensor; lengths: (B,) valid token counts (at least 1). Returns (B, cap, D). A zero vector
    is padding wherever features have more than one token (``pipeline.model.token_mask``).
    """
    import torch

    kept = hidden[:, :cap]
    valid = torch.arange(kept.shape[1], device=hidden.device)[None, :] < lengths.to(hidden.device)[:, None]
    kept = kept * valid.to(kept.dtype).unsqueeze(-1)
    return torch.nn.functional.pad(kept, (0, 0, 0, cap - kept.shape[1]))


def pool_tokens(hidden, lengths, k: int):
    """Adaptive average pooling of each item's first ``lengths[b]`` tokens to ``k`` tokens.

    hidden: (B, T, D) float tensor; lengths: (B,) valid token counts. Returns (B, k, D).
    Padding never enters the average.
    """
    import torch

    if k == 1:
        mask = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths.to(hidden.device)[:, None])
        mask = mask.to(hidden.dtype).unsqueeze(-1)
        return ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).unsqueeze(1)
    pooled = [torch.nn.functional.adaptive_avg_pool1d(hidden[b, : int(n)].T.unsqueeze(0), k)[0].T
              for b, n in enumerate(lengths.tolist())]
    return torch.stack(pooled)
