"""Media decoding from S3 (images, audio, video): the embed job's read and decode path against a naive one.

    python -m benchmarks.decode [--items 24] [--seconds 10] [--formats jpg,flac,mp3,webm,mp4] [--report FILE]

In one run: generates one item per format, stores ``items`` copies of it as distinct objects on a local S3-compatible
server (moto in server mode, from the test extras) whose requests are counted, then decodes them with a
pool of ``workers`` processes (the decode tasks of the embed job, side by side) two ways:

- naive: what a straightforward reader does, composed of the same library functions: a HEAD (``check_file``)
  and a GET, then for audio and video a temporary file per object and ffmpeg at its own thread count (one
  per core);
- job: ``decode_item`` as the embed job calls it: one ranged GET, the bytes on ffmpeg's stdin where
  the container needs no seeking (FLAC, WAV, WebM, ...; MP4 and MP3 still go through a temporary file),
  ``decode.ffmpeg_threads`` threads per ffmpeg run (default 1).

For each format and path it prints items/s, CPU seconds per item (the worker and its ffmpeg processes) and
S3 requests per item. Targets are what large encoders take: images at 224x224 (ViT), audio at 48 kHz (CLAP's
rate; the paper preset's wav2vec2 takes 16 kHz),
video as 16 frames at 224x224 (VideoMAE). Images are decoded from memory (Pillow) both ways: only their reads
differ. With ``job_items`` it also runs the embed job on S3 and counts its requests per item. With
``plan_shards`` it plans img2dataset-shaped tar shards on S3 both ways (every tar's member headers; the
``.parquet`` img2dataset writes beside each tar) and counts the requests and bytes each reads per shard,
beside the shard's size (what indexing by headers cannot avoid reading on S3). With ``markers`` it writes
that many commit markers and times what a resume and a summary read of them, with ``marker_latency_ms``
added to every request (S3's first-byte latency; the local server answers in about 5 ms): one GET after
another (the naive way) against the listing alone (a resume) and one ``cat`` call (the summary).
"""
from __future__ import annotations

import logging
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from pydantic import Field, field_validator

from benchmarks.common import REPORT_HELP, benchmark, cli, finish
from pipeline.config import StrictModel

FORMATS = {"jpg": "image", "flac": "audio", "mp3": "audio", "wav": "audio", "webm": "video", "mp4": "video", "mkv": "video"}


