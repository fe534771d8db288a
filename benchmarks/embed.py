"""The embed job against its ceiling and a naive loop, measured in one run (paper architectures, random init).

    python -m benchmarks.embed [--images 192] [--batch-size 16] [--preset paper|tiny] [--trace-cpu] [--report FILE]
    python -m benchmarks.embed --config benchmarks/configs/embed_paper.yaml

(a) ceiling: the frozen encoder's throughput on pre-decoded images, in-process;
(a') the same with two batches at once in threads (the embed job on 2 CPUs runs two batches at once: in one
     actor's threads with decode tasks, in two actors when the actors decode);
(b) the Ray Data pipeline end to end (and in steady state, first to last shard commit);
(c) a naive single-process loop: read → decode → encode, batch by batch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from benchmarks.common import PRESET_HELP, REPORT_HELP, Preset, benchmark, cli, commit_times, finish, steady_rate
from benchmarks.cpu_trace import CpuTrace, format_windows
from pipeline.config import StrictModel
from pipeline.embed.config import EmbedConfig
from pipeline.embed.job import run_embed
from pipeline.embed.stages import CPU_CONCURRENT_BATCHES, cpu_threads_per_batch
from pipeline.encoders.frozen import FrozenEncoder, read_input_spec
from pipeline.encoders.presets import resolve_encoder
from pipeline.media.image import decode_image
from pipeline.modality import Modality
from pipeline.synthetic.draw import concept, draw_shape

log = logging.getLogger(__name__)



class BenchmarkEmbedConfig(StrictModel):
    images: int = Field(192, ge=8, description="Generated 320x240 JPEGs to embed.")
    batch_size: int = Field(16, ge=1, description="Encoder batch size.")
    preset: Preset = Field("paper", description=PRESET_HELP)
    workdir: str | None = Field(None, description="Scratch folder; null = a new temp folder.")
    trace_cpu: bool = Field(False, description="Also report the CPU seconds of every process on this machine during "
                            "(b), in windows of the run (Linux /proc, sampled every 0.5 s by this process: ~1 % of a core).")
    report: str | None = Field(None, description=REPORT_HELP)

    @model_validator(mode="after")
    def _enough_batches(self) -> "BenchmarkEmbedConfig":
        if self.images < 4 * self.batch_size:  # the steady rate skips the first and last shard
            raise ValueError(f"images = {self.images}: expected at least 4 x batch_size ({4 * self.batch_size})")
        return self


def write_image_corpus(folder: str, n: int) -> str:
    """``n`` 320x240 JPEG images with a manifest; returns the manifest path."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rng = np.random.default_rng(0)
    with open(os.path.join(folder, "manifest.jsonl"), "w") as fh:
        for i in range(n):
            img = draw_shape(*concept(i), size=240, rng=rng).resize((320, 240))
            name = f"images/{i:05d}.jpg"
            img.save(os.path.join(folder, name), quality=90)
            fh.write(json.dumps({"id": f"b{i:05d}", "image": name}) + "\n")
    return os.path.join(folder, "manifest.jsonl")


