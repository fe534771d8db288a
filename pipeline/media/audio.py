"""Audio decoding through ffmpeg: any container ffmpeg reads → mono float32 at a fixed rate."""
from __future__ import annotations

import numpy as np

from pipeline.media.errors import DecodeError
from pipeline.media.ffmpeg import run_ffmpeg


def decode_audio(path: str, sample_rate: int, max_seconds: float, timeout_s: float, ffmpeg: str) -> np.ndarray:
    """Decode the audio file at ``path`` to a mono float32 waveform (samples,) at ``sample_rate``.

    Audio longer than ``max_seconds`` is an error, not silently cut. Raises DecodeError.
    """
    # decode a little past the limit so "longer than the limit" is observable without a probe
    args = ["-i", path, "-t", f"{max_seconds + 0.1:.3f}", "-vn", "-ac", "1", "-ar", str(sample_rate),
            "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    raw = run_ffmpeg(ffmpeg, args, timeout_s, "audio")
    samples = np.frombuffer(raw, dtype="<f4")
    if samples.size == 0:
        raise DecodeError("no audio samples decoded: expected a file with an audio stream")
    if samples.size > int(max_seconds * sample_rate) + sample_rate // 50:
        raise DecodeError(f"audio is longer than limits.max_audio_seconds={max_seconds:g} s")
    if not np.isfinite(samples).all():
        raise DecodeError("decoded audio holds non-finite samples")
    return samples.astype(np.float32, copy=True)