class BenchmarkDecodeConfig(StrictModel):
    items: int = Field(24, ge=2, description="Objects decoded per format and path.")
    seconds: float = Field(10.0, gt=0, le=60, description="Length of each generated clip.")
    formats: list[str] = Field(["jpg", "flac", "mp3", "webm", "mp4"], min_length=1,
                               description=f"Clip formats, from {sorted(FORMATS)} (a list, or 'flac,webm').")
    workers: int | None = Field(None, ge=1, description="Decode processes side by side; null = one per CPU.")
    ffmpeg_threads: int = Field(1, ge=0, description="The job path's decode.ffmpeg_threads.")
    rounds: int = Field(2, ge=1, description="Timed passes per path (interleaved); the best is reported.")
    job_items: int = Field(256, ge=0, description="Also run the embed job (tiny preset) on this many objects of the "
                           "first format, manifest and output on the same S3 server, and count its requests per "
                           "item (0 = skip).")
    shard_size: int = Field(64, ge=1, description="The embed job's shard_size for job_items.")
    plan_shards: int = Field(4, ge=0, description="img2dataset-shaped tar shards planned both ways (0 = skip).")
    markers: int = Field(500, ge=0, description="Commit markers written and read back (0 = skip).")
    marker_latency_ms: float = Field(20.0, ge=0, description="Added to every S3 request while the markers are read.")
    plan_samples: int = Field(256, ge=1, description="Samples per planned shard (the first format's item, a caption "
                              "and a .json each; img2dataset writes 10,000 by default).")
    report: str | None = Field(None, description=REPORT_HELP)

    @field_validator("formats", mode="before")
    @classmethod
    def _split(cls, value):
        return [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value

    @field_validator("formats")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [f for f in value if f not in FORMATS]
        if unknown:
            raise ValueError(f"formats = {value}: {unknown} not among {sorted(FORMATS)}")
        return value


JOB = benchmark("decode", "media decoding from S3: requests, items/s and CPU per item, a naive read path "
                "against the job's", "benchmarks.decode:BenchmarkDecodeConfig")


def run(cfg: BenchmarkDecodeConfig, args: object = None) -> int:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # moto takes any; Ray's workers inherit them
        os.environ.setdefault(name, "bench")
    address = None
    if cfg.job_items:
        import ray

        from pipeline.runtime import init_ray

        init_ray()
        address = ray.get_runtime_context().gcs_address
    result = benchmark_decode(cfg, address)
    return finish("decode", cfg, result, format_decode)


class CountingS3:
    """moto's S3 app on a loopback port, behind a WSGI wrapper that logs each request's method and path."""

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        app = DomainDispatcherApplication(create_backend_app)
        self.requests: list[tuple[str, str]] = []
        self.sent: dict[str, int] = {}  # response body bytes by path
        self.delay_s = 0.0  # added to every request (latency)
        self._lock = threading.Lock()

        def counted(environ, start_response):
            with self._lock:
                self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
            if self.delay_s:
                time.sleep(self.delay_s)
            body, path = app(environ, start_response), environ.get("PATH_INFO", "")
            try:
                for piece in body:
                    with self._lock:
                        self.sent[path] = self.sent.get(path, 0) + len(piece)
                    yield piece
            finally:
                if hasattr(body, "close"):
                    body.close()

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self._server = make_server("127.0.0.1", port, counted, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{port}"

    def total(self) -> int:
        with self._lock:
            return len(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join()


def write_clip(folder: str, fmt: str, seconds: float) -> str:
    """One generated item: a 640x480 JPEG, a tone as 16 kHz audio, or a sliding shape as 25 fps 320x240 video."""
    import numpy as np

    from pipeline.media.ffmpeg import find_ffmpeg
    from pipeline.synthetic.draw import clip, encode_audio, encode_video, tone

    path = os.path.join(folder, f"clip.{fmt}")
    ffmpeg = find_ffmpeg()
    if FORMATS[fmt] == "image":
        from pipeline.synthetic.draw import draw_shape

        draw_shape("green", "triangle", size=480, rng=np.random.default_rng(0)).resize((640, 480)).save(path, quality=90)
    elif FORMATS[fmt] == "audio":
        encode_audio(path, tone("red", "circle", seconds=seconds, harmonics=(1.0, 0.5, 0.25)), ffmpeg)
    else:
        frames = clip("blue", "square", frames=max(2, int(25 * seconds)), size=240, rng=np.random.default_rng(0))
        encode_video(path, np.pad(frames, ((0, 0), (0, 0), (40, 40), (0, 0))), 25, ffmpeg)
    return path


def _settings(modality: str, endpoint: str, threads: int):
    from pipeline.config import LimitsConfig, StorageConfig
    from pipeline.media.decode import DecodeSettings
    from pipeline.media.ffmpeg import find_ffmpeg
    from pipeline.modalities import InputSpec
    from pipeline.modality import Modality
    from pipeline.store.sources import storage_options

    spec = InputSpec(image_hw=(224, 224), sample_rate=48_000, num_frames=16)
    options = storage_options(StorageConfig(endpoint_url=endpoint))
    return DecodeSettings(Modality(modality), spec, LimitsConfig(), options, find_ffmpeg(), None, threads)


def _decode_naive(uri: str, s) -> Any:
    """The naive decode path for an S3 object: HEAD, GET, then Pillow on the bytes, or ffmpeg (at its own
    threads) on a temporary file."""
    from pipeline.media.decode import _temp_copy
    from pipeline.store.sources import check_file

    fs, path = check_file(uri, s.storage, s.limits.max_file_bytes)
    with fs.open(path, "rb") as fh:
        data = fh.read(s.limits.max_file_bytes + 1)
    if s.modality.spec.reads == "bytes":
        return s.modality.spec.decode(data, s)
    with _temp_copy(data) as local:
        return s.modality.spec.decode(local, s)


def _decode_chunk(uris: list[str], modality: str, endpoint: str, path: str, threads: int) -> tuple[float, int]:
    """Decode ``uris`` in this worker: CPU seconds spent (this process and the ffmpeg runs it waited for)."""
    from pipeline.media.decode import decode_item

    s = _settings(modality, endpoint, 0 if path == "naive" else threads)
    before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    for uri in uris:
        out = _decode_naive(uri, s) if path == "naive" else decode_item(uri, s)
        if out is None or len(out) == 0:
            raise RuntimeError(f"nothing decoded from {uri}")
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
    return cpu, len(uris)


def benchmark_decode(cfg: BenchmarkDecodeConfig, address: str | None = None) -> dict[str, Any]:
    """The figures; ``address``: the Ray instance the embed job of ``job_items`` runs on."""
    import s3fs

    workers = cfg.workers or os.cpu_count() or 1
    s3 = CountingS3()
    try:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3.endpoint})
        fs.mkdir("decode-bench")
        rows = []
        with tempfile.TemporaryDirectory(prefix="oneencoder-decode-") as folder, \
                ProcessPoolExecutor(workers) as pool:
            for fmt in cfg.formats:
                data = open(write_clip(folder, fmt, cfg.seconds), "rb").read()
                uris = [f"s3://decode-bench/{fmt}/{i:05d}.{fmt}" for i in range(cfg.items)]
                for uri in uris:
                    fs.pipe_file(uri[len("s3://"):], data)
                modality = FORMATS[fmt]
                chunks = [uris[w::workers] for w in range(workers)]
                # warm-up: each worker imports and decodes one item before anything is timed
                list(pool.map(_decode_chunk, [uris[:1]] * workers, [modality] * workers, [s3.endpoint] * workers,
                              ["job"] * workers, [cfg.ffmpeg_threads] * workers))
                best: dict[str, dict[str, float]] = {}
                for _ in range(cfg.rounds):
                    for path in ("naive", "job"):
                        requests = s3.total()
                        start = time.perf_counter()
                        done = list(pool.map(_decode_chunk, chunks, [modality] * workers, [s3.endpoint] * workers,
                                             [path] * workers, [cfg.ffmpeg_threads] * workers))
                        wall = time.perf_counter() - start
                        figure = {"items_per_s": cfg.items / wall,
                                  "cpu_s_per_item": sum(c for c, _ in done) / cfg.items,
                                  "requests_per_item": (s3.total() - requests) / cfg.items}
                        if figure["items_per_s"] > best.get(path, {}).get("items_per_s", 0):
                            best[path] = figure
                rows.append({"format": fmt, "modality": modality, "bytes": len(data), **{
                    f"{path}_{k}": v for path, fig in best.items() for k, v in fig.items()},
                    "speedup": best["job"]["items_per_s"] / best["naive"]["items_per_s"]})
                if fmt == cfg.formats[0] and cfg.job_items:
                    fs.pipe_file(f"decode-bench/job/{fmt}.{fmt}", data)
        job = job_requests(cfg, s3, fs, address) if cfg.job_items else None
        plan = plan_requests(cfg, s3, fs) if cfg.plan_shards else None
        markers = marker_reads(cfg, s3) if cfg.markers else None
    finally:
        s3.close()
    return {"items": cfg.items, "seconds": cfg.seconds, "workers": workers, "cpus": os.cpu_count(),
            "ffmpeg_threads": cfg.ffmpeg_threads, "rounds": cfg.rounds, "formats": rows, "job": job, "plan": plan,
            "markers": markers}


def marker_reads(cfg: BenchmarkDecodeConfig, s3: CountingS3) -> dict[str, Any]:
    """``markers`` commit markers on S3: seconds to read them one GET after another (the naive way), to list them
    (what a resume needs) and to read them in one ``cat`` call (the summary), with ``marker_latency_ms`` added."""
    from pipeline.store.features import FeatureStore

    store = FeatureStore("s3://decode-bench/markers", {"client_kwargs": {"endpoint_url": s3.endpoint}})
    for shard in range(cfg.markers):
        store.write_marker("image", shard, {"features": shard, "dim": 8, "unique": shard, "errors": {}})
    s3.delay_s = cfg.marker_latency_ms / 1000
    try:
        timed: dict[str, float] = {}
        for name in ("list", "one_by_one", "cat"):
            store.fs.invalidate_cache()
            start = time.perf_counter()
            if name == "list":
                shards = store.committed_indexes("image")
            elif name == "one_by_one":
                before = {i: store.read_json(f"_progress/image/{store.shard_name(i)}.json") for i in
                          store.committed_indexes("image")}
            else:
                after = store.committed_shards("image")
            timed[name] = time.perf_counter() - start
    finally:
        s3.delay_s = 0.0
    if before != after or len(shards) != cfg.markers:
        raise RuntimeError("the two ways of reading the markers disagree")
    return {"markers": cfg.markers, "latency_ms": cfg.marker_latency_ms, **{f"{k}_s": v for k, v in timed.items()}}


def plan_requests(cfg: BenchmarkDecodeConfig, s3: CountingS3, fs) -> dict[str, Any]:
    """Plan ``plan_shards`` img2dataset-shaped shards on S3 by their headers and by their .parquet: requests, bytes
    and seconds per shard, beside the tar's size."""
    import io
    import json
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.store.manifest import plan_manifest

    with tempfile.TemporaryDirectory(prefix="oneencoder-plan-") as folder:
        data = open(write_clip(folder, "jpg", cfg.seconds), "rb").read()
    tar_bytes = 0
    for s in range(cfg.plan_shards):
        buffer, meta = io.BytesIO(), []
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for i in range(cfg.plan_samples):
                key = f"{s:05d}{i:04d}"
                meta.append({"url": f"https://example.com/{key}.jpg", "caption": f"caption {key}", "key": key,
                             "status": "success", "error_message": None})
                members = (("jpg", data), ("txt", meta[-1]["caption"].encode()), ("json", json.dumps(meta[-1]).encode()))
                for ext, blob in members:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
        fs.pipe_file(f"decode-bench/plan/{s:05d}.tar", buffer.getvalue())
        tar_bytes += len(buffer.getvalue())
        sidecar = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(meta), sidecar)
        fs.pipe_file(f"decode-bench/plan/{s:05d}.parquet", sidecar.getvalue())
    options = {"client_kwargs": {"endpoint_url": s3.endpoint}}
    out: dict[str, Any] = {"shards": cfg.plan_shards, "samples": cfg.plan_samples, "tar_bytes": tar_bytes / cfg.plan_shards}
    for how in ("headers", "auto"):
        with s3._lock:
            requests, sent = len(s3.requests), dict(s3.sent)
        start = time.perf_counter()
        plan = plan_manifest("s3://decode-bench/plan/", options, shard_size=cfg.shard_size, tar_index=how)
        wall = time.perf_counter() - start
        with s3._lock:
            read = {p: n - sent.get(p, 0) for p, n in s3.sent.items() if n > sent.get(p, 0)}
            out[how] = {"requests_per_shard": (len(s3.requests) - requests) / cfg.plan_shards,
                        "tar_bytes_read": sum(n for p, n in read.items() if p.endswith(".tar")),
                        "tars_read": sum(1 for p in read if p.endswith(".tar")),
                        "parquet_bytes_per_shard": sum(n for p, n in read.items() if p.endswith(".parquet")) / cfg.plan_shards,
                        "s_per_shard": wall / cfg.plan_shards, "rows": plan.rows, "sidecars": plan.sidecars}
    return out


