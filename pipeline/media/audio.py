"""Audio decoding through ffmpeg: an allow-listed container → mono float32 at a fixed rate."""
from __future__ import annotations

import numpy as np

from pipeline.media.errors import DecodeError
from pipeline.media.ffmpeg import media_input, run_ffmpeg

# the ffmpeg demuxers audio may be read by (names as `ffmpeg -demuxers` prints them)
DEMUXERS = ("wav", "w64", "flac", "mp3", "ogg", "aac", "aiff", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm")


def decode_audio(source: str | bytes, sample_rate: int, max_seconds: float, timeout_s: float, ffmpeg: str,
                 threads: int = 0) -> np.ndarray:
    """Decode the audio file at ``source`` (a path, or bytes given on ffmpeg's stdin) to a mono float32 waveform
    (samples,) at ``sample_rate``, with at most ``threads`` decoder threads (0: ffmpeg's choice).

    Audio longer than ``max_seconds`` is an error, not silently cut: ffmpeg decodes a little past
    the limit and the samples it returns are counted (never a header's claim); its output is capped
    just above that, so memory stays bounded whatever the file says. Raises DecodeError.
    """
    limit = int(max_seconds * sample_rate) + sample_rate // 50  # samples accepted
    node = media_input(source, DEMUXERS, threads, t=f"{max_seconds + 0.1:.3f}").output(
        "pipe:1", vn=None, ac=1, ar=sample_rate, f="f32le", acodec="pcm_f32le")
    over = f"limits.max_audio_seconds={max_seconds:g} s"
    raw = run_ffmpeg(ffmpeg, node, timeout_s, "audio", 4 * (limit + sample_rate // 5), source, DEMUXERS, over, threads)
    samples = np.frombuffer(raw, dtype="<f4")
    if samples.size == 0:
        raise DecodeError("no audio samples decoded: expected a file with an audio stream")
    if samples.size > limit:
        raise DecodeError(f"audio is longer than {over}")
    if not np.isfinite(samples).all():
        raise DecodeError("decoded audio holds non-finite samples")
    return samples.astype(np.float32, copy=True)
