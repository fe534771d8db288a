"""The embed pipeline's own cost: the job with the null encoder against the decoders alone, in one run.

    python -m benchmarks.pipeline [--preset paper|tiny] [--cases jpg256,png96,...] [--images 4000] [--clips 64]
                                  [--s3-cases jpg256,audio,video] [--end-to-end 20000] [--report FILE]

For each case (an image format and size, 10 s audio, 10 s video), local and (``s3_cases``) from a local
S3-compatible server (moto), in one run on this machine:

- in-process: the decoders alone (``decode_item``, as the decode tasks call it: read, size checks, decode at the
  encoder's input size) in one plain process (items/s, CPU ms per item), and in a pool of one process per core;
  the pool is timed before and after the jobs and its mean is the ceiling (``pool/s``), since on a small
  machine one timing moves by a fifth from run to run;
- the pipeline: the embed job (``run_embed``, defaults) on the same files with the null encoder
  (``pipeline.encoders.null``: a fixed vector, nothing computed), so its items/s is the pipeline's: read,
  decode, hand-over, write, commit; in both of its arrangements: ``fused`` (the encoder actors decode, the
  default on CPU for images, text and depth) and ``tasks`` (decode tasks hand decoded items to the actors through
  the object store: the default on GPU nodes, whose CPU budget it sets, and for audio and video). Each rate is the
  job's steady one (second to second-to-last of 16 shard commits: what a corpus 100 times larger runs at,
  start-up and drain left out), and against the pool's rate it is the ratio the targets name (for the
  arrangement this machine runs by default, marked ``*``). CPU per item over the same window (``CPU ms``: the machine's busy time
  from /proc/stat, every process counted: Ray, ffmpeg, the S3 server) is decode (``decode``, the in-process
  CPU per item) plus the pipeline's overhead; ``decoded B`` is what each item moves through the object store
  from a decode task to the encoder in the tasks arrangement. The S3 server runs in a process of its own.

With ``end_to_end`` (tiny preset, 256x256 JPEGs): ``oneencoder embed`` from its start to its summary against
``load_model(...).embed`` in one plain process (both timed as a user would, imports and start-up included), and
the job's steady rate with the tiny encoder against the decode + encode limit (cores / the two in-process
per-item times added).
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from pydantic import Field, field_validator

from benchmarks.common import PRESET_HELP, REPORT_HELP, Preset, benchmark, cli, commit_times, finish, steady_rate
from pipeline.config import StrictModel

# name: (modality, format, (height, width) for images | seconds for clips)
CASES: dict[str, tuple[str, str, Any]] = {
    "png96": ("image", "png", (96, 96)), "jpg96": ("image", "jpg", (96, 96)),
    "png256": ("image", "png", (256, 256)), "jpg256": ("image", "jpg", (256, 256)),
    "png640": ("image", "png", (480, 640)), "jpg640": ("image", "jpg", (480, 640)),
    "audio": ("audio", "flac", 10.0), "video": ("video", "mp4", 10.0),
}
TARGETS = {"jpg256": 0.8, "png96": 0.6, "audio": 0.9, "video": 0.9}  # pipeline / in-process pool, null encoder


def _cases(value: Any) -> Any:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in value or [] if v not in CASES]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}: expected some of {', '.join(CASES)}")
    return value


class BenchmarkPipelineConfig(StrictModel):
    preset: Preset = Field("paper", description="Whose input sizes the decoders produce (the null encoder computes "
                           "nothing either way). " + PRESET_HELP)
    cases: list[str] = Field(list(CASES), description=f"Cases to run, local files: {', '.join(CASES)}.")
    s3_cases: list[str] = Field(["jpg256", "audio", "video"], description="Cases also run from the local "
                                "S3-compatible server (moto, in this process: its CPU counts as the pipeline's).")
    images: int = Field(16000, ge=16, description="Items per image case from local files (copies of one file under "
                        "distinct names).")
    s3_images: int = Field(2000, ge=16, description="Items per image case from S3.")
    clips: int = Field(512, ge=16, description="Items per audio and video case (fewer leave their rate to run-to-run noise).")
    end_to_end: int = Field(20000, ge=0, description="256x256 JPEGs for the tiny-encoder end-to-end comparison (0 = skip).")
    workdir: str | None = Field(None, description="Scratch folder; null = a new temp folder.")
    report: str | None = Field(None, description=REPORT_HELP)

    _split = field_validator("cases", "s3_cases", mode="before")(_cases)


JOB = benchmark("pipeline", "the embed pipeline's own cost: null encoder against the decoders alone",
                "benchmarks.pipeline:BenchmarkPipelineConfig")


def run(cfg: BenchmarkPipelineConfig, args: object = None) -> int:
    import ray

    from pipeline.runtime import init_ray

    workdir = cfg.workdir or tempfile.mkdtemp(prefix="oneencoder-pipeline-")
    os.makedirs(workdir, exist_ok=True)
    end_to_end = tiny_end_to_end(cfg.end_to_end, workdir) if cfg.end_to_end else None  # before Ray: its own
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # moto takes any; Ray's workers inherit them
        os.environ.setdefault(name, "bench")
    init_ray(dashboard=False)
    result = {"preset": cfg.preset, "cpus": os.cpu_count(), "cluster_cpus": ray.cluster_resources().get("CPU"),
              "rows": null_pipeline(cfg, workdir), "end_to_end": end_to_end}
    return finish("pipeline", cfg, result, format_pipeline)


# --- inputs ----------------------------------------------------------------------------------------------
def write_item(folder: str, case: str) -> str:
    """The one file a case's items are copies of."""
    import numpy as np

    from pipeline.media.ffmpeg import find_ffmpeg
    from pipeline.synthetic.draw import clip, draw_shape, encode_audio, encode_video, tone

    modality, fmt, size = CASES[case]
    path = os.path.join(folder, f"{case}.{fmt}")
    if modality == "image":
        height, width = size
        img = draw_shape("green", "triangle", size=max(size), rng=np.random.default_rng(0)).resize((width, height))
        img.save(path, **({"quality": 90} if fmt == "jpg" else {}))
    elif modality == "audio":
        encode_audio(path, tone("red", "circle", seconds=size, harmonics=(1.0, 0.5, 0.25)), find_ffmpeg())
    else:
        frames = clip("blue", "square", frames=int(25 * size), size=240, rng=np.random.default_rng(0))
        encode_video(path, np.pad(frames, ((0, 0), (0, 0), (40, 40), (0, 0))), 25, find_ffmpeg())
    return path


