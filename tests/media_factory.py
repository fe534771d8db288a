"""Builders of good and bad media files for the tests."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from pipeline.synthetic.draw import clip, draw_shape, encode_audio, encode_video, tone


def png_bytes(size=(96, 64), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def jpeg_with_orientation(path: str, size=(80, 40), orientation: int = 6) -> None:
    """A landscape JPEG whose EXIF says 'rotate 90° clockwise' (so it displays as portrait)."""
    img = Image.new("RGB", size, (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, "JPEG", exif=exif.tobytes())


def write_bad_media(folder: str, ffmpeg: str) -> dict[str, str]:
    """Write one file per kind of bad input; returns kind -> path."""
    os.makedirs(folder, exist_ok=True)
    good_png = png_bytes()
    paths = {}

    def put(name: str, data: bytes) -> str:
        path = os.path.join(folder, name)
        with open(path, "wb") as fh:
            fh.write(data)
        return path

    paths["truncated_image"] = put("truncated.png", good_png[: len(good_png) // 2])
    paths["garbage_image"] = put("garbage.jpg", np.random.default_rng(1).bytes(5000))
    paths["empty_image"] = put("empty.png", b"")
    paths["text_as_image"] = put("notes.png", b"hello, I am not an image\n")
    big = Image.new("RGB", (2000, 1500), (1, 2, 3))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    paths["bomb_image"] = put("bomb.png", buf.getvalue())  # 3 MP: over the tests' 1 MP limit
    paths["oversized_image"] = put("huge.png", good_png + b"\0" * 300_000)  # over the tests' 200 kB file limit
    paths["garbage_audio"] = put("garbage.wav", np.random.default_rng(2).bytes(4000))
    paths["empty_audio"] = put("empty.mp3", b"")
    long_tone = np.tile(tone("red", "circle"), 5)
    paths["long_audio"] = os.path.join(folder, "long.flac")
    encode_audio(paths["long_audio"], long_tone, ffmpeg)  # 5 s: over the tests' 3 s limit
    paths["garbage_video"] = put("garbage.mp4", np.random.default_rng(3).bytes(6000))
    paths["audio_only_video"] = os.path.join(folder, "no-video.mkv")
    encode_audio(paths["audio_only_video"], tone("blue", "square"), ffmpeg)
    good_video = os.path.join(folder, "good.mp4")
    encode_video(good_video, clip("red", "circle"), 8, ffmpeg)
    with open(good_video, "rb") as fh:
        data = fh.read()
    paths["truncated_video"] = put("truncated.mp4", data[: len(data) // 3])
    return paths


def draw(colour="red", shape="circle") -> Image.Image:
    return draw_shape(colour, shape)


def write_hostile_media(folder: str, ffmpeg: str) -> dict[str, str]:
    """Files that claim to be media but make a careless decoder do something else; returns kind -> path.

    Each playlist or script names a real clip/tone beside it ("secret"), which must never be read.
    """
    import subprocess

    os.makedirs(folder, exist_ok=True)
    secret_video, secret_audio = os.path.join(folder, "secret.mp4"), os.path.join(folder, "secret.wav")
    encode_video(secret_video, clip("green", "square"), 8, ffmpeg)
    encode_audio(secret_audio, tone("green", "square"), ffmpeg)
    paths = {}

    def put(name: str, text: str) -> str:
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path

    for kind, secret in (("video", secret_video), ("audio", secret_audio)):
        hls = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n"
        paths[f"hls_{kind}"] = put(f"playlist-{kind}.m3u8", hls)
        paths[f"hls_url_{kind}"] = put(f"url-{kind}.m3u8", hls.replace(secret, "file://" + secret))
        # a live playlist that never ends: a decoder that follows it waits for new segments
        paths[f"live_hls_{kind}"] = put(f"live-{kind}.m3u8", hls.replace("#EXT-X-ENDLIST\n", ""))
        paths[f"concat_{kind}"] = put(f"script-{kind}.ffconcat",
                                      f"ffconcat version 1.0\nfile {os.path.basename(secret)}\n")
    # a 5 s clip whose title holds a fake banner line: "Duration: 00:00:01.00" is printed before the real one
    paths["spoofed_duration"] = os.path.join(folder, "spoofed.mp4")
    long_clip = os.path.join(folder, "long.mp4")
    encode_video(long_clip, clip("red", "circle", frames=40, size=32), 8, ffmpeg)
    subprocess.run([ffmpeg, "-y", "-v", "error", "-i", long_clip, "-c", "copy", "-metadata",
                    "title=x\n  Duration: 00:00:01.00, start: 0.000000, bitrate: 1 kb/s", paths["spoofed_duration"]],
                   check=True, capture_output=True)
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(buf, "PNG")
    paths["png_as_video"] = os.path.join(folder, "still.mp4")
    with open(paths["png_as_video"], "wb") as fh:
        fh.write(buf.getvalue())  # the image2/png_pipe demuxer would make it a one-frame "video"
    paths["eps_image"] = put("figure.eps", "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
                                           "newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")
    for fmt, ext in (("PCX", "pcx"), ("TGA", "tga"), ("ICO", "ico")):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, fmt)
        paths[f"{ext}_image"] = os.path.join(folder, f"odd.{ext}")
        with open(paths[f"{ext}_image"], "wb") as fh:
            fh.write(buf.getvalue())
    return paths


def tar_add(tar, name: str, data: bytes) -> None:
    """Add a regular member ``name`` holding ``data`` to an open tarfile."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(manifest: str, dest: str, per_shard: int, modalities=("image", "text", "audio", "video")) -> list[str]:
    """The sample corpus at ``manifest`` as WebDataset shards (``key.<ext>`` members, a ``key.json`` beside them),
    ``per_shard`` samples each, written as ``dest/shard-000000.tar``...; returns the shard paths."""
    import json
    import tarfile

    folder = os.path.dirname(manifest)
    with open(manifest) as fh:
        rows = [json.loads(line) for line in fh]
    os.makedirs(dest, exist_ok=True)
    paths = []
    for s in range(0, len(rows), per_shard):
        paths.append(os.path.join(dest, f"shard-{s // per_shard:06d}.tar"))
        with tarfile.open(paths[-1], "w") as tar:
            for row in rows[s:s + per_shard]:
                for m in modalities:
                    if m == "text":
                        tar_add(tar, f"{row['id']}.txt", row["text"].encode())
                    else:
                        with open(os.path.join(folder, row[m]), "rb") as media:
                            tar_add(tar, row["id"] + os.path.splitext(row[m])[1], media.read())
                tar_add(tar, f"{row['id']}.json", json.dumps({"key": row["id"]}).encode())
    return paths


