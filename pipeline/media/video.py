"""Video decoding through ffmpeg: N uniformly sampled RGB frames at the encoder's size."""
from __future__ import annotations

import math
import time

import numpy as np

from pipeline.media.errors import DecodeError
from pipeline.media.ffmpeg import media_input, run_ffmpeg, stream_seconds

# the ffmpeg demuxers video may be read by (names as `ffmpeg -demuxers` prints them)
DEMUXERS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "mpegts", "ogg")


def decode_video(source: str | bytes, num_frames: int, size_hw: tuple[int, int], max_seconds: float,
                 timeout_s: float, ffmpeg: str, threads: int = 0) -> np.ndarray:
    """Decode ``num_frames`` frames spread uniformly over the clip at ``source`` (a path, or bytes given on
    ffmpeg's stdin): uint8 (N, H, W, 3), with at most ``threads`` decoder/filter threads (0: ffmpeg's choice).

    The clip's length comes from its packet timestamps (``stream_seconds``); clips over
    ``max_seconds`` are an error. Frames are scaled to cover ``size_hw`` and centre-cropped to it;
    at most about 2N are decoded, whatever the container claims. Clips with fewer frames than asked
    repeat frames uniformly. ``timeout_s`` bounds both ffmpeg runs together. Raises DecodeError.
    """
    height, width = size_hw
    deadline = time.monotonic() + timeout_s
    duration = stream_seconds(ffmpeg, source, DEMUXERS, "v", max_seconds, timeout_s, "video", threads)
    if duration > max_seconds:
        raise DecodeError(f"video runs past {duration:.1f} s, over limits.max_video_seconds={max_seconds:g}")
    # oversample 2x so that uniform picks land near the ideal instants
    fps = min(60.0, 2.0 * num_frames / max(duration, 1 / 60))
    most = math.ceil(fps * (duration + 0.5)) + 2  # what that sampling can yield: the cap on frames decoded
    vf = (f"fps={fps:.6f},scale={width}:{height}:force_original_aspect_ratio=increase,"
          f"crop={width}:{height}")
    node = media_input(source, DEMUXERS, threads, t=f"{duration + 0.5:.3f}").output(
        "pipe:1", an=None, vf=vf, f="rawvideo", pix_fmt="rgb24", **{"frames:v": most})
    frame_bytes = height * width * 3
    raw = run_ffmpeg(ffmpeg, node, max(0.1, deadline - time.monotonic()), "video", most * frame_bytes, source, DEMUXERS,
                     f"limits.max_video_seconds={max_seconds:g}", threads)
    count = len(raw) // frame_bytes
    if count == 0:
        raise DecodeError("no video frames decoded: expected a file with a video stream")
    frames = np.frombuffer(raw[: count * frame_bytes], dtype=np.uint8).reshape(count, height, width, 3)
    picks = np.linspace(0, count - 1, num_frames).round().astype(int)
    return frames[picks].copy()
