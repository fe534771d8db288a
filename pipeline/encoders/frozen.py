"""A frozen Hugging Face encoder: its own processor, batched forward, pooling to K tokens."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np

from pipeline.config import EncoderConfig
from pipeline.encoders.presets import EncoderRef
from pipeline.modality import Modality

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the decoders must produce for an encoder (read from its processor/config files only)."""

    image_hw: tuple[int, int] = (224, 224)
    sample_rate: int = 16000
    num_frames: int = 16


def read_input_spec(ref: EncoderRef, enc: EncoderConfig) -> InputSpec:
    """Input sizes for ``ref`` from its preprocessor and model config JSON (no weights, no transformers import)."""
    if ref.modality is Modality.TEXT:
        return InputSpec()
    pre = _config_json(ref, "preprocessor_config.json")
    if ref.modality is Modality.AUDIO:
        return InputSpec(sample_rate=int(pre.get("sampling_rate", 16000)))
    hw = _processor_hw(pre)
    if ref.modality is Modality.VIDEO:
        frames = enc.num_frames or int(_config_json(ref, "config.json").get("num_frames", 16))
        return InputSpec(image_hw=hw, num_frames=frames)
    return InputSpec(image_hw=hw)


def _config_json(ref: EncoderRef, filename: str) -> dict[str, Any]:
    source = ref.materialize()
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{ref.modality.value} encoder folder {source} has no {filename}: "
                                    "expected a save_pretrained() folder with its processor files")
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(source, filename, revision=ref.revision)
        except Exception as e:
            raise FileNotFoundError(
                f"cannot get {filename} of {ref.modality.value} encoder {source!r} ({type(e).__name__}): it is not in "
                "the local Hugging Face cache and the hub is unreachable; download it where the hub is reachable, "
                f"or set encoders.{ref.modality.value}.model to a local folder") from None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _processor_hw(pre: dict[str, Any]) -> tuple[int, int]:
    for key in ("crop_size", "size"):
        size = pre.get(key)
        if isinstance(size, int):
            return size, size
        if not isinstance(size, dict):
            continue
        if size.get("height") and size.get("width"):
            return int(size["height"]), int(size["width"])
        if size.get("shortest_edge"):
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    return 224, 224


class FrozenEncoder:
    """A pre-trained encoder in eval mode with gradients off; ``embed`` maps inputs to (B, K, D) arrays."""

    def __init__(self, ref: EncoderRef, enc: EncoderConfig):
        import torch
        from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoModel, AutoTokenizer

        self.torch = torch
        self.modality = ref.modality
        self.enc = enc
        threads = enc.torch_threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        self.device = "cuda" if enc.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        source = ref.materialize()
        loaders = {Modality.IMAGE: AutoImageProcessor, Modality.VIDEO: AutoImageProcessor,
                   Modality.TEXT: AutoTokenizer, Modality.AUDIO: AutoFeatureExtractor}
        self.processor = loaders[ref.modality].from_pretrained(source, revision=ref.revision)
        model = AutoModel.from_pretrained(source, revision=ref.revision)
        dtype = getattr(torch, enc.precision) if self.device == "cuda" else torch.float32
        self.model = model.to(self.device, dtype=dtype).eval().requires_grad_(False)
        self.dtype = dtype
        self.dim = int(self.model.config.hidden_size)
        log.info("loaded %s encoder %s on %s (%d threads)", ref.modality.value, ref.name, self.device, threads)

    def embed(self, inputs: list[Any]) -> np.ndarray:
        """Encode a batch and pool each item's valid tokens to K vectors: float32 (B, K, D).

        ``inputs``: RGB uint8 (H, W, 3) images, strings, float32 waveforms, or uint8 (T, H, W, 3) clips.
        """
        return self.embed_counted(inputs)[0]

    def embed_counted(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``embed`` plus each item's number of valid encoder tokens (text tokens, patches, frames): int64 (B,)."""
        torch = self.torch
        with torch.inference_mode():
            hidden, lengths = self._forward(inputs)
            return pool_tokens(hidden.float(), lengths, self.enc.tokens).cpu().numpy(), lengths.cpu().numpy().astype(np.int64)

    def _forward(self, inputs: list[Any]):
        torch = self.torch
        if self.modality is Modality.TEXT:
            limit = self.enc.max_text_tokens or int(self.model.config.max_position_embeddings)
            batch = self.processor(inputs, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            out = self.model(**batch.to(self.device)).last_hidden_state
            return out, batch["attention_mask"].sum(dim=1)
        if self.modality is Modality.AUDIO:
            return self._forward_audio(inputs)
        if self.modality is Modality.VIDEO:
            batch = self.processor([list(clip) for clip in inputs], return_tensors="pt")
        else:
            batch = self.processor(images=inputs, return_tensors="pt")
        out = self.model(pixel_values=batch["pixel_values"].to(self.device, self.dtype)).last_hidden_state
        return out, torch.full((out.shape[0],), out.shape[1])

    def _forward_audio(self, waves: list[np.ndarray]):
        """Waveforms → (B, T, D) and valid frame counts.

        Models with group-norm feature encoders (wav2vec2-base) cannot mask padding: zeros appended
        to a short clip change its features. Those run one clip at a time; layer-norm models
        (feat_extract_norm="layer") run batched with an attention mask.
        """
        torch = self.torch
        sr = int(self.processor.sampling_rate)
        if getattr(self.model.config, "feat_extract_norm", "group") != "layer":
            outs = [self._forward_audio_batch([w], sr) for w in waves]
            width = max(o.shape[1] for o in outs)
            hidden = torch.cat([torch.nn.functional.pad(o, (0, 0, 0, width - o.shape[1])) for o in outs])
        else:
            hidden = self._forward_audio_batch(waves, sr)
        raw = torch.tensor([len(w) for w in waves])
        lengths = self.model._get_feat_extract_output_lengths(raw).clamp(min=1, max=hidden.shape[1])
        return hidden, lengths

    def _forward_audio_batch(self, waves: list[np.ndarray], sr: int):
        batch = self.processor(waves, sampling_rate=sr, padding=True, return_attention_mask=True, return_tensors="pt")
        kwargs = {"input_values": batch["input_values"].to(self.device, self.dtype)}
        if len(waves) > 1:
            kwargs["attention_mask"] = batch["attention_mask"].to(self.device)
        return self.model(**kwargs).last_hidden_state


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
