"""The embed job's cost per item and on the driver as the manifest grows (tiny encoders).

    python -m benchmarks.scale [--modality text|image] [--rows 20000,200000] [--repeat 5] [--report FILE]

For each manifest size, in one run on this machine: the embed job as users run it (`python -m
jobs.embed`, its own driver process, on the Ray instance this benchmark starts), its steady-state
items/s (second to second-to-last shard commit) beside the same encoder's in-process ceiling (decoded
items, batches of ``batch_size``, tokenizer included for text), the driver's peak memory
(``driver_peak_rss_mb`` of the job's summary) beside the smallest size's, the bytes that reached the driver
per item, the driver's CPU time (as a share of one core over the job, and per further shard against the
smallest size), the bytes written per item and the planning pass's rows/s (further rows per further second).
With ``--repeat N`` (images), each image is named by N rows scattered over the manifest, as COCO's captions
name theirs: the table's ``unique`` column is the media the job decoded and encoded (rows / N when every
repeat, in whatever read chunk, shared its first row's work).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from benchmarks.common import REPORT_HELP, benchmark, cli, commit_times, finish, split_ints, steady_rate
from pipeline.config import StrictModel


class BenchmarkScaleConfig(StrictModel):
    modality: Literal["text", "image"] = Field("text", description="Items of the generated manifests.")
    rows: list[int] = Field([20_000, 200_000], min_length=1, description="Manifest sizes (a list, or '20000,200000').")
    shard_size: int = Field(1024, ge=1, description="The embed job's shard_size.")
    batch_size: int = Field(16, ge=1, description="Encoder batch size (the job's and the ceiling's).")
    decode_batch_size: int | None = Field(None, ge=1, description="The embed job's decode.batch_size (media items per "
                                          "decode task); null = its default (sized by decoded bytes).")
    actor_batch_rows: int | None = Field(None, ge=1, description="The embed job's actor_batch_rows (rows per encoder "
                                         "actor call); null = its default (each decode block as it comes).")
    torch_threads: int | None = Field(None, ge=1, description="The job's encoder torch threads per batch; null = the "
                                      "job's default (the node's cores / the actor's concurrent batches).")
    repeat: int = Field(1, ge=1, description="Images only: rows naming each image, scattered over the manifest "
                        "(COCO: 5); the job should decode and encode rows / repeat of them.")
    ceiling_items: int = Field(8192, ge=64, description="Items the in-process ceiling is timed on.")
    startup_samples: int = Field(48, ge=0, description="Also time one four-modality embed of a generated corpus of "
                                 "this many samples against four one-modality runs (0 = skip).")
    workdir: str | None = Field(None, description="Scratch folder; null = a new temp folder.")
    report: str | None = Field(None, description=REPORT_HELP)

    @field_validator("rows", mode="before")
    @classmethod
    def _split_rows(cls, value):
        return split_ints(value, "20000,200000")

    @field_validator("rows")
    @classmethod
    def _sizes(cls, value: list[int]) -> list[int]:
        if min(value) < 64:
            raise ValueError(f"rows = {value}: expected sizes of at least 64")
        return sorted(set(value))

    @model_validator(mode="after")
    def _repeat_images(self) -> "BenchmarkScaleConfig":
        if self.repeat > 1 and self.modality != "image":
            raise ValueError(f"repeat = {self.repeat} with modality {self.modality}: expected repeat 1, or modality "
                             "image (texts are grouped within a read chunk only)")
        return self


JOB = benchmark("scale", "the embed job's per-item cost and driver memory as the manifest grows",
                "benchmarks.scale:BenchmarkScaleConfig")


def run(cfg: BenchmarkScaleConfig, args: object = None) -> int:
    import ray

    from pipeline.runtime import init_ray

    init_ray()
    address = ray.get_runtime_context().gcs_address
    result = benchmark_scale(cfg, cfg.workdir or tempfile.mkdtemp(prefix="oneencoder-scale-"), address)
    return finish("scale", cfg, result, format_scale)


def _texts(start: int, n: int) -> list[str]:
    from pipeline.synthetic.draw import CAPTIONS, concept

    return [CAPTIONS[i % len(CAPTIONS)].format(c=concept(i)[0], s=concept(i)[1]) + f", number {i}"
            for i in range(start, start + n)]


def write_manifest(folder: str, modality: str, rows: int, repeat: int = 1) -> str:
    """A manifest of ``rows`` items (text: numbered captions; image: 96x96 PNGs, 64 of them on disk referenced
    under distinct file names so nothing is deduplicated, unless ``repeat``: then each file name is named by
    ``repeat`` rows in random order)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{modality}-{rows}" + (f"-x{repeat}" if repeat > 1 else "") + ".jsonl")
    names = np.random.default_rng(1).permutation(rows) // repeat if repeat > 1 else None  # row -> image number
    if modality == "image":
        from pipeline.synthetic.draw import concept, draw_shape

        rng = np.random.default_rng(0)
        images = os.path.join(folder, "images")
        os.makedirs(images, exist_ok=True)
        for i in range(max(64, -(-rows // repeat))):  # the ceiling decodes the first 64
            target = os.path.join(images, f"{i:07d}.png")
            if not os.path.exists(target):
                if i < 64:
                    draw_shape(*concept(i), size=96, rng=rng).save(target)
                else:
                    os.link(os.path.join(images, f"{i % 64:07d}.png"), target)
    with open(path, "w") as fh:
        step = 10_000
        for start in range(0, rows, step):
            n = min(step, rows - start)
            values = (_texts(start, n) if modality == "text" else
                      [f"images/{names[i] if repeat > 1 else i:07d}.png" for i in range(start, start + n)])
            fh.write("".join(json.dumps({"id": f"r{start + j}", modality: v}) + "\n" for j, v in enumerate(values)))
    return path


def ceiling(cfg: BenchmarkScaleConfig, folder: str) -> tuple[float, int]:
    """The tiny encoder's items/s in-process on decoded items, with 1 torch thread and with every core: the
    better of the two, and its threads."""
    from pipeline.embed.config import EmbedConfig
    from pipeline.encoders.frozen import FrozenEncoder, read_input_spec
    from pipeline.encoders.presets import resolve_encoder
    from pipeline.media.decode import DecodeSettings, decode_item
    from pipeline.modality import Modality

    modality = Modality(cfg.modality)
    embed_cfg = EmbedConfig(preset="tiny")
    ref, enc = resolve_encoder(embed_cfg, modality), embed_cfg.encoder(modality)
    n = cfg.ceiling_items
    if cfg.modality == "text":
        items = _texts(0, n)
    else:
        settings = DecodeSettings(modality, read_input_spec(ref, enc), embed_cfg.limits, {}, "")
        decoded = [decode_item(os.path.join(folder, "images", f"{i:07d}.png"), settings) for i in range(64)]
        items = [decoded[i % 64] for i in range(n)]
    best = (0.0, 0)
    for threads in sorted({1, os.cpu_count() or 1}):
        encoder = FrozenEncoder(ref, enc.model_copy(update={"torch_threads": threads}))
        encoder.embed(items[:cfg.batch_size])  # warm-up
        start = time.perf_counter()
        for i in range(0, n, cfg.batch_size):
            encoder.embed(items[i:i + cfg.batch_size])
        best = max(best, (n / (time.perf_counter() - start), threads))
    return best


def benchmark_scale(cfg: BenchmarkScaleConfig, workdir: str, address: str) -> dict[str, Any]:
    folder = os.path.join(workdir, "corpus")
    manifests = {rows: write_manifest(folder, cfg.modality, rows, cfg.repeat) for rows in cfg.rows}
    per_s, threads = ceiling(cfg, folder)
    config = os.path.join(workdir, "embed.json")
    with open(config, "w") as fh:
        json.dump({"preset": "tiny", "shard_size": cfg.shard_size, "modalities": [cfg.modality],
                   "actor_batch_rows": cfg.actor_batch_rows,
                   "decode": {"batch_size": cfg.decode_batch_size},
                   "encoders": {cfg.modality: {"batch_size": cfg.batch_size, "torch_threads": cfg.torch_threads}}}, fh)
    runs = []
    for rows, manifest in manifests.items():
        out = os.path.join(workdir, f"out-{rows}")
        cmd = [sys.executable, "-m", "jobs.embed", "--config", config, "--input", manifest, "--output", out, "--overwrite"]
        start = time.time()
        done = subprocess.run(cmd, env={**os.environ, "RAY_ADDRESS": address}, capture_output=True, text=True)
        wall = time.time() - start
        if done.returncode != 0:
            raise RuntimeError(f"embed of {rows} rows failed ({done.returncode}):\n{done.stderr[-3000:]}")
        with open(os.path.join(out, "summary.json")) as fh:
            summary = json.load(fh)
        commits = commit_times(out, cfg.modality)
        steady = steady_rate(commits, cfg.shard_size)
        written = sum(os.path.getsize(os.path.join(d, f)) for sub in ("features", "errors")
                      for d, _, files in os.walk(os.path.join(out, sub)) for f in files)
        runs.append({"rows": rows, "wall_s": wall, "job_s": summary["elapsed_s"], "end_to_end_per_s": rows / wall,
                     "steady_per_s": steady, "steady_vs_ceiling": steady / per_s if steady else None,
                     "shards": len(commits), "bytes_per_item": written / rows, "plan_s": summary["plan_s"],
                     "unique": summary["modalities"][cfg.modality]["unique"],
                     "driver_cpu_s": summary["driver_cpu_s"], "driver_received_bytes": summary["driver_received_bytes"],
                     "driver_peak_rss_mb": summary["driver_peak_rss_mb"],
                     "complete": summary["modalities"][cfg.modality]["complete"]})
    base = runs[0]
    for r in runs:
        r["driver_rss_vs_smallest"] = r["driver_peak_rss_mb"] / base["driver_peak_rss_mb"]
        more = r["shards"] - base["shards"]  # the driver's work per shard: what each further shard cost it
        r["driver_cpu_ms_per_shard"] = 1000 * (r["driver_cpu_s"] - base["driver_cpu_s"]) / more if more > 0 else None
        r["driver_core_share"] = r["driver_cpu_s"] / r["job_s"]
        planned = r["plan_s"] - base["plan_s"]  # the planning pass's own rate, without its fixed start
        r["plan_rows_per_s"] = (r["rows"] - base["rows"]) / planned if more > 0 and planned > 0 else None
    startup = startup_once(workdir, cfg.startup_samples, address) if cfg.startup_samples else None
    return {"modality": cfg.modality, "repeat": cfg.repeat,
            "shard_size": cfg.shard_size, "actor_batch_rows": cfg.actor_batch_rows,
            "batch_size": cfg.batch_size,
            "decode_batch_size": cfg.decode_batch_size, "job_torch_threads": cfg.torch_threads,
            "cpus": os.cpu_count(), "torch_threads": threads, "ceiling_per_s": per_s, "runs": runs, "startup": startup}


def startup_once(workdir: str, samples: int, address: str) -> dict[str, Any]:
    """Wall time of one embed run over image, text, audio and video, and of one run per modality."""
    from pipeline.synthetic.corpus import write_sample_corpus

    manifest = write_sample_corpus(os.path.join(workdir, "startup-corpus"), n=samples)
    env = {**os.environ, "RAY_ADDRESS": address}

    def timed(modalities: str) -> float:
        cmd = [sys.executable, "-m", "jobs.embed", "--input", manifest, "--output",
               os.path.join(workdir, f"startup-{modalities.replace(',', '-')}"), "--modalities", modalities, "--overwrite"]
        start = time.time()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"embed of {modalities} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return time.time() - start

    together = timed("image,text,audio,video")
    apart = {m: timed(m) for m in ("image", "text", "audio", "video")}
    return {"samples": samples, "together_s": together, "apart_s": apart, "apart_sum_s": sum(apart.values()),
            "together_vs_apart": together / sum(apart.values())}


def format_scale(r: dict[str, Any]) -> str:
    lines = [f"embed scale benchmark: {r['modality']}"
             + (f" (each named by {r['repeat']} scattered rows)" if r["repeat"] > 1 else "")
             + f", tiny preset, shard_size {r['shard_size']}, batch {r['batch_size']}, "
             f"decode batch {r['decode_batch_size'] or 'default'}, actor calls of {r['actor_batch_rows'] or 'default'} rows, job torch threads {r['job_torch_threads'] or 'default'}, "
             f"{r['cpus']} CPUs; ceiling at {r['torch_threads']} torch threads",
             f"ceiling, in-process encoder on decoded items (best of 1 and all threads): {r['ceiling_per_s']:.0f} items/s",
             f"{'rows':>9} {'unique':>8} {'job s':>8} {'steady/s':>9} {'x ceiling':>10} {'driver MB':>10} {'x smallest':>11} "
             f"{'driver B/item':>14} {'driver cores':>13} {'driver ms/shard':>16} {'written B/item':>15} "
             f"{'plan rows/s':>12}"]
    for run in r["runs"]:
        steady = f"{run['steady_per_s']:9.0f} {run['steady_vs_ceiling']:10.2f}" if run["steady_per_s"] else f"{'n/a':>9} {'':>10}"
        per_shard = f"{run['driver_cpu_ms_per_shard']:16.1f}" if run["driver_cpu_ms_per_shard"] is not None else f"{'':>16}"
        plan = f"{run['plan_rows_per_s']:12.0f}" if run["plan_rows_per_s"] else f"{'':>12}"
        lines.append(f"{run['rows']:>9} {str(run['unique']):>8} {run['job_s']:8.1f} {steady} {run['driver_peak_rss_mb']:10.0f} "
                     f"{run['driver_rss_vs_smallest']:11.2f} {run['driver_received_bytes'] / run['rows']:14.1f} "
                     f"{run['driver_core_share']:13.2f} {per_shard} {run['bytes_per_item']:15.0f} {plan}")
    if r["startup"]:
        st = r["startup"]
        apart = ", ".join(f"{m} {t:.1f}" for m, t in st["apart_s"].items())
        lines.append(f"start-up: image+text+audio+video of {st['samples']} samples in one run {st['together_s']:.1f} s; "
                     f"one run each {st['apart_sum_s']:.1f} s ({apart}); ratio {st['together_vs_apart']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.scale``: exit 2 with one `error:` line for a bad config."""
    return cli(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