def copies(source: str, case: str, n: int, folder: str, fs: Any = None) -> list[str]:
    """``n`` URIs naming copies of ``source`` (distinct names: nothing is deduplicated): hard links on disk, or
    objects on S3 through ``fs``."""
    ext = source.rsplit(".", 1)[1]
    if fs is None:
        os.makedirs(os.path.join(folder, case), exist_ok=True)
        uris = [os.path.join(folder, case, f"{i:06d}.{ext}") for i in range(n)]
        for uri in uris:
            if not os.path.exists(uri):
                os.link(source, uri)
        return uris
    data = open(source, "rb").read()
    uris = [f"s3://pipeline-bench/{case}/{i:06d}.{ext}" for i in range(n)]
    fs.pipe({uri[len("s3://"):]: data for uri in uris})
    return uris


def manifest(folder: str, name: str, modality: str, uris: list[str]) -> str:
    import json

    path = os.path.join(folder, f"{name}.jsonl")
    with open(path, "w") as fh:
        fh.write("".join(json.dumps({"id": f"r{i}", modality: uri}) + "\n" for i, uri in enumerate(uris)))
    return path


# --- in-process decoders ---------------------------------------------------------------------------------
def _settings(preset: str, modality: str, endpoint: str | None):
    from pipeline.config import StorageConfig
    from pipeline.embed.config import EmbedConfig
    from pipeline.encoders.frozen import read_input_spec
    from pipeline.encoders.presets import resolve_encoder
    from pipeline.media.decode import DecodeSettings
    from pipeline.media.ffmpeg import find_ffmpeg
    from pipeline.modality import Modality
    from pipeline.store.sources import storage_options

    cfg = EmbedConfig(preset=preset, random_init=preset == "paper", storage=StorageConfig(endpoint_url=endpoint))
    m = Modality(modality)
    spec = read_input_spec(resolve_encoder(cfg, m), cfg.encoder(m))
    return DecodeSettings(m, spec, cfg.limits, storage_options(cfg.storage), find_ffmpeg(), None,
                          cfg.decode.ffmpeg_threads)


