"""Video decoding through ffmpeg: N uniformly sampled RGB frames at the encoder's size."""
from __future__ import annotations

import numpy as np

from pipeline.media.errors import DecodeError
from pipeline.media.ffmpeg import read_duration, run_ffmpeg

_FALLBACK_FPS = 4.0  # sampling rate when the container does not state its duration


def decode_video(path: str, num_frames: int, size_hw: tuple[int, int], max_seconds: float,
                 timeout_s: float, ffmpeg: str) -> np.ndarray:
    """Decode ``num_frames`` frames spread uniformly over the clip at ``path``: uint8 (N, H, W, 3).

    Frames are scaled to cover ``size_hw`` and centre-cropped to it. Clips with fewer frames than
    asked repeat frames uniformly. Raises DecodeError (also for clips over ``max_seconds``).
    """
    height, width = size_hw
    duration = read_duration(ffmpeg, path, timeout_s)
    if duration is not None and duration > max_seconds:
        raise DecodeError(f"video is {duration:.1f} s long, over limits.max_video_seconds={max_seconds:g}")
    # oversample 2x so that uniform picks land near the ideal instants
    fps = min(60.0, 2.0 * num_frames / duration) if duration else _FALLBACK_FPS
    vf = (f"fps={fps:.6f},scale={width}:{height}:force_original_aspect_ratio=increase,"
          f"crop={width}:{height}")
    args = ["-i", path, "-t", f"{max_seconds + 0.5:.3f}", "-an", "-vf", vf,
            "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    raw = run_ffmpeg(ffmpeg, args, timeout_s, "video")
    frame_bytes = height * width * 3
    count = len(raw) // frame_bytes
    if count == 0:
        raise DecodeError("no video frames decoded: expected a file with a video stream")
    if duration is None and count > fps * max_seconds:
        raise DecodeError(f"video is longer than limits.max_video_seconds={max_seconds:g}")
    frames = np.frombuffer(raw[: count * frame_bytes], dtype=np.uint8).reshape(count, height, width, 3)
    picks = np.linspace(0, count - 1, num_frames).round().astype(int)
    return frames[picks].copy()
