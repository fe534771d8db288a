"""Locate and run ffmpeg.

We never call ffprobe (imageio-ffmpeg ships only ffmpeg): stream facts are read from ffmpeg's own
banner, and raw frames / PCM are requested at a fixed size and rate, so counting bytes is enough.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from pipeline.media.errors import DecodeError

_DURATION = re.compile(r"Duration:\s*(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")


def find_ffmpeg(explicit: str | None = None) -> str:
    """Return the ffmpeg executable: ``explicit``, $ONEENCODER_FFMPEG, ffmpeg on PATH, or imageio-ffmpeg's.

    Raises FileNotFoundError saying how to get one.
    """
    for candidate in (explicit, os.environ.get("ONEENCODER_FFMPEG")):
        if candidate:
            path = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
            if not path:
                raise FileNotFoundError(f"ffmpeg binary {candidate!r} not found or not executable")
            return path
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as e:  # the package is a dependency; this names the fix if it is broken
        raise FileNotFoundError(
            f"no ffmpeg on PATH and imageio-ffmpeg's binary is unavailable ({e}); "
            "install ffmpeg or reinstall the project (pip install -e .)") from None


def run_ffmpeg(ffmpeg: str, args: list[str], timeout_s: float, what: str) -> bytes:
    """Run ``ffmpeg -nostdin -v error ARGS`` and return stdout.

    Raises DecodeError on a non-zero exit (with ffmpeg's last message) or after ``timeout_s``
    (the process is killed: a hung decoder never hangs the job).
    """
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-v", "error", *args]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise DecodeError(f"ffmpeg timed out after {timeout_s:g} s decoding {what} (limits.decode_timeout_s)") from None
    if proc.returncode != 0:
        raise DecodeError(f"ffmpeg could not decode {what}: {_last_line(proc.stderr)}")
    return proc.stdout


def read_duration(ffmpeg: str, source: str, timeout_s: float) -> float | None:
    """Container duration in seconds from ffmpeg's banner, or None when the container does not say."""
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-i", source]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise DecodeError(f"ffmpeg timed out after {timeout_s:g} s reading the header (limits.decode_timeout_s)") from None
    text = proc.stderr.decode("utf-8", "replace")
    if "Invalid data found" in text or "No such file" in text or "moov atom not found" in text:
        raise DecodeError(f"ffmpeg could not read the container: {_last_line(proc.stderr)}")
    match = _DURATION.search(text)
    if not match:
        return None
    h, m, s = match.groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message (exit status non-zero)"
