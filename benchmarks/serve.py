"""Serving benchmark, measured in one run on loopback: throughput and latency at several concurrency
levels, batching on vs off, and Serve's overhead over the same model called in-process, against the floor: a bare
Serve application with the same hops (``benchmarks.floor``: a FastAPI ingress, one ``@serve.batch`` replica with the
same batch settings, a constant vector; for media, a pass-through replica for the decoder's hop between them)
measured first at the lowest level, so that what lies above floor + in-process work is this project's own. Then
media decoded in the encoder replicas against the MediaDecoder deployment: videos answered per second, and text
latency beside a steady video load.

The model artifact is built here from the chosen preset with an untrained projection (throughput and
latency do not depend on the weights). Bounded: each level sends at most ``requests`` requests and
stops after ``level_cap_s`` seconds.

    python -m benchmarks.serve [--preset paper|tiny] [--requests 96] [--levels 1,8,32] [--report FILE]
    python -m benchmarks.serve --config benchmarks/configs/serve_paper.yaml
"""
from __future__ import annotations

import base64
import concurrent.futures as futures
import contextlib
import io
import logging
import os
import socket
import statistics
import time
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from benchmarks.common import PRESET_HELP, REPORT_HELP, Preset, benchmark, cli, finish, split_ints
from pipeline.config import StrictModel

log = logging.getLogger(__name__)


class BenchmarkServeConfig(StrictModel):
    preset: Preset = Field("paper", description=PRESET_HELP)
    requests: int = Field(96, ge=1, description="Most requests per concurrency level.")
    levels: list[int] = Field([1, 8, 32], min_length=1, description="Concurrency levels (a list, or '1,8,32' on the command line).")
    level_cap_s: float = Field(30.0, gt=0, description="Time cap per concurrency level, in seconds.")
    video_clients: int = Field(4, ge=1, description="Clients sending videos without pause while text latency is measured beside them (the mixed-load section).")
    report: str | None = Field(None, description=REPORT_HELP)

    @field_validator("levels", mode="before")
    @classmethod
    def _split_levels(cls, value):
        return split_ints(value, "1,8,32")

    @field_validator("levels")
    @classmethod
    def _sorted_levels(cls, value: list[int]) -> list[int]:
        return sorted(set(value))

    @model_validator(mode="after")
    def _levels_fit(self) -> "BenchmarkServeConfig":
        if min(self.levels) < 1:
            raise ValueError(f"levels = {self.levels}: expected concurrency levels of at least 1")
        if self.requests < max(self.levels):
            raise ValueError(f"requests = {self.requests}: expected at least the largest level ({max(self.levels)})")
        return self


def write_untrained_artifact(folder: str, preset: str, modalities: tuple[str, ...] = ("text", "image")) -> str:
    """A model artifact (config, random projection weights, encoder specs) for ``modalities`` of ``preset``."""
    import torch
    from safetensors.torch import save

    from pipeline.artifact import EncoderRecord, write_artifact
    from pipeline.embed.config import EmbedConfig
    from pipeline.encoders.frozen import FrozenEncoder, read_input_spec
    from pipeline.encoders.presets import resolve_encoder
    from pipeline.modality import Modality
    from pipeline.model import ModelConfig, OneEncoder

    cfg = EmbedConfig(preset=preset, random_init=preset == "paper")
    os.makedirs(folder, exist_ok=True)
    records, dims = {}, {}
    for name in modalities:
        m = Modality.parse(name)
        ref, enc = resolve_encoder(cfg, m), cfg.encoder(m)
        dims[name] = FrozenEncoder(ref, enc).dim
        records[name] = EncoderRecord.of(ref, enc, read_input_spec(ref, enc))
    torch.manual_seed(0)
    config = ModelConfig(in_dims=dims, tokens={n: 1 for n in dims})
    write_artifact(folder, config.model_dump(), save(OneEncoder(config).state_dict()), records, [],
                   {"note": "random projection weights, for serving benchmarks"})
    return folder


