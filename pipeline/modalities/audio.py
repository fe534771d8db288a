"""Audio: decoded by ffmpeg from allow-listed containers to mono float32 at the encoder's rate; wav2vec2 (paper),
any feature-extractor model, the CLAP audio tower."""
from __future__ import annotations

from typing import Any

from pipeline.media.audio import decode_audio
from pipeline.modalities.base import InputSpec, Limit, ModalitySpec, Synthetic


def decode(source: str | bytes, settings: Any):
    """A local audio file (or its bytes) → mono float32 waveform (samples,) at the encoder's sample rate."""
    lim = settings.limits
    return decode_audio(source, settings.spec.sample_rate, lim.max_audio_seconds, lim.decode_timeout_s, settings.ffmpeg,
                        settings.ffmpeg_threads)


def input_spec(pre: dict, config: dict, enc: Any) -> InputSpec:
    return InputSpec(sample_rate=int(pre.get("sampling_rate", 16000)))


def forward(encoder: Any, waves: list[Any]):
    """Waveforms → (B, T, D) and valid frame counts.

    Models with group-norm feature encoders (wav2vec2-base) cannot mask padding: zeros appended to a
    short clip change its features. Those run one clip at a time; layer-norm models
    (feat_extract_norm="layer") run batched with an attention mask. A tower (CLAP) gives one pooled vector.
    """
    import torch

    sr = int(encoder.processor.sampling_rate)
    if encoder.tower_output:
        batch = encoder.processor(waves, sampling_rate=sr, return_tensors="pt")
        hidden = encoder.run(**batch.to(encoder.device))
        return hidden, torch.ones(len(waves), dtype=torch.long)
    if getattr(encoder.model.config, "feat_extract_norm", "group") != "layer":
        outs = [_batch(encoder, [w], sr) for w in waves]
        width = max(o.shape[1] for o in outs)
        hidden = torch.cat([torch.nn.functional.pad(o, (0, 0, 0, width - o.shape[1])) for o in outs])
    else:
        hidden = _batch(encoder, waves, sr)
    raw = torch.tensor([len(w) for w in waves])
    lengths = encoder.model._get_feat_extract_output_lengths(raw).clamp(min=1, max=hidden.shape[1])
    return hidden, lengths


def _batch(encoder: Any, waves: list[Any], sr: int):
    batch = encoder.processor(waves, sampling_rate=sr, padding=True, return_attention_mask=True, return_tensors="pt")
    kwargs = {"input_values": batch["input_values"].to(encoder.device, encoder.dtype)}
    if len(waves) > 1:
        kwargs["attention_mask"] = batch["attention_mask"].to(encoder.device)
    return encoder.run(**kwargs)


def build_tiny(dest: str) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                         feat_extract_norm="layer", do_stable_layer_norm=True)  # maskable: batched path
    Wav2Vec2Model(cfg).save_pretrained(dest)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(dest)


def build_paper(dest: str) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(dest)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=False).save_pretrained(dest)



def write_sample(scene: Any, rng: Any, path: str | None) -> None:
    """A one-second tone of ``scene`` (16 kHz mono; ``scene.vary``: detuned and noisy) in ``path``'s format."""
    import numpy as np

    from pipeline.media.ffmpeg import find_ffmpeg
    from pipeline.synthetic.draw import encode_audio, tone

    wave = tone(scene.colour, scene.shape, detune=float(rng.normal(1.0, 0.02)) if scene.vary else 1.0)
    if scene.vary:
        wave = wave + rng.normal(0, 0.02, wave.shape).astype(np.float32)
    encode_audio(path, wave, "" if path.endswith(".wav") else find_ffmpeg())


def draw_sample(scene: Any, rng: Any):
    """The decoded tone of ``scene``: float32, one second at 16 kHz, in its style's voice and noise."""
    import numpy as np

    from pipeline.synthetic.draw import tone

    wave = tone(scene.colour, scene.shape, detune=scene.detune, base=scene.base, harmonics=scene.harmonics)
    return (wave + rng.normal(0, scene.noise, wave.shape)).astype(np.float32)


SPEC = ModalitySpec(
    name="audio", inline=False, reads="file", decode=decode, forward=forward, processor="AutoFeatureExtractor",
    tower="audio", paper_model="facebook/wav2vec2-base-960h", builds={"tiny": build_tiny, "paper": build_paper},
    mime_types=("audio/*",), extensions=(".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".aiff", ".mka"),
    input_spec=input_spec, decoded_dtype="float32",
    decoded_bytes=lambda spec, limits: int(4 * spec.sample_rate * limits.max_audio_seconds),
    limits={"max_audio_seconds": Limit(float, 60.0, 30.0, "Longest audio accepted; longer is an error, not silently cut.")},
    synthetic=Synthetic(write_sample, draw_sample, folder="audio", formats=("wav", "flac", "mp3", "ogg", "m4a")))
