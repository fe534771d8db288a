"""Locate and run ffmpeg on untrusted media.

Every command is built with ffmpeg-python and opens its input through ``media_input``: only the
demuxers a modality allows (no HLS/DASH playlists, concat scripts, image sequences, devices or
lavfi graphs, whatever the name or MIME type says), over the ``file`` protocol alone, or ``pipe`` alone
for media given as bytes on stdin (so nothing a container names — another file, a URL — can be opened). Each run is its own process: a decoder
that crashes takes nothing of ours with it, one that hangs is killed after the time limit, and its
output is read only up to a byte cap, so memory stays bounded whatever a header claims. We never
call ffprobe (imageio-ffmpeg ships only ffmpeg) and never parse ffmpeg's banner: lengths come from
the decoded output or from the demuxer's packet timestamps (``stream_seconds``).
"""
from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
import time

import ffmpeg as ffmpeg_python

from pipeline.media.errors import DecodeError

_STDERR_TAIL = 16_384  # bytes of ffmpeg's messages kept for the error text


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


# containers ffmpeg decodes from a pipe exactly as from a file (by their first bytes): WAV, W64, AIFF, FLAC,
# Ogg, Matroska/WebM, AVI, MPEG-TS. Not these: MP4/MOV/M4A (the index may sit at the end: ffmpeg must seek)
# and MP3 (its encoder-delay trimming reads the file twice; from a pipe the padding stays in)
_STREAMED = (re.compile(rb"RIFF....(WAVE|AVI )", re.S), re.compile(rb"riff"), re.compile(rb"FORM....AIF[FC]", re.S),
             re.compile(rb"fLaC"), re.compile(rb"OggS"), re.compile(rb"\x1a\x45\xdf\xa3"), re.compile(rb"\x47.{187}\x47", re.S))


def pipe_ok(data: bytes) -> bool:
    """Whether media ``data`` decodes from ffmpeg's stdin as it would from a file (see ``_STREAMED``); others go
    through a temporary file."""
    return any(p.match(data) for p in _STREAMED)


def media_input(source: str | bytes, demuxers: tuple[str, ...], threads: int = 0, **options):
    """An ffmpeg-python input that only ``demuxers`` may open: the local file ``source`` (that file alone, over
    the file protocol), or ``source``'s bytes given on stdin (the pipe protocol alone; see ``pipe_ok``).

    ``demuxers`` are ffmpeg demuxer names (``ffmpeg -demuxers``), e.g. ``"matroska,webm"``; ``threads`` > 0
    caps the decoder's threads (0: ffmpeg's choice, one per core).
    """
    if threads:
        options["threads"] = threads
    if isinstance(source, (bytes, bytearray)):
        return ffmpeg_python.input("pipe:0", format_whitelist=",".join(demuxers), protocol_whitelist="pipe", **options)
    return ffmpeg_python.input("file:" + os.path.abspath(source), format_whitelist=",".join(demuxers),
                               protocol_whitelist="file", **options)


def run_ffmpeg(ffmpeg: str, stream, timeout_s: float, what: str, max_output_bytes: int,
               source: str | bytes = "", accepted: tuple[str, ...] = (), over: str = "the limits",
               threads: int = 0) -> bytes:
    """Run the ffmpeg-python output ``stream`` with ``ffmpeg`` and return what it writes to stdout.

    ``source``: the input's path (left out of messages) or, for a ``media_input`` of bytes, those bytes
    (written to its stdin); ``threads`` > 0 caps the filter threads too. Raises DecodeError when ffmpeg fails
    (its last message; a container not among the ``accepted`` demuxers is named as such), after
    ``timeout_s`` or once stdout passes ``max_output_bytes`` (the process is killed either way; the
    error then says the item is ``over`` a limit).
    """
    data = source if isinstance(source, (bytes, bytearray)) else None
    flags = ["-hide_banner", "-nostats", "-v", "error"] + ([] if data is not None else ["-nostdin"])
    cmd = stream.global_args(*flags, *(["-filter_threads", str(threads)] if threads else [])).compile(cmd=ffmpeg)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL if data is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err, stopped = _collect(proc, time.monotonic() + timeout_s, max_output_bytes, data)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
    path = "" if data is not None else source
    if stopped == "timeout":
        raise DecodeError(f"ffmpeg timed out after {timeout_s:g} s decoding {what} (limits.decode_timeout_s)")
    if stopped == "size":
        raise DecodeError(f"{what} decodes to more than {max_output_bytes} bytes: over {over}")
    if proc.returncode != 0:
        raise DecodeError(_failure(what, err, path, accepted))
    return out