def _png_data_uri(size: int = 224) -> str:
    from pipeline.synthetic.draw import draw_shape

    buf = io.BytesIO()
    draw_shape("red", "circle", size=size, rng=np.random.default_rng(0)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _load(url: str, inputs: list[str], concurrency: int, requests_n: int, cap_s: float) -> dict[str, float]:
    """Send ``requests_n`` one-item requests from ``concurrency`` threads; rps and latency percentiles."""
    import requests

    sessions = [requests.Session() for _ in range(concurrency)]
    latencies: list[float] = []
    deadline = time.perf_counter() + cap_s

    def worker(slot: int) -> None:
        s = sessions[slot]
        i = slot
        while i < requests_n and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = s.post(url + "/v1/embeddings", json={"model": "oneencoder", "input": inputs[i % len(inputs)]}, timeout=300)
            if r.status_code != 200:
                raise RuntimeError(f"benchmark request failed: {r.status_code} {r.text[:200]}")
            latencies.append(time.perf_counter() - t0)
            i += concurrency

    start = time.perf_counter()
    with futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    elapsed = time.perf_counter() - start
    lat = sorted(latencies)
    return {"requests": len(lat), "rps": len(lat) / elapsed, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def _held_port() -> socket.socket:
    """A free loopback port, bound (not listening) by the socket returned, held until Serve has bound it too (a port
    picked and let go could be taken by another program first). Serve's proxy binds with SO_REUSEPORT (its
    SERVE_SOCKET_REUSE_PORT_ENABLED, on by default), as this socket does; a program without it gets EADDRINUSE."""
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(("127.0.0.1", 0))
    return held


def benchmark_serve(workdir: str, preset: str = "paper", levels: tuple[int, ...] = (1, 8, 32), requests_n: int = 96,
                    level_cap_s: float = 30.0, max_batch_size: int = 16, video_clients: int = 4) -> dict[str, Any]:
    from ray import serve

    from pipeline.inference import load_model
    from serving.app import build_application
    from serving.local import deploy

    running = sorted(serve.status().applications)
    if running:  # it would replace or lose them: the benchmark owns Serve's HTTP port and shuts Serve down at the end
        raise RuntimeError(f"Serve is already running application(s) {', '.join(running)} on this cluster; the "
                           "benchmark needs Serve to itself (stop them with `serve shutdown`, or use another cluster)")
    model_dir = write_untrained_artifact(os.path.join(workdir, "model"), preset)
    texts = [f"a photo of item number {i} in the benchmark" for i in range(requests_n)]
    inputs = {"text": texts, "image": [_png_data_uri()]}
    one_replica = {"num_replicas": 1, "autoscaling_config": None}

    def app(batch: int):
        encoder = {**one_replica, "ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 64,
                   "user_config": {"max_batch_size": batch, "batch_wait_timeout_s": BATCH_WAIT_S if batch > 1 else 0.0}}
        overrides = {"Gateway": {**one_replica, "ray_actor_options": {"num_cpus": 0.25}},
                     "encoder-text": encoder, "encoder-image": encoder}
        return build_application({"model": model_dir, "torch_threads": 1}, overrides)

    results: dict[str, Any] = {"preset": preset, "levels": list(levels), "max_batch_size": max_batch_size, "modalities": {}}
    results["floor"] = _floor(model_dir, texts, min(levels), requests_n, level_cap_s, max_batch_size, BATCH_WAIT_S)
    results["floor_media"] = _floor(model_dir, texts, min(levels), requests_n, level_cap_s, max_batch_size,
                                    BATCH_WAIT_S, decoder_hop=True)
    with _held_port() as held:
        url = deploy(app(max_batch_size), {}, host="127.0.0.1", port=held.getsockname()[1])
    try:
        for modality in ("text", "image"):
            r = results["modalities"][modality] = {"batched": {}}
            _load(url, inputs[modality][:4], 4, 8, level_cap_s)  # warm-up
            for c in levels:
                log.info("%s, batching on, concurrency %d", modality, c)
                r["batched"][c] = _load(url, inputs[modality], c, requests_n, level_cap_s)
        serve.run(app(1), name="oneencoder", route_prefix="/", blocking=False)  # batching off: only user_config changes
        for modality in ("text", "image"):
            r = results["modalities"][modality]
            top = max(levels)
            log.info("%s, batching off, concurrency %d", modality, top)
            r["unbatched"] = _load(url, inputs[modality], top, requests_n, level_cap_s)
            r["batching_ratio"] = r["batched"][top]["rps"] / r["unbatched"]["rps"]
    finally:
        serve.shutdown()

    local = load_model(model_dir, encoder_overrides={"torch_threads": 1})  # as each encoder replica runs
    raw = {"text": texts, "image": [base64.b64decode(inputs["image"][0].split(",", 1)[1])]}
    for modality in ("text", "image"):
        local.embed(raw[modality][:1], modality)  # warm-up
        times = []
        for i in range(min(requests_n, 32)):
            t0 = time.perf_counter()
            local.embed([raw[modality][i % len(raw[modality])]], modality)
            times.append(time.perf_counter() - t0)
        r = results["modalities"][modality]
        r["in_process_p50_ms"] = 1000 * statistics.median(times)
        r["in_process_p99_ms"] = 1000 * float(np.percentile(times, 99))
        low = r["batched"][min(levels)]
        r["serve_overhead_p50_ms"] = low["p50_ms"] - r["in_process_p50_ms"]
        # ours over what a bare app of the same hops plus the model's own work take: the part that is this project's
        floor = results["floor_media" if modality == "image" else "floor"]
        r["over_floor_p50_ms"] = low["p50_ms"] - (floor["p50_ms"] + r["in_process_p50_ms"])
        r["over_floor_p99_ms"] = low["p99_ms"] - (floor["p99_ms"] + r["in_process_p99_ms"])
    results["mixed"] = _mixed(workdir, preset, texts, requests_n, level_cap_s, max_batch_size, video_clients)
    return results


def _mp4_data_uri(seconds: float = 4.0, fps: int = 24, size: int = 256) -> str:
    """A clip of the kind users send (a few seconds, a few hundred pixels a side) as a data URI."""
    import tempfile

    from pipeline.media.ffmpeg import find_ffmpeg
    from pipeline.synthetic.draw import clip, encode_video

    with tempfile.TemporaryDirectory(prefix="oneencoder-serve-bench-") as folder:
        path = os.path.join(folder, "clip.mp4")
        encode_video(path, clip("red", "circle", frames=int(seconds * fps), size=size), fps, find_ffmpeg())
        with open(path, "rb") as fh:
            return "data:video/mp4;base64," + base64.b64encode(fh.read()).decode()


def _mixed(workdir: str, preset: str, texts: list[str], requests_n: int, cap_s: float, max_batch_size: int,
           video_clients: int) -> dict[str, Any]:
    """Media decoded in the encoder replicas, then in the MediaDecoder deployment (``ServeArgs.decode``), one replica
    each: the videos answered per second with ``video_clients`` clients sending without pause (capacity), and text
    latency at concurrency 1 alone and beside videos sent at one rate in both (half the first's capacity)."""
    from ray import serve

    from serving.app import build_application
    from serving.local import deploy

    model_dir = write_untrained_artifact(os.path.join(workdir, "model-video"), preset, ("text", "video"))
    video = _mp4_data_uri()
    one = {"num_replicas": 1, "autoscaling_config": None}
    batching = {"max_batch_size": max_batch_size, "batch_wait_timeout_s": BATCH_WAIT_S}

    def app(decode: str):
        encoder = {**one, "ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 64, "user_config": batching}
        overrides = {"Gateway": {**one, "ray_actor_options": {"num_cpus": 0.25}}, "encoder-text": encoder,
                     "encoder-video": encoder}
        if decode == "decoder":
            overrides["MediaDecoder"] = {**one, "ray_actor_options": {"num_cpus": 0.25}}
        return build_application({"model": model_dir, "torch_threads": 1, "decode": decode}, overrides)

    out: dict[str, Any] = {"video_clients": video_clients, "video_bytes": len(video) * 3 // 4, "modes": {}}
    url = None
    try:
        for decode in ("encoders", "decoder"):
            if url is None:
                with _held_port() as held:
                    url = deploy(app(decode), {}, host="127.0.0.1", port=held.getsockname()[1])
            else:
                serve.run(app(decode), name="oneencoder", route_prefix="/", blocking=False)
                _answering(url + "/v1/embeddings", {"model": "oneencoder", "input": video}, 300)
            _load(url, [video], 1, 2, cap_s)  # warm-up: both paths
            _load(url, texts[:4], 1, 8, cap_s)
            log.info("decode in %s: video capacity, %d clients", decode, video_clients)
            capacity = _load(url, [video], video_clients, 8 * video_clients, cap_s)["rps"]
            out.setdefault("video_rate", capacity / 2)
            log.info("decode in %s: text alone", decode)
            alone = _load(url, texts, 1, requests_n, cap_s)
            log.info("decode in %s: text beside %.1f videos/s", decode, out["video_rate"])
            with _videos_at(url, video, out["video_rate"], video_clients) as sent:
                loaded = _load(url, texts, 1, requests_n, cap_s)
            out["modes"][decode] = {"capacity_videos_per_s": capacity, "alone": alone, "loaded": loaded,
                                    "videos_answered": sent["answered"],
                                    "p50_ratio": loaded["p50_ms"] / alone["p50_ms"],
                                    "p99_ratio": loaded["p99_ms"] / alone["p99_ms"]}
    finally:
        serve.shutdown()
    return out


@contextlib.contextmanager
def _videos_at(url: str, video: str, rate: float, clients: int):
    """Videos sent at ``rate`` per second in all (each of ``clients`` sends on its own schedule, late ones at once)
    while the body runs; yields {"answered"}, filled in on leaving; RuntimeError if one failed."""
    import threading

    import requests

    stop, codes = threading.Event(), []

    def send(slot: int) -> None:
        session, due = requests.Session(), time.perf_counter() + slot / rate
        while not stop.wait(max(0.0, due - time.perf_counter())):
            codes.append(session.post(url + "/v1/embeddings", json={"model": "oneencoder", "input": video},
                                      timeout=300).status_code)
            due += clients / rate

    senders = [threading.Thread(target=send, args=(k,), daemon=True) for k in range(clients)]
    for t in senders:
        t.start()
    time.sleep(1.0)  # under way before the body measures beside it
    sent: dict[str, int] = {}
    try:
        yield sent
    finally:
        stop.set()
        for t in senders:
            t.join()
    if set(codes) - {200}:
        raise RuntimeError(f"benchmark video requests failed: {sorted(set(codes))}")
    sent["answered"] = len(codes)


BATCH_WAIT_S = 0.005  # the encoders' batch wait in the benchmark (batching on), and the floor's


def _answering(url: str, body: dict[str, Any], timeout_s: float) -> None:
    """Wait until ``url`` answers ``body`` with 200 (Serve's proxy binds its port a moment after the deploy)."""
    import requests

    deadline = time.perf_counter() + timeout_s
    while True:
        try:
            if requests.post(url, json=body, timeout=10).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)


def _floor(model_dir: str, texts: list[str], concurrency: int, requests_n: int, cap_s: float, max_batch_size: int,
           batch_wait_s: float, decoder_hop: bool = False) -> dict[str, float]:
    """The bare app (``benchmarks.floor``: two hops, three with ``decoder_hop``) at the model's width and the
    encoders' batch settings, loaded as ours is at ``concurrency``; Serve is shut down after it."""
    from ray import serve

    from benchmarks.floor import floor_app
    from pipeline.artifact import read_artifact

    dim = int(read_artifact(model_dir).model["d"])
    with _held_port() as held:
        port = held.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(floor_app(dim, max_batch_size, batch_wait_s, decoder_hop), name="floor", route_prefix="/",
                  blocking=False)
    url = f"http://127.0.0.1:{port}"
    try:
        _answering(url + "/v1/embeddings", {"model": "floor", "input": texts[0]}, 120)
        _load(url, texts[:4], 4, 8, cap_s)  # warm-up
        log.info("floor: bare app, %d hops, concurrency %d", 3 if decoder_hop else 2, concurrency)
        return {**_load(url, texts, concurrency, requests_n, cap_s), "concurrency": concurrency, "dim": dim}
    finally:
        serve.shutdown()


def format_serve_benchmark(r: dict[str, Any]) -> str:
    lines = [f"serve benchmark: preset {r['preset']}, one replica per deployment, max_batch_size {r['max_batch_size']}, loopback"]
    f, g = r["floor"], r["floor_media"]
    lines.append(f"floor (a bare FastAPI ingress + one @serve.batch replica returning a constant {f['dim']}-d vector), "
                 f"concurrency {f['concurrency']}: p50 {f['p50_ms']:.1f} ms  p99 {f['p99_ms']:.1f} ms")
    lines.append(f"floor for media (a pass-through replica for the decoder's hop before it): p50 {g['p50_ms']:.1f} ms  "
                 f"p99 {g['p99_ms']:.1f} ms")
    for modality, m in r["modalities"].items():
        lines.append(f"{modality}:")
        for c, s in m["batched"].items():
            lines.append(f"  concurrency {int(c):>2}: {s['rps']:7.1f} req/s  p50 {s['p50_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms"
                         f"  ({s['requests']} requests)")
        top = max(int(c) for c in m["batched"])
        u = m["unbatched"]
        lines.append(f"  batching off, concurrency {top}: {u['rps']:7.1f} req/s  p50 {u['p50_ms']:7.1f} ms")
        lines.append(f"  batching on/off at concurrency {top}: {m['batching_ratio']:.2f}x (target >= 3x)")
        lines.append(f"  in-process p50 {m['in_process_p50_ms']:.1f} ms; Serve p50 at concurrency {f['concurrency']} is "
                     f"{m['serve_overhead_p50_ms']:+.1f} ms over it")
        lines.append(f"  over the {'media ' if modality == 'image' else ''}floor + in-process work: p50 "
                     f"{m['over_floor_p50_ms']:+.1f} ms (target <= 3 ms), "
                     f"p99 {m['over_floor_p99_ms']:+.1f} ms")
    x = r.get("mixed")
    if x:
        lines.append(f"media decoded in the encoder replicas or in the MediaDecoder ({x['video_bytes'] / 1e3:.0f} kB "
                     f"videos; text at concurrency 1 beside {x['video_rate']:.1f} videos/s, half the first capacity):")
        for decode, mode in x["modes"].items():
            a, b = mode["alone"], mode["loaded"]
            where = "MediaDecoder" if decode == "decoder" else "encoders"
            lines.append(f"  {where:>12}: {mode['capacity_videos_per_s']:5.1f} videos/s at most ({x['video_clients']} "
                         f"clients); text alone p50 {a['p50_ms']:.1f} / p99 {a['p99_ms']:.1f} ms, beside the videos p50 "
                         f"{b['p50_ms']:.1f} / p99 {b['p99_ms']:.1f} ms ({mode['p50_ratio']:.2f}x / "
                         f"{mode['p99_ratio']:.2f}x)")
        first, then = (x["modes"][k]["capacity_videos_per_s"] for k in ("encoders", "decoder"))
        lines.append(f"  MediaDecoder / encoders: {then / first:.2f}x the videos/s")
    return "\n".join(lines)


JOB = benchmark("serve", "the Serve application's req/s and latency, batching on and off, against in-process",
                "benchmarks.serve:BenchmarkServeConfig")


def run(cfg: BenchmarkServeConfig, args: object = None) -> int:
    import tempfile

    from pipeline.runtime import init_ray

    init_ray()
    with tempfile.TemporaryDirectory(prefix="oneencoder-serve-bench-") as workdir:
        result = benchmark_serve(workdir, cfg.preset, tuple(cfg.levels), cfg.requests, cfg.level_cap_s,
                                 video_clients=cfg.video_clients)
    return finish("serve", cfg, result, format_serve_benchmark)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.serve``: exit 2 with one `error:` line for a bad config."""
    return cli(JOB, argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