def benchmark_embed(workdir: str, n: int = 96, batch_size: int = 16, preset: str = "paper",
                    trace_cpu: bool = False) -> dict[str, Any]:
    """Measure (a), (b), (c) on ``n`` generated images; return rates (images/s) and ratios (with ``trace_cpu``, also
    the CPU seconds per process in windows of (b): 0-5, 5-10, 10-15, 15-20 s and the rest)."""
    manifest = write_image_corpus(os.path.join(workdir, "corpus"), n)
    cfg = EmbedConfig(input=manifest, output=os.path.join(workdir, "out"), preset=preset, random_init=preset == "paper",
                      modalities=[Modality("image")], overwrite=True, shard_size=batch_size, actor_batch_rows=batch_size,
                      decode={"batch_size": batch_size},
                      encoders={"image": {"batch_size": batch_size}})
    ref, enc = resolve_encoder(cfg, Modality("image")), cfg.encoder(Modality("image"))
    spec = read_input_spec(ref, enc)
    paths = [os.path.join(workdir, "corpus", "images", f"{i:05d}.jpg") for i in range(n)]

    log.info("(c) naive single-process loop over %d images", n)
    start = time.perf_counter()
    encoder = FrozenEncoder(ref, enc)
    for i in range(0, n, batch_size):
        batch = []
        for path in paths[i:i + batch_size]:
            with open(path, "rb") as fh:
                batch.append(decode_image(fh.read(), cfg.limits.max_image_pixels, spec.image_hw))
        encoder.embed(batch)
    naive = n / (time.perf_counter() - start)

    log.info("(a) ceiling: in-process forward on pre-decoded images")
    decoded = [decode_image(open(p, "rb").read(), cfg.limits.max_image_pixels, spec.image_hw) for p in paths]
    start = time.perf_counter()
    for i in range(0, n, batch_size):
        encoder.embed(decoded[i:i + batch_size])
    ceiling = n / (time.perf_counter() - start)
    threads = encoder.torch.get_num_threads()
    del encoder

    log.info("(a') in-process, two batches at once in threads (the embed job's two batches at once on 2 CPUs)")
    pair_threads = cpu_threads_per_batch(CPU_CONCURRENT_BATCHES)
    encoder = FrozenEncoder(ref, enc.model_copy(update={"torch_threads": pair_threads}))
    start = time.perf_counter()
    with ThreadPoolExecutor(CPU_CONCURRENT_BATCHES) as pool:
        list(pool.map(encoder.embed, [decoded[i:i + batch_size] for i in range(0, n, batch_size)]))
    two_batches = n / (time.perf_counter() - start)
    del encoder

    log.info("(b) the Ray Data pipeline")
    with CpuTrace() if trace_cpu else contextlib.nullcontext() as trace:
        start = time.time()
        run_embed(cfg)
        elapsed = time.time() - start
    cpu = trace.windows([t for t in (0, 5, 10, 15, 20) if t < elapsed] + [elapsed]) if trace else None
    commits = commit_times(cfg.output, "image")
    return {"images": n, "batch_size": batch_size, "encoder": ref.name, "torch_threads": threads,
            "cpus": os.cpu_count(), "ceiling_per_s": ceiling, "two_batches_per_s": two_batches,
            "two_batches_torch_threads": pair_threads, "pipeline_per_s": n / elapsed,
            "pipeline_steady_per_s": steady_rate(commits, batch_size), "naive_per_s": naive,
            "first_commit_s": commits[0] - start, "pipeline_s": elapsed,
            "pipeline_vs_ceiling": n / elapsed / ceiling, "pipeline_vs_two_batches": n / elapsed / two_batches,
            "pipeline_vs_naive": n / elapsed / naive, "pipeline_cpu_by_process": cpu}


def format_benchmark(r: dict[str, Any]) -> str:
    """The benchmark's printed report."""
    steady = r["pipeline_steady_per_s"]
    steady_text = (f"{steady:.2f} images/s = {steady / r['ceiling_per_s']:.2f} x (a)" if steady else "n/a (too few shards)")
    return "\n".join([
        f"embed benchmark: {r['images']} images, batch {r['batch_size']}, {r['encoder']}, "
        f"{r['cpus']} CPUs, {r['torch_threads']} torch threads",
        f"(a) ceiling, in-process forward on pre-decoded images: {r['ceiling_per_s']:.2f} images/s",
        f"(a') the same, two batches at once in threads of {r['two_batches_torch_threads']} torch thread(s) "
        f"(the embed job's two batches at once on 2 CPUs): {r['two_batches_per_s']:.2f} images/s",
        f"(b) Ray Data pipeline, job start to summary: {r['pipeline_per_s']:.2f} images/s "
        f"({r['pipeline_s']:.1f} s; first shard committed after {r['first_commit_s']:.1f} s)",
        f"    steady state (2nd to 2nd-to-last shard commit): {steady_text}",
        f"(c) naive single-process loop (load, read, decode, encode per batch): {r['naive_per_s']:.2f} images/s",
        f"(b)/(a) = {r['pipeline_vs_ceiling']:.2f}   (b)/(a') = {r['pipeline_vs_two_batches']:.2f}   "
        f"(b)/(c) = {r['pipeline_vs_naive']:.2f}",
        *([f"(b) CPU seconds by process ({r['cpus']} cores; from /proc, the process's last Ray name):",
           *format_windows(r["pipeline_cpu_by_process"])] if r.get("pipeline_cpu_by_process") else []),
    ])


JOB = benchmark("embed", "the embed pipeline's throughput against its ceiling and a naive loop",
                "benchmarks.embed:BenchmarkEmbedConfig")


def run(cfg: BenchmarkEmbedConfig, args: object = None) -> int:
    import tempfile

    from pipeline.runtime import init_ray

    init_ray()
    result = benchmark_embed(cfg.workdir or tempfile.mkdtemp(prefix="oneencoder-bench-"), cfg.images, cfg.batch_size,
                             cfg.preset, cfg.trace_cpu)
    return finish("embed", cfg, result, format_benchmark)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.embed``: exit 2 with one `error:` line for a bad config."""
    return cli(JOB, argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
