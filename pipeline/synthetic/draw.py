"""Drawing primitives of the generated corpora, and the styles a concept is rendered in (``Scene``).

The same (colour, shape) concept is shared by an item's image, caption, tone, clip and depth map: the colour
is the image's fill, the tone's pitch and the depth map's distance; the shape is the image's outline and the
tone's rhythm. Needs only Pillow, numpy and ffmpeg (for compressed audio and video files).
"""
from __future__ import annotations

import dataclasses
import subprocess
import wave

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
           "purple": (140, 50, 170), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle", "cross")
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
    paint_shape(ImageDraw.Draw(img), shape, *placement(size, offset, scale, vertical), fill=fill or COLOURS[colour])
    return img


def placement(size: int, offset: float, scale: float, vertical: bool) -> tuple[float, float, float]:
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
    import ffmpeg as ffmpeg_python

    source = ffmpeg_python.input("pipe:0", f="f32le", ar=SAMPLE_RATE, ac=1)
    _pipe(ffmpeg, source.output(path), path, samples.tobytes())


def encode_video(path: str, frames: np.ndarray, fps: int, ffmpeg: str) -> None:
    """Write uint8 frames (T, H, W, 3) as ``path`` (mp4/mkv: H.264, webm: VP8)."""
    import ffmpeg as ffmpeg_python

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



# The styles a concept corpus is drawn in. "suite": the test suite's. "other": unseen by anything tuned on the
# suite's: other caption templates, another voice (pitch range and timbre), shapes of other sizes moving top to
# bottom, more noise. "hard": the suite's captions and voice, but pictures and clips in which the concept is
# harder to see (its colour mixed with another of the palette, a grey shape beside it, pixel noise), so that
# image and video retrieval stay below 1.0 and a worse model shows.
STYLES = ("suite", "other", "hard")
OTHER_CAPTIONS = ("one {c} {s}", "this shows a {c} {s}", "{s}, {c}", "a {c}-coloured {s} on a pale ground",
                  "look: a {s} in {c}", "there is a {c} {s} here")


@dataclasses.dataclass(frozen=True)
class Look:
    """How a picture of the hard style hides its concept: its fill (the colour mixed with another of the
    palette), the shape's radius, and a grey distractor shape at ``at`` (0 - 1, left to right) below it."""

    fill: tuple[int, int, int]
    scale: float
    distractor: str
    grey: tuple[int, int, int]
    at: float


@dataclasses.dataclass(frozen=True)
class Scene:
    """One sample's concept and how each modality renders it: what ``ModalitySpec.synthetic`` draws from.

    ``vary``: files of a sample corpus differ between samples of one concept (caption templates, detuned and
    noisy tones); without it every concept is written one way. The other fields are the decoded inputs'
    per-sample variation (``scene``), drawn before any modality renders."""

    colour: str
    shape: str
    style: str = "suite"
    vary: bool = False
    detune: float = 1.0                         # the tone's pitch factor
    base: float = 220.0                         # the voice's lowest pitch (Hz)
    harmonics: tuple[float, ...] = (1.0,)       # the voice's timbre (amplitude of each multiple of the pitch)
    noise: float = 0.02                         # the tone's Gaussian noise (sigma)
    offset: float = 0.0                         # where the shape sits, 0 - 1 along its axis
    scale: float = 0.3                          # the shape's radius, a share of the picture
    vertical: bool = False                      # the shape moves top to bottom (else left to right)
    look: Look | None = None                    # the hard style's pictures
    captions: tuple[str, ...] = CAPTIONS        # caption templates ({c}: colour, {s}: shape)


def scene(i: int, rng: np.random.Generator, style: str = "suite") -> Scene:
    """Sample ``i``'s concept in ``style`` with its per-sample variation drawn from ``rng``."""
    colour, shape = concept(i)
    if style == "suite":
        return Scene(colour, shape, style, detune=float(rng.normal(1.0, 0.02)), offset=float(rng.uniform()))
    if style == "hard":
        detune, offset = float(rng.normal(1.0, 0.02)), float(rng.uniform())
        return Scene(colour, shape, style, detune=detune, offset=offset, look=_hard_look(colour, rng))
    if style != "other":
        raise ValueError(f"style {style!r}: expected one of {', '.join(STYLES)}")
    detune, scale, offset = float(rng.normal(1.0, 0.03)), float(rng.uniform(0.2, 0.35)), float(rng.uniform())
    return Scene(colour, shape, style, detune=detune, base=330.0, harmonics=(1.0, 0.5, 0.25), noise=0.03,
                 offset=offset, scale=scale, vertical=True, captions=OTHER_CAPTIONS)


def _hard_look(colour: str, rng: np.random.Generator) -> Look:
    """The colour mixed with another of the palette (up to 45 %), a grey distractor shape elsewhere, and a shape
    radius of 0.2 - 0.3 of the picture."""
    others = [c for c in COLOURS if c != colour]
    mix, towards = float(rng.uniform(0, 0.45)), np.array(COLOURS[others[int(rng.integers(len(others)))]])
    fill = tuple(int(v) for v in (1 - mix) * np.array(COLOURS[colour]) + mix * towards)
    grey = int(rng.integers(90, 170))
    scale = float(rng.uniform(0.2, 0.3))
    distractor = SHAPES[int(rng.integers(len(SHAPES)))]
    return Look(fill, scale, distractor, (grey, grey, grey), float(rng.uniform(0.15, 0.85)))


def pictures(s: Scene, size: int, offsets: list[float], rng: np.random.Generator) -> np.ndarray:
    """uint8 (len(offsets), size, size, 3): the scene's shape at each offset along its axis; in the hard style
    with its look (mixed fill, the grey distractor in the lower part of the picture, pixel noise of sigma 20)."""
    if s.look is None:
        return np.stack([np.asarray(draw_shape(s.colour, s.shape, size, o, rng, scale=s.scale, vertical=s.vertical))
                         for o in offsets])
    frames = []
    for o in offsets:
        img = draw_shape(s.colour, s.shape, size=size, offset=o, rng=rng, scale=s.look.scale, fill=s.look.fill)
        paint_shape(ImageDraw.Draw(img), s.look.distractor, size * s.look.at, size * 0.85, size * 0.12, fill=s.look.grey)
        noisy = np.asarray(img).astype(np.float32) + rng.normal(0, 20, (size, size, 3))
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return np.stack(frames)
