"""Seeded mutation fuzzing of the shared decode path (the embed job's decode_item), per modality.

Valid files of every accepted format are truncated, bit-flipped, overwritten, spliced onto other
formats' headers and passed off as another modality. Whatever the bytes, decoding must return the
array the encoder takes or raise DecodeError/ReadError (the job's error row, the server's 400):
never another exception, never past the time limit. Even cases go through the job's path
(``decode_item`` on a file), odd ones through the server's (``decode_bytes`` on the payload).
"""
from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from pipeline.config import LimitsConfig
from pipeline.media.decode import DecodeSettings, decode_bytes, decode_item
from pipeline.media.errors import DecodeError
from pipeline.media.ffmpeg import find_ffmpeg
from pipeline.modalities import InputSpec
from pipeline.modality import Modality
from pipeline.store.errors import ReadError
from pipeline.modalities.depth import depth_map, write_depth
from pipeline.synthetic.draw import clip, draw_shape, encode_audio, encode_video, tone

AUDIO_FORMATS = Modality("audio").spec.synthetic.formats
DEPTH_FORMATS = Modality("depth").spec.synthetic.formats
VIDEO_FORMATS = Modality("video").spec.synthetic.formats

CASES = 300           # mutated inputs per modality in the slow tier's full pass
FAST_CASES = 40       # the fast tier's pass: the same seeded cases, the first of them
TIMEOUT_S = 10.0      # limits.decode_timeout_s in this test
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, list[bytes]]:
    """Valid files per modality, in every format the corpus writes."""
    folder, ffmpeg = tmp_path_factory.mktemp("seeds"), find_ffmpeg()
    out: dict[str, list[bytes]] = {"image": [], "audio": [], "video": [], "depth": []}
    for fmt in IMAGE_FORMATS:
        buf = io.BytesIO()
        draw_shape("red", "circle", size=48).save(buf, fmt)
        out["image"].append(buf.getvalue())
    for fmt in AUDIO_FORMATS:
        encode_audio(str(folder / f"a.{fmt}"), tone("blue", "square", seconds=0.5), ffmpeg)
        out["audio"].append((folder / f"a.{fmt}").read_bytes())
    for fmt in VIDEO_FORMATS:
        encode_video(str(folder / f"v.{fmt}"), clip("green", "triangle", frames=6, size=32), 8, ffmpeg)
        out["video"].append((folder / f"v.{fmt}").read_bytes())
    for fmt in DEPTH_FORMATS:
        write_depth(str(folder / f"d.{fmt}"), depth_map("blue", "cross", size=48))
        out["depth"].append((folder / f"d.{fmt}").read_bytes())
    return out


def mutate(rng: np.random.Generator, data: bytes, others: list[bytes]) -> tuple[str, bytes]:
    """One mutation of ``data``: (what was done, the new bytes)."""
    kind = rng.integers(6)
    buf = bytearray(data)
    if kind == 0:
        cut = int(rng.integers(0, len(buf)))
        return f"truncated at {cut}", bytes(buf[:cut])
    if kind == 1:
        for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 64))):
            buf[pos] ^= 1 << int(rng.integers(8))
        return "bit flips", bytes(buf)
    if kind == 2:
        start = int(rng.integers(0, len(buf)))
        size = int(rng.integers(1, 512))
        buf[start:start + size] = rng.bytes(min(size, len(buf) - start))
        return f"overwritten at {start}", bytes(buf)
    other = others[int(rng.integers(len(others)))]
    if kind == 3:
        head = int(rng.integers(4, 256))
        return f"spliced header ({head} bytes)", other[:head] + data[head:]
    if kind == 4:
        return "another format or modality", other
    pos = int(rng.integers(0, len(buf)))
    return f"inserted bytes at {pos}", bytes(buf[:pos]) + rng.bytes(int(rng.integers(1, 4096))) + bytes(buf[pos:])


@pytest.mark.parametrize("cases", [FAST_CASES, pytest.param(CASES, marks=pytest.mark.slow)], ids=["fast", "full"])
@pytest.mark.parametrize("modality", ["image", "audio", "video", "depth"])
def test_mutated_media_decodes_or_fails_with_a_named_error_in_time(seeds, modality, cases, tmp_path):
    m = Modality.parse(modality)
    spec = InputSpec(image_hw=(32, 32), sample_rate=16000, num_frames=4)
    limits = LimitsConfig(max_file_bytes=1 << 20, max_audio_seconds=5, max_video_seconds=5, decode_timeout_s=TIMEOUT_S)
    settings = DecodeSettings(m, spec, limits, {}, find_ffmpeg())
    rng = np.random.default_rng({"image": 1, "audio": 2, "video": 3, "depth": 4}[modality])
    others = [b for values in seeds.values() for b in values] + [b"#EXTM3U\n#EXTINF:1,\n/etc/hostname\n", b""]
    outcomes = {"decoded": 0, "refused": 0}
    for case in range(cases):
        what, data = mutate(rng, seeds[modality][case % len(seeds[modality])], others)
        path = tmp_path / f"case-{case}"
        path.write_bytes(data)
        started = time.monotonic()
        try:
            array = decode_item(str(path), settings) if case % 2 == 0 else decode_bytes(data, settings)
        except (DecodeError, ReadError) as e:
            assert str(e), (case, what)
            outcomes["refused"] += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"case {case} ({what}): {type(e).__name__} escaped: {e}") from e
        else:
            expected = {"image": (3,), "audio": (), "video": (4, 32, 32, 3), "depth": ()}[modality]
            assert array.shape[-len(expected):] == expected if expected else array.ndim == (2 if m == "depth" else 1), \
                (case, what, array.shape)
            assert m != "depth" or (array.dtype == np.float32 and 0 <= array.min() and array.max() == 1), (case, what)
            outcomes["decoded"] += 1
        assert time.monotonic() - started < TIMEOUT_S + 2, (case, what)
        os.remove(path)
    # both outcomes occur: the mutations neither all break the file nor all leave it intact
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0, outcomes


def test_a_decoded_image_is_what_pillow_reads(seeds):
    """The image seeds round-trip: the fuzzer's starting points are valid files."""
    for data in seeds["image"]:
        assert Image.open(io.BytesIO(data)).size == (48, 48)