def decode_chunk(uris: list[str], preset: str, modality: str, endpoint: str | None) -> tuple[float, float, int]:
    """Decode ``uris`` here as a decode task does: (wall s, CPU s of this process and its ffmpeg runs, decoded
    bytes of the last item)."""
    from pipeline.media.decode import decode_item

    s = _settings(preset, modality, endpoint)
    before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for uri in uris:
        out = decode_item(uri, s)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
    return wall, cpu, int(out.nbytes)


def in_process(preset: str, modality: str, uris: list[str], endpoint: str | None, pool: ProcessPoolExecutor,
               workers: int) -> dict[str, float]:
    """The decoders' rate in this process (one core) and in ``workers`` processes, on the same URIs."""
    decode_chunk(uris[:2], preset, modality, endpoint)  # warm-up: imports, first ffmpeg run
    one = uris[:max(8, len(uris) // 4)]
    wall, cpu, decoded = decode_chunk(one, preset, modality, endpoint)
    list(pool.map(decode_chunk, [uris[:2]] * workers, [preset] * workers, [modality] * workers, [endpoint] * workers))
    start = time.perf_counter()
    list(pool.map(decode_chunk, [uris[w::workers] for w in range(workers)], [preset] * workers,
                  [modality] * workers, [endpoint] * workers))
    return {"one_core_per_s": len(one) / wall, "decode_cpu_ms": 1000 * cpu / len(one),
            "all_cores_per_s": len(uris) / (time.perf_counter() - start), "decoded_bytes": decoded}


# --- the pipeline with the null encoder ------------------------------------------------------------------
def busy_cpu_s() -> float:
    """CPU seconds this machine has spent busy since boot, every process counted (short-lived ffmpeg runs too)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK  # all but idle and iowait


CLOCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BusyCpu:
    """``busy_cpu_s()`` sampled every ``interval`` seconds in a thread; ``between(t0, t1)``: the CPU seconds in
    between (epoch times, interpolated between samples)."""

    def __init__(self, interval: float = 0.1):
        import threading

        self.interval, self.samples, self._stop = interval, [], threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy-cpu", daemon=True)

    def __enter__(self) -> "BusyCpu":
        self.samples.append((time.time(), busy_cpu_s()))
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), busy_cpu_s()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.time(), busy_cpu_s()))

    def between(self, t0: float, t1: float) -> float:
        import numpy as np

        times, busy = np.array(self.samples).T
        return float(np.interp(t1, times, busy) - np.interp(t0, times, busy))


ARRANGEMENTS = ("fused", "tasks")  # decode.fused true, false


def default_arrangement(modality: str) -> str:
    """How the job decodes ``modality`` by default with its encoder on CPU (as here): see decode.fused."""
    from pipeline.embed.config import EmbedConfig
    from pipeline.embed.job import _pool
    from pipeline.modality import Modality

    cfg = EmbedConfig()
    fused = _pool(cfg, [cfg.encoder(Modality(modality))], 2.0)
    return "fused" if fused["fused"] else "tasks"


def null_job(preset: str, manifest_path: str, out: str, items: int, endpoint: str | None, fused: bool
             ) -> dict[str, Any]:
    """The embed job (defaults but ``decode.fused``) with the null encoder over ``manifest_path``: its steady
    items/s (second to second-to-last shard commit, shards of items / 16) and the machine's CPU per item in that
    window."""
    from pipeline.embed.config import EmbedConfig
    from pipeline.embed.job import run_embed
    from pipeline.encoders.null import null_encoders

    shard_size = max(1, items // 16)
    cfg = EmbedConfig(input=manifest_path, output=out, preset=preset, random_init=preset == "paper",
                      overwrite=True, shard_size=shard_size, storage={"endpoint_url": endpoint},
                      decode={"fused": fused})
    with BusyCpu() as cpu:
        start = time.time()
        summary = run_embed(cfg, resolve=null_encoders)
        wall = time.time() - start
    m = next(iter(summary["modalities"].values()))
    if not m["complete"] or any(m["errors"].values()):
        raise RuntimeError(f"null-encoder run over {manifest_path} did not embed every item: {summary}")
    commits = commit_times(out, next(iter(summary["modalities"])))
    steady = steady_rate(commits, shard_size)
    steady_items = shard_size * (len(commits) - 3)
    return {"wall_s": wall, "end_to_end_per_s": items / wall, "first_commit_s": commits[0] - start,
            "job_per_s": steady,
            "cpu_ms_per_item": 1000 * cpu.between(commits[1], commits[-2]) / steady_items if steady else None}


def s3_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in a process of its own (in this one, its threads would share the GIL with Ray Data's
    executor and the committer in the driver, and slow both): (the process, its endpoint)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-c", "import sys; from moto.server import main; main(sys.argv[1:])",
                                "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the local S3 server did not start on port {port}")


def null_pipeline(cfg: BenchmarkPipelineConfig, workdir: str) -> list[dict[str, Any]]:
    import s3fs

    workers = os.cpu_count() or 1
    rows = []
    server, endpoint = s3_server() if cfg.s3_cases else (None, None)
    try:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}) if server else None
        if fs:
            fs.mkdir("pipeline-bench")
        with ProcessPoolExecutor(workers) as pool:
            runs = [(c, "local") for c in cfg.cases] + [(c, "s3") for c in cfg.s3_cases]
            for case, storage in runs:
                modality = CASES[case][0]
                n = (cfg.images if storage == "local" else cfg.s3_images) if modality == "image" else cfg.clips
                source = write_item(workdir, case)
                at = endpoint if storage == "s3" else None
                uris = copies(source, case, n, workdir, fs if storage == "s3" else None)
                print(f"{case} ({storage}): {n} items", flush=True)
                before = in_process(cfg.preset, modality, uris, at, pool, workers)
                listed = manifest(workdir, f"{case}-{storage}", modality, uris)
                jobs = {arrangement: null_job(cfg.preset, listed, os.path.join(workdir, f"out-{case}-{storage}"), n,
                                              at, fused=arrangement == "fused") for arrangement in ARRANGEMENTS}
                after = in_process(cfg.preset, modality, uris, at, pool, workers)
                alone = {key: (before[key] + after[key]) / 2 for key in before}
                alone["decoded_bytes"], alone["pool_timings_per_s"] = before["decoded_bytes"], [
                    before["all_cores_per_s"], after["all_cores_per_s"]]
                for job in jobs.values():
                    job["ratio"] = job["job_per_s"] / alone["all_cores_per_s"] if job["job_per_s"] else None
                    job["overhead_cpu_ms"] = (job["cpu_ms_per_item"] - alone["decode_cpu_ms"]
                                              if job["cpu_ms_per_item"] is not None else None)
                rows.append({"case": case, "storage": storage, "modality": modality, "items": n,
                             "file_bytes": os.path.getsize(source), **alone, "target": TARGETS.get(case),
                             "default": default_arrangement(modality), **jobs})
    finally:
        if server:
            server.kill()
            server.wait()
    return rows


# --- end to end with the tiny encoder --------------------------------------------------------------------
NAIVE = """
import glob, sys, time
from pipeline.inference import load_model
model = load_model(sys.argv[1])
files = sorted(glob.glob(sys.argv[2] + "/*.jpg"))
for i in range(0, len(files), 256):
    model.embed(files[i:i + 256], "image")
"""


def tiny_end_to_end(n: int, workdir: str) -> dict[str, Any]:
    """``oneencoder embed`` (defaults, tiny preset) on ``n`` 256x256 JPEGs against a plain process's loop, and
    the job's steady rate against the in-process decode + encode limit."""
    import numpy as np

    from benchmarks.serve import write_untrained_artifact
    from pipeline.embed.config import EmbedConfig
    from pipeline.synthetic.draw import concept, draw_shape

    folder = os.path.join(workdir, "e2e")
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = os.path.join(folder, "img", f"{i:06d}.jpg")
        if not os.path.exists(path):
            draw_shape(*concept(i), size=256, rng=rng, offset=float(rng.uniform())).save(path, quality=90)
    uris = [os.path.join(folder, "img", f"{i:06d}.jpg") for i in range(n)]
    manifest_path = manifest(folder, "images", "image", uris)
    model = write_untrained_artifact(os.path.join(folder, "model"), "tiny", ("image",))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.time()
    subprocess.run([sys.executable, "-c", NAIVE, model, os.path.join(folder, "img")], check=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    naive = time.time() - start
    out = os.path.join(folder, "out")
    start = time.time()
    subprocess.run([sys.executable, "-m", "jobs.cli", "embed", "--input", manifest_path, "--output", out,
                    "--overwrite"], check=True, env=env, capture_output=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    job = time.time() - start
    steady = steady_rate(commit_times(out, "image"), EmbedConfig().shard_size)  # the job ran with its defaults
    decode_ms, encode_ms = tiny_rates(uris[:2000])
    limit = (os.cpu_count() or 1) * 1000 / (decode_ms + encode_ms)
    return {"items": n, "naive_s": naive, "job_s": job, "job_vs_naive": naive / job, "steady_per_s": steady,
            "decode_ms": decode_ms, "encode_ms": encode_ms, "limit_per_s": limit,
            "steady_vs_limit": steady / limit if steady else None}


def tiny_rates(uris: list[str]) -> tuple[float, float]:
    """The tiny preset's image decode and encode (its processor included) in this process: ms per item each,
    the encoder at one torch thread in batches of its default size."""
    from pipeline.embed.config import EmbedConfig
    from pipeline.encoders.frozen import FrozenEncoder
    from pipeline.encoders.presets import resolve_encoder
    from pipeline.media.decode import decode_item
    from pipeline.modality import Modality

    s = _settings("tiny", "image", None)
    start = time.perf_counter()
    decoded = [decode_item(uri, s) for uri in uris]
    decode_ms = 1000 * (time.perf_counter() - start) / len(uris)
    cfg, m = EmbedConfig(preset="tiny"), Modality("image")
    enc = cfg.encoder(m).model_copy(update={"torch_threads": 1})
    encoder, batch = FrozenEncoder(resolve_encoder(cfg, m), enc), enc.batch_size
    encoder.embed(decoded[:batch])
    start = time.perf_counter()
    for i in range(0, len(decoded), batch):
        encoder.embed(decoded[i:i + batch])
    return decode_ms, 1000 * (time.perf_counter() - start) / len(decoded)


def _f(value: float | None, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'n/a':>{width}}"


def format_pipeline(r: dict[str, Any]) -> str:
    lines = [f"embed pipeline alone (null encoder), {r['preset']} input sizes, {r['cpus']} cores; in-process "
             f"decoders: one process, and a pool of one per core (mean of a timing before and one after the jobs); "
             f"the job with its encoder actors decoding (fused) and with decode tasks; * = this machine's default",
             f"{'case':>8} {'from':>5} {'items':>6} {'1 core/s':>9} {'pool/s':>8} {'decode':>7} {'fused/s':>8} "
             f"{'x pool':>7} {'CPU ms':>7} {'tasks/s':>8} {'x pool':>7} {'CPU ms':>7} {'target':>7} {'decoded B':>10}"]
    for row in r["rows"]:
        cells = []
        for arrangement in ("fused", "tasks"):
            job, mark = row[arrangement], "*" if row.get("default") == arrangement else " "
            cells.append(f"{_f(job['job_per_s'], '.0f', 8)} {_f(job['ratio'], '.2f', 6)}{mark} "
                         f"{_f(job['cpu_ms_per_item'], '.2f', 7)}")
        lines.append(f"{row['case']:>8} {row['storage']:>5} {row['items']:>6} {row['one_core_per_s']:9.0f} "
                     f"{row['all_cores_per_s']:8.0f} {row['decode_cpu_ms']:7.2f} {' '.join(cells)} "
                     f"{_f(row['target'], '.1f', 7)} {row['decoded_bytes']:10d}")
    e = r.get("end_to_end")
    if e:
        lines.append(f"tiny encoder, {e['items']} 256x256 JPEGs: oneencoder embed {e['job_s']:.1f} s, plain "
                     f"load_model(...).embed loop {e['naive_s']:.1f} s: job at {e['job_vs_naive']:.2f} of the plain loop "
                     f"(target 0.8); steady {_f(e['steady_per_s'], '.0f', 0)}/s vs decode + encode limit "
                     f"{e['limit_per_s']:.0f}/s ({e['decode_ms']:.2f} + {e['encode_ms']:.2f} ms per item, "
                     f"{r['cpus']} cores): {_f(e['steady_vs_limit'], '.2f', 0)} (target 0.6)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.pipeline``: exit 2 with one `error:` line for a bad config."""
    return cli(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