def job_requests(cfg: BenchmarkDecodeConfig, s3: CountingS3, fs, address: str) -> dict[str, Any]:
    """The embed job (its own driver, on the Ray instance at ``address``) on ``job_items`` S3 objects, manifest and output on S3: its
    requests per item by method (reads of the manifest and media, part files, commits, markers)."""
    import json
    import subprocess

    fmt = cfg.formats[0]
    items = [f"decode-bench/job/{i:06d}.{fmt}" for i in range(cfg.job_items)]
    for key in items:
        fs.copy(f"decode-bench/job/{fmt}.{fmt}", key)
    fs.pipe_file("decode-bench/job/manifest.jsonl", "".join(
        json.dumps({"id": f"j{i}", FORMATS[fmt]: f"s3://{key}"}) + "\n" for i, key in enumerate(items)).encode())
    env = {**os.environ, "AWS_ENDPOINT_URL": s3.endpoint, "RAY_ADDRESS": address}
    cmd = [sys.executable, "-m", "jobs.embed", "--input", "s3://decode-bench/job/manifest.jsonl", "--output",
           "s3://decode-bench/job-out", "--preset", "tiny", "--shard-size", str(cfg.shard_size), "--overwrite"]
    start = s3.total()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"embed job on S3 failed ({done.returncode}):\n{done.stderr[-3000:]}")
    media = {f"/{key}" for key in items}
    counts: dict[str, int] = {}
    with s3._lock:
        for method, path in s3.requests[start:]:
            kind = "media" if path in media else "output" if path.startswith("/decode-bench/job-out") else "other"
            counts[f"{kind} {method}"] = counts.get(f"{kind} {method}", 0) + 1
    shards = -(-cfg.job_items // cfg.shard_size)
    total = sum(counts.values())
    media_reads = sum(n for k, n in counts.items() if k.startswith("media "))
    return {"items": cfg.job_items, "shard_size": cfg.shard_size, "shards": shards, "requests": counts,
            "requests_per_item": total / cfg.job_items, "media_requests_per_item": media_reads / cfg.job_items,
            "other_per_shard": (total - media_reads) / shards}


def format_decode(r: dict[str, Any]) -> str:
    lines = [f"decode benchmark: {r['items']} S3 objects per format, {r['seconds']:g} s clips, {r['workers']} decode "
             f"processes on {r['cpus']} CPUs, best of {r['rounds']}; naive = HEAD + GET + temp file + ffmpeg's "
             f"threads, job = ranged GET + stdin where possible + {r['ffmpeg_threads'] or 'all'} ffmpeg thread(s)",
             f"{'format':>7} {'KB':>6} {'naive/s':>9} {'job/s':>8} {'job/naive':>13} "
             f"{'CPU s/item naive':>18} {'job':>6} {'requests/item naive':>21} {'job':>6}"]
    for f in r["formats"]:
        lines.append(f"{f['format']:>7} {f['bytes'] / 1024:6.0f} {f['naive_items_per_s']:9.1f} "
                     f"{f['job_items_per_s']:8.1f} {f['speedup']:13.2f} {f['naive_cpu_s_per_item']:18.3f} "
                     f"{f['job_cpu_s_per_item']:6.3f} {f['naive_requests_per_item']:21.1f} "
                     f"{f['job_requests_per_item']:6.1f}")
    if r["job"]:
        j = r["job"]
        by_method = ", ".join(f"{m} {n}" for m, n in sorted(j["requests"].items()))
        lines.append(f"embed job on S3, {j['items']} objects in {j['shards']} shards of {j['shard_size']}: "
                     f"{j['requests_per_item']:.2f} requests per item ({by_method}): "
                     f"{j['media_requests_per_item']:.2f} per item on the media, {j['other_per_shard']:.1f} per shard "
                     f"for the rest (manifest, part files, commits, markers)")
    if r["plan"]:
        p = r["plan"]
        lines.append(f"planning {p['shards']} img2dataset tar shards on S3 ({p['samples']} samples, "
                     f"{p['tar_bytes'] / 1e6:.1f} MB each; per shard):")
        for how, label in (("headers", "member headers (tar_index: headers)"), ("auto", "img2dataset .parquet (auto)")):
            f = p[how]
            lines.append(f"  {label:<36} {f['requests_per_shard']:4.1f} requests, {f['s_per_shard'] * 1000:4.0f} ms; "
                         f"tars read {f['tars_read']} of {p['shards']} ({f['tar_bytes_read'] / p['shards'] / p['tar_bytes']:.2f} "
                         f"x the tar bytes), .parquet {f['parquet_bytes_per_shard'] / 1e3:.1f} KB "
                         f"({f['parquet_bytes_per_shard'] / p['tar_bytes']:.4f} x the tar)")
        lines.append("  (auto reads the first tar's headers once, to check its .parquet against them)")
    if r["markers"]:
        m = r["markers"]
        lines.append(f"{m['markers']} commit markers on S3, {m['latency_ms']:g} ms added per request: one GET after "
                     f"another {m['one_by_one_s']:.2f} s; a resume lists them: {m['list_s']:.2f} s "
                     f"({m['one_by_one_s'] / m['list_s']:.0f}x less); the summary reads them in one cat call: "
                     f"{m['cat_s']:.2f} s ({m['one_by_one_s'] / m['cat_s']:.1f}x less)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.decode``: exit 2 with one `error:` line for a bad config."""
    return cli(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
