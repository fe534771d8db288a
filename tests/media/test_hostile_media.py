"""Media that lies about what it is: decoders open only accepted containers, read only the item, bound
its length by what it holds (not by what its header or banner says) and never echo where it lies."""
from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest

from pipeline.media.audio import decode_audio
from pipeline.media.errors import DecodeError
from pipeline.media.ffmpeg import find_ffmpeg, media_input, run_ffmpeg
from pipeline.media.image import decode_image
from pipeline.media.video import decode_video
from tests.media_factory import write_bad_media, write_hostile_media

FFMPEG = find_ffmpeg()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return write_hostile_media(str(tmp_path_factory.mktemp("hostile")), FFMPEG)


def _video(path: str, max_seconds: float = 10, timeout_s: float = 20) -> np.ndarray:
    return decode_video(path, 4, (32, 32), max_seconds=max_seconds, timeout_s=timeout_s, ffmpeg=FFMPEG)


def _audio(path: str, timeout_s: float = 20) -> np.ndarray:
    return decode_audio(path, 16000, max_seconds=10, timeout_s=timeout_s, ffmpeg=FFMPEG)


@pytest.mark.parametrize("kind", ["hls", "hls_url", "live_hls", "concat"])
def test_playlists_and_scripts_are_refused_without_opening_what_they_name(hostile, kind):
    """An HLS playlist or ffconcat script given as a clip would make ffmpeg read the file it names."""
    for modality, decode in (("video", _video), ("audio", _audio)):
        started = time.monotonic()
        with pytest.raises(DecodeError, match=f"not an accepted {modality} container") as info:
            decode(hostile[f"{kind}_{modality}"])
        assert time.monotonic() - started < 5, "a refused container must not wait on a playlist"
        assert "secret" not in str(info.value)


def test_an_image_is_not_a_one_frame_video(hostile):
    with pytest.raises(DecodeError, match="not an accepted video container"):
        _video(hostile["png_as_video"])


def test_a_banner_line_in_the_metadata_does_not_shorten_a_long_clip(hostile):
    """The 5 s clip's title prints "Duration: 00:00:01.00" before the real Duration line."""
    with pytest.raises(DecodeError, match="over limits.max_video_seconds=2"):
        _video(hostile["spoofed_duration"], max_seconds=2)
    assert _video(hostile["spoofed_duration"], max_seconds=10).shape == (4, 32, 32, 3)


def test_ffmpeg_output_is_capped_whatever_the_input_claims(tmp_path):
    from pipeline.synthetic.draw import clip, encode_video

    path = str(tmp_path / "clip.mp4")
    encode_video(path, clip("red", "circle", frames=16, size=64), 8, FFMPEG)
    node = media_input(path, ("mov,mp4,m4a,3gp,3g2,mj2",)).output("pipe:1", f="rawvideo", pix_fmt="rgb24")
    assert len(run_ffmpeg(FFMPEG, node, 20, "video", 16 * 64 * 64 * 3)) == 16 * 64 * 64 * 3
    with pytest.raises(DecodeError, match="more than 100000 bytes: over the limits"):
        run_ffmpeg(FFMPEG, node, 20, "video", 100_000)


def test_errors_do_not_name_where_the_item_lies(tmp_path):
    bad = write_bad_media(str(tmp_path / "a-private-folder"), FFMPEG)
    for path, decode in ((bad["garbage_video"], _video), (bad["garbage_audio"], _audio),
                         (bad["truncated_video"], _video)):
        with pytest.raises(DecodeError) as info:
            decode(path)
        assert "a-private-folder" not in str(info.value) and os.path.basename(path) not in str(info.value), info.value


@pytest.mark.parametrize("kind", ["eps_image", "pcx_image", "tga_image", "ico_image"])
def test_images_open_only_as_accepted_formats(hostile, kind, monkeypatch):
    """EPS would be handed to Ghostscript; the other formats are readable by Pillow but not accepted."""
    import subprocess

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"an image decode started a process: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    with open(hostile[kind], "rb") as fh:
        data = fh.read()
    with pytest.raises(DecodeError, match="not an image format we accept: expected JPEG, PNG"):
        decode_image(data, max_pixels=10**6, target_hw=(32, 32))


def test_camera_jpegs_opened_as_mpo_are_accepted():
    from PIL import Image

    first, second = Image.new("RGB", (40, 30), (250, 0, 0)), Image.new("RGB", (40, 30), (0, 0, 250))
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    assert decode_image(buf.getvalue(), max_pixels=10**6, target_hw=(32, 32)).shape == (30, 40, 3)