def stream_seconds(ffmpeg: str, source: str | bytes, demuxers: tuple[str, ...], stream: str, max_seconds: float,
                   timeout_s: float, what: str, threads: int = 0) -> float:
    """Seconds of the first ``stream`` ("v" or "a") of ``source`` (a path or bytes) up to its last packet, read up
    to ``max_seconds`` + 1 s. The demuxer's packet timestamps are copied, not decoded, so this costs a read of
    the input; header fields, which any muxer (or attacker) can fill in, are never used."""
    node = media_input(source, demuxers, threads, t=f"{max_seconds + 1:.3f}").output(
        "-", map=f"0:{stream}:0", c="copy", f="null").global_args("-progress", "pipe:1")
    report = run_ffmpeg(ffmpeg, node, timeout_s, what, 1 << 20, source, demuxers,
                        threads=threads).decode("ascii", "replace")
    times = re.findall(r"^out_time_us=(\d+)$", report, re.MULTILINE)
    if not times:
        raise DecodeError(f"no {what} packets found: expected a file with a {what} stream")
    return int(times[-1]) / 1e6


def _collect(proc: subprocess.Popen, deadline: float, max_output_bytes: int,
             data: bytes | None = None) -> tuple[bytes, bytes, str]:
    """Write ``data`` to stdin (if any) while reading stdout (up to the cap) and the tail of stderr until both
    close; '' or why reading stopped. ffmpeg may stop reading early (a time limit reached): that is no error."""
    out, err = bytearray(), bytearray()
    pending = memoryview(data) if data is not None else None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        if pending is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE, None)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(out), bytes(err), "timeout"
            for key, _ in sel.select(timeout=left):
                if key.data is None:  # stdin writable
                    try:
                        pending = pending[os.write(key.fd, pending[:1 << 16]):]
                    except (BrokenPipeError, BlockingIOError) as e:
                        if isinstance(e, BlockingIOError):
                            continue
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(key.fileobj)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 1 << 20)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if key.data is err:
                    del err[:-_STDERR_TAIL]
                elif len(out) > max_output_bytes:
                    return bytes(out), bytes(err), "size"
    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    return bytes(out), bytes(err), ""


def _failure(what: str, stderr: bytes, path: str, accepted: tuple[str, ...]) -> str:
    text = stderr.decode("utf-8", "replace")
    if "Format not on whitelist" in text:
        kinds = ", ".join(sorted({name for d in accepted for name in d.split(",")}))
        return (f"not an accepted {what} container (accepted: {kinds}); playlists, concat scripts, "
                "image sequences and other formats are refused whatever the name or MIME type says")
    if re.search(r"Protocol '[^']*' not on whitelist|Unsafe file name", text):
        return f"the {what} container refers to other files or URLs, which are never opened"
    if re.search(r"Stream map '[^']*' matches no streams|does not contain any stream", text):  # e.g. audio in a .mkv
        return f"no {what} stream in the file: expected a file with a {what} stream"
    return f"ffmpeg could not decode {what}: {_last_line(text, path)}"


def _last_line(text: str, path: str) -> str:
    if path:  # never echo where the server or job keeps the item
        text = text.replace("file:" + os.path.abspath(path), "<input>").replace(os.path.abspath(path), "<input>")
    lines = [re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", ln.strip()) for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message (exit status non-zero)"
