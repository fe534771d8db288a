"""Decoders: every listed format decodes to the expected array; bad input raises a clear DecodeError."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from pipeline.media.audio import decode_audio
from pipeline.media.errors import DecodeError
from pipeline.media.ffmpeg import find_ffmpeg
from pipeline.media.image import decode_image
from pipeline.media.video import decode_video
from pipeline.modality import Modality
from pipeline.synthetic.draw import clip, encode_audio, encode_video, tone
from tests.media_factory import jpeg_with_orientation, png_bytes, write_bad_media

AUDIO_FORMATS = Modality("audio").spec.synthetic.formats
VIDEO_FORMATS = Modality("video").spec.synthetic.formats

FFMPEG = find_ffmpeg()


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return write_bad_media(str(tmp_path_factory.mktemp("bad")), FFMPEG)


def test_image_decodes_png_to_rgb_uint8():
    arr = decode_image(png_bytes((96, 64)), max_pixels=10**6, target_hw=(224, 224))
    assert arr.shape == (64, 96, 3) and arr.dtype == np.uint8
    assert tuple(arr[0, 0]) == (200, 30, 30)


def test_image_large_input_is_shrunk_to_twice_the_encoder_size_keeping_aspect():
    arr = decode_image(png_bytes((1000, 500)), max_pixels=10**7, target_hw=(32, 32))
    assert arr.shape == (32, 64, 3)


def test_image_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    jpeg_with_orientation(str(path), size=(80, 40), orientation=6)
    arr = decode_image(path.read_bytes(), max_pixels=10**6, target_hw=(224, 224))
    assert arr.shape[:2] == (80, 40)  # displayed upright: portrait


@pytest.mark.parametrize("kind,message", [
    ("truncated_image", "corrupt or truncated image"),
    ("garbage_image", "not an image format"),
    ("text_as_image", "not an image format"),
    ("bomb_image", "over limits.max_image_pixels=1000000"),
])
def test_bad_images_raise_named_errors(bad, kind, message):
    with open(bad[kind], "rb") as fh:
        data = fh.read()
    with pytest.raises(DecodeError, match=message):
        decode_image(data, max_pixels=1_000_000, target_hw=(32, 32))


def test_empty_image_bytes_raise():
    with pytest.raises(DecodeError, match="empty file"):
        decode_image(b"", max_pixels=10, target_hw=(32, 32))


@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_audio_formats_decode_to_mono_float32_at_the_encoder_rate(tmp_path, fmt):
    path = str(tmp_path / f"tone.{fmt}")
    encode_audio(path, tone("red", "circle", seconds=1.0), FFMPEG)
    wave = decode_audio(path, 16000, max_seconds=10, timeout_s=30, ffmpeg=FFMPEG)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) < 1600  # lossy codecs pad a little
    assert 0.05 < np.abs(wave).max() <= 1.0


def test_audio_is_resampled(tmp_path):
    path = str(tmp_path / "tone.wav")
    encode_audio(path, tone("red", "circle", seconds=1.0), FFMPEG)
    assert len(decode_audio(path, 8000, 10, 30, FFMPEG)) == 8000


@pytest.mark.parametrize("kind,message", [
    ("garbage_audio", "ffmpeg could not decode audio"),
    ("long_audio", "longer than limits.max_audio_seconds=3"),
    ("garbage_video", "ffmpeg could not"),
])
def test_bad_audio_raises_named_errors(bad, kind, message):
    with pytest.raises(DecodeError, match=message):
        decode_audio(bad[kind], 16000, max_seconds=3, timeout_s=30, ffmpeg=FFMPEG)


@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
def test_video_formats_decode_to_n_frames_at_the_encoder_size(tmp_path, fmt):
    path = str(tmp_path / f"clip.{fmt}")
    encode_video(path, clip("blue", "square", frames=8, size=64), 8, FFMPEG)
    frames = decode_video(path, num_frames=4, size_hw=(32, 48), max_seconds=10, timeout_s=30, ffmpeg=FFMPEG)
    assert frames.shape == (4, 32, 48, 3) and frames.dtype == np.uint8


def test_video_frames_are_spread_over_the_clip(tmp_path):
    path = str(tmp_path / "slide.mp4")
    encode_video(path, clip("red", "square", frames=16, size=64), 8, FFMPEG)
    frames = decode_video(path, num_frames=4, size_hw=(64, 64), max_seconds=10, timeout_s=30, ffmpeg=FFMPEG)
    # the square slides left to right: the red mass's centre must move right frame after frame
    centres = [np.nonzero((f[..., 0] > 150) & (f[..., 1] < 100))[1].mean() for f in frames]
    assert all(b > a for a, b in zip(centres, centres[1:])), centres


def test_short_clip_repeats_frames(tmp_path):
    path = str(tmp_path / "short.mp4")
    encode_video(path, clip("red", "circle", frames=2, size=32), 8, FFMPEG)
    frames = decode_video(path, num_frames=8, size_hw=(32, 32), max_seconds=10, timeout_s=30, ffmpeg=FFMPEG)
    assert frames.shape[0] == 8


@pytest.mark.parametrize("kind,message", [
    ("garbage_video", "ffmpeg could not decode video: Error opening input files: Invalid data found"),
    ("audio_only_video", "no video stream in the file: expected a file with a video stream"),
    ("truncated_video", "ffmpeg could not decode video: Error opening input files: Invalid data found"),
])
def test_bad_video_raises_named_errors(bad, kind, message):
    with pytest.raises(DecodeError, match=f"^{message}"):
        decode_video(bad[kind], 4, (32, 32), max_seconds=10, timeout_s=30, ffmpeg=FFMPEG)


def test_video_over_the_duration_limit_is_refused(tmp_path):
    path = str(tmp_path / "long.mp4")
    encode_video(path, clip("red", "circle", frames=40, size=32), 8, FFMPEG)  # 5 s
    with pytest.raises(DecodeError, match="over limits.max_video_seconds=2"):
        decode_video(path, 4, (32, 32), max_seconds=2, timeout_s=30, ffmpeg=FFMPEG)


def test_a_hung_decoder_is_killed_after_the_timeout(tmp_path):
    hung = tmp_path / "ffmpeg"
    hung.write_text("#!/bin/sh\nsleep 60\n")
    hung.chmod(hung.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(DecodeError, match="timed out after 1 s"):
        decode_audio(str(tmp_path / "any.wav"), 16000, 10, timeout_s=1, ffmpeg=str(hung))


def test_ffmpeg_is_found_without_configuration():
    assert os.access(find_ffmpeg(), os.X_OK)


def test_a_missing_explicit_ffmpeg_is_named():
    with pytest.raises(FileNotFoundError, match="/no/such/ffmpeg"):
        find_ffmpeg("/no/such/ffmpeg")


def test_media_bytes_decode_on_ffmpeg_stdin_as_from_the_file_except_mp4(tmp_path):
    """Bytes (a tar member, an S3 object, an API payload) go to ffmpeg's stdin, no temp file, and decode as the
    file does; MP4/M4A (whose index may sit at the end) and MP3 (gapless trimming) still go through a file. Each
    ffmpeg run gets the threads it is given."""
    from pipeline.config import LimitsConfig
    from pipeline.media.decode import DecodeSettings, decode_bytes
    from pipeline.media.ffmpeg import pipe_ok
    from pipeline.modalities import InputSpec
    from pipeline.modality import Modality

    calls = tmp_path / "calls.log"
    wrapper = tmp_path / "logging-ffmpeg"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexec {FFMPEG} \"$@\"\n")
    wrapper.chmod(0o755)
    spec = InputSpec(image_hw=(32, 32), sample_rate=16000, num_frames=4)
    wave = tone("red", "circle", seconds=0.5)
    cases = [("audio", fmt) for fmt in AUDIO_FORMATS] + [("video", fmt) for fmt in VIDEO_FORMATS]
    for modality, fmt in cases:
        path = str(tmp_path / f"{modality}.{fmt}")
        if modality == "audio":
            encode_audio(path, wave, FFMPEG)
            from_file = decode_audio(path, 16000, 30, 30, FFMPEG)
        else:
            encode_video(path, clip("red", "circle", frames=8, size=48), 8, FFMPEG)
            from_file = decode_video(path, 4, (32, 32), 30, 30, FFMPEG)
        data = open(path, "rb").read()
        calls.write_text("")
        settings = DecodeSettings(Modality(modality), spec, LimitsConfig(), {}, str(wrapper), ffmpeg_threads=1)
        np.testing.assert_array_equal(decode_bytes(data, settings), from_file, err_msg=fmt)
        runs = calls.read_text().splitlines()
        seeking = fmt in ("m4a", "mp4", "mp3")
        assert pipe_ok(data) is not seeking, fmt
        assert all(("pipe:0" in run) is not seeking and ("oneencoder-" in run) is seeking for run in runs), (fmt, runs)
        assert all("-threads 1 " in run and "-filter_threads 1" in run for run in runs), runs