def write_img2dataset(sample_corpus: str, folder: str, shards: int = 3, per_shard: int = 4,
                      media: str = "image") -> list[str]:
    """Shards as img2dataset writes them: ``00000.tar`` with ``key.jpg``, ``key.txt``, ``key.json`` per downloaded
    sample, and ``00000.parquet`` beside it with a row per URL tried (the last of each shard failed to download,
    so it is in the Parquet only). ``media="video"``: as video2dataset writes them (``key.mp4`` for ``key.jpg``;
    the corpus's .mp4 videos only). Returns the tar paths."""
    import json
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = os.path.dirname(sample_corpus)
    with open(sample_corpus) as fh:
        samples = [json.loads(line) for line in fh]
    ext = {"image": "jpg", "video": "mp4"}[media]
    samples = [s for s in samples if s[media].endswith("." + ext)]
    paths = []
    for s in range(shards):
        paths.append(os.path.join(folder, f"{s:05d}.tar"))
        meta = []
        with tarfile.open(paths[-1], "w") as tar:
            for i in range(per_shard):
                sample = samples[(s * per_shard + i) % len(samples)]
                key = f"{s:05d}{i:04d}"
                ok = i < per_shard - 1
                meta.append({"url": f"https://example.com/{key}.{ext}", "caption": sample["text"], "key": key,
                             "status": "success" if ok else "failed_to_download",
                             "error_message": None if ok else "HTTP 404"})
                if ok:
                    with open(os.path.join(corpus, sample[media]), "rb") as fh:
                        tar_add(tar, f"{key}.{ext}", fh.read())
                    tar_add(tar, f"{key}.txt", sample["text"].encode())
                    tar_add(tar, f"{key}.json", json.dumps(meta[-1]).encode())
        pq.write_table(pa.Table.from_pylist(meta), os.path.join(folder, f"{s:05d}.parquet"))
    return paths
