"""Generated paired corpora: coloured shapes drawn, captioned, sounded and animated.

Used by the quickstart, the tests and the benchmarks; needs only Pillow, numpy and ffmpeg.
The same (colour, shape) concept is shared by an item's image, caption, tone, clip and depth map.
"""
from __future__ import annotations

import json
import os
import subprocess
import wave

import ffmpeg as ffmpeg_python
import numpy as np
from PIL import Image, ImageDraw
from pydantic import Field, field_validator

from pipeline.config import StrictModel
from pipeline.media.ffmpeg import find_ffmpeg
from pipeline.modality import Modality

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
           "purple": (140, 50, 170), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle", "cross")
AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg", "m4a")
VIDEO_FORMATS = ("mp4", "webm", "mkv")
DEPTH_FORMATS = ("png", "npy", "tiff")  # 16-bit PNG (mm), .npy (uint16 mm), float TIFF (metres)
CAPTIONS = ("a {c} {s}", "a picture of a {c} {s}", "{c} {s}", "the {s} is {c}", "a small {c} {s}")
SAMPLE_RATE = 16000


def concept(i: int) -> tuple[str, str]:
    """The (colour, shape) of sample ``i``."""
    colours = list(COLOURS)
    return colours[i % len(colours)], SHAPES[(i // len(colours)) % len(SHAPES)]


def draw_shape(colour: str, shape: str, size: int = 96, offset: float = 0.0, rng: np.random.Generator | None = None,
               scale: float = 0.3, vertical: bool = False, fill: tuple[int, int, int] | None = None) -> Image.Image:
    """An RGB image of ``shape`` in ``colour`` (or the RGB ``fill`` given) on a light background, of radius
    ``scale`` x size, shifted by ``offset`` in [0, 1) left to right (or top to bottom with ``vertical``)."""
    rng = rng or np.random.default_rng(0)
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    paint_shape(ImageDraw.Draw(img), shape, *_placement(size, offset, scale, vertical), fill=fill or COLOURS[colour])
    return img


def depth_map(colour: str, shape: str, size: int = 96, offset: float = 0.0, scale: float = 0.3,
              vertical: bool = False) -> np.ndarray:
    """A depth map of ``draw_shape``'s scene, uint16 millimetres (size, size): a wall 4 m away and the shape in
    front of it, nearer the earlier its colour is in COLOURS (so a map holds the colour as a distance)."""
    img = Image.new("I", (size, size), 4000)
    near = 1000 + 400 * list(COLOURS).index(colour)
    paint_shape(ImageDraw.Draw(img), shape, *_placement(size, offset, scale, vertical), fill=near)
    return np.asarray(img).astype(np.uint16)


def _placement(size: int, offset: float, scale: float, vertical: bool) -> tuple[float, float, float]:
    """(centre x, centre y, radius) of a shape shifted by ``offset`` in [0, 1) along its axis."""
    cx, cy = size * (0.3 + 0.4 * offset), size * 0.5
    return (cy, cx, size * scale) if vertical else (cx, cy, size * scale)


def paint_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        w = r / 3
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)


def tone(colour: str, shape: str, seconds: float = 1.0, detune: float = 1.0, base: float = 220.0,
         harmonics: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """A float32 waveform whose pitch encodes the colour and whose rhythm encodes the shape; ``base`` (Hz) and
    ``harmonics`` (amplitude of each multiple of the pitch) make the voice."""
    pitch = base * 2 ** (list(COLOURS).index(colour) / 4) * detune
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    beats = 1 + SHAPES.index(shape)
    envelope = (np.sin(np.pi * beats * t / seconds) ** 2)
    voice = sum(a * np.sin(2 * np.pi * pitch * (h + 1) * t) for h, a in enumerate(harmonics)) / sum(harmonics)
    return (0.5 * envelope * voice).astype(np.float32)


def write_wav(path: str, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM mono WAV."""
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def encode_audio(path: str, samples: np.ndarray, ffmpeg: str) -> None:
    """Write ``samples`` (16 kHz mono float32) in the container named by ``path``'s extension."""
    if path.endswith(".wav"):
        write_wav(path, samples)
        return
    source = ffmpeg_python.input("pipe:0", f="f32le", ar=SAMPLE_RATE, ac=1)
    _pipe(ffmpeg, source.output(path), path, samples.tobytes())


def encode_video(path: str, frames: np.ndarray, fps: int, ffmpeg: str) -> None:
    """Write uint8 frames (T, H, W, 3) as ``path`` (mp4/mkv: H.264, webm: VP8)."""
    t, h, w, _ = frames.shape
    codec = {"c:v": "libvpx", "b:v": "200k"} if path.endswith(".webm") else {"c:v": "libx264", "preset": "ultrafast"}
    source = ffmpeg_python.input("pipe:0", f="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", r=fps)
    _pipe(ffmpeg, source.output(path, pix_fmt="yuv420p", **codec), path, frames.tobytes())


def _pipe(ffmpeg: str, stream, path: str, data: bytes) -> None:
    cmd = stream.overwrite_output().global_args("-hide_banner", "-v", "error").compile(cmd=ffmpeg)
    proc = subprocess.run(cmd, input=data, capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}: {proc.stderr.decode(errors='replace')[-300:]}")


def clip(colour: str, shape: str, frames: int = 8, size: int = 64, rng: np.random.Generator | None = None,
         **draw) -> np.ndarray:
    """A short clip of the shape sliding left to right (``draw``: draw_shape's scale, vertical): uint8 (frames, size, size, 3)."""
    return np.stack([np.asarray(draw_shape(colour, shape, size, f / max(frames - 1, 1), rng, **draw)) for f in range(frames)])


def write_depth(path: str, millimetres: np.ndarray) -> None:
    """Save a uint16 depth map as ``path``'s format: 16-bit PNG or .npy in millimetres, float32 TIFF in metres."""
    if path.endswith(".npy"):
        np.save(path, millimetres)
    elif path.endswith((".tif", ".tiff")):
        Image.fromarray(millimetres.astype(np.float32) / 1000, mode="F").save(path)
    else:
        Image.fromarray(millimetres).save(path)  # uint16 -> mode I;16 -> a 16-bit greyscale PNG


def write_sample_corpus(dest: str, n: int = 24, seed: int = 0, ffmpeg: str | None = None,
                        modalities: tuple[str, ...] = ("image", "text", "audio", "video"), vary: bool = False) -> str:
    """Write ``n`` paired samples and ``dest/manifest.jsonl`` (relative URIs); return the manifest path.

    With ``vary``, captions use several templates and tones are detuned and noisy, so samples of
    one concept differ (training corpora); without it every concept is rendered one way.

    Images alternate PNG/JPEG, audio cycles wav/flac/mp3/ogg/m4a, video cycles mp4/webm/mkv, depth maps (only
    when ``modalities`` names depth) cycle 16-bit PNG/.npy/float TIFF.
    """
    rng = np.random.default_rng(seed)
    ffmpeg = find_ffmpeg(ffmpeg) if {"audio", "video"} & set(modalities) else ""
    for sub in ("images", "audio", "video", "depth"):
        os.makedirs(os.path.join(dest, sub), exist_ok=True)
    rows = []
    for i in range(n):
        colour, shape = concept(i)
        row: dict[str, str] = {"id": f"s{i:05d}"}
        if "image" in modalities:
            name = f"images/{i:05d}.{'png' if i % 2 == 0 else 'jpg'}"
            draw_shape(colour, shape, rng=rng).save(os.path.join(dest, name))
            row["image"] = name
        if "text" in modalities:
            template = CAPTIONS[int(rng.integers(len(CAPTIONS)))] if vary else CAPTIONS[0]
            row["text"] = template.format(c=colour, s=shape)
        if "audio" in modalities:
            name = f"audio/{i:05d}.{AUDIO_FORMATS[i % len(AUDIO_FORMATS)]}"
            wave = tone(colour, shape, detune=float(rng.normal(1.0, 0.02)) if vary else 1.0)
            if vary:
                wave = wave + rng.normal(0, 0.02, wave.shape).astype(np.float32)
            encode_audio(os.path.join(dest, name), wave, ffmpeg)
            row["audio"] = name
        if "video" in modalities:
            name = f"video/{i:05d}.{VIDEO_FORMATS[i % len(VIDEO_FORMATS)]}"
            encode_video(os.path.join(dest, name), clip(colour, shape, rng=rng), 8, ffmpeg)
            row["video"] = name
        if "depth" in modalities:
            name = f"depth/{i:05d}.{DEPTH_FORMATS[i % len(DEPTH_FORMATS)]}"
            write_depth(os.path.join(dest, name), depth_map(colour, shape))
            row["depth"] = name
        rows.append(row)
    manifest = os.path.join(dest, "manifest.jsonl")
    with open(manifest, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return manifest


class SampleCorpusConfig(StrictModel):
    dest: str = Field(description="Folder to write (images/, audio/, video/, depth/ and manifest.jsonl).")
    n: int = Field(24, ge=1, description="Number of samples.")
    modalities: list[Modality] = Field([Modality("image"), Modality("text"), Modality("audio"), Modality("video")],
                                       min_length=1, description="Columns to write, e.g. image,text,depth.")

    @field_validator("modalities", mode="before")
    @classmethod
    def _split(cls, value):
        return [m for m in value.split(",") if m.strip()] if isinstance(value, str) else value


def run(cfg: SampleCorpusConfig, args: object = None) -> int:
    """`oneencoder sample-corpus DEST`: write it and print the manifest's path."""
    print(write_sample_corpus(cfg.dest, n=cfg.n, modalities=tuple(cfg.modalities)))
    return 0


if __name__ == "__main__":
    import sys

    from jobs import registry

    sys.exit(registry.main("sample-corpus"))
