"""Benchmark of the embed job against its ceiling and a naive loop, measured in one run.

(a) ceiling: the frozen encoder's throughput on pre-decoded images, in-process;
(a') the same with two batches at once in threads (the shape of the embed job's actors on CPU);
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
from typing import Any, Literal

import numpy as np

from pydantic import Field, field_validator, model_validator

from jobs.corpus import concept, draw_shape
from jobs.cpu_trace import CpuTrace, format_windows
from pipeline.config import StrictModel
from pipeline.embed.config import EmbedConfig
from pipeline.embed.job import run_embed
from pipeline.embed.stages import CPU_CONCURRENT_BATCHES, cpu_threads_per_batch
from pipeline.encoders.frozen import FrozenEncoder, read_input_spec
from pipeline.encoders.presets import resolve_encoder
from pipeline.media.image import decode_image
from pipeline.modality import Modality
from pipeline.store.features import FeatureStore

log = logging.getLogger(__name__)

Preset = Literal["paper", "tiny"]
PRESET_HELP = "paper = the paper's architectures at random init (offline); tiny = the test-sized encoders."
REPORT_HELP = "Also write the figures as JSON to this file; null = console only."


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


class BenchmarkTrainConfig(StrictModel):
    samples: int = Field(64, ge=2, description="Generated image-text pairs.")
    batch_size: int = Field(16, ge=2, description="Training batch size.")
    epochs: int = Field(1, ge=1, description="Epochs timed for each approach.")
    preset: Preset = Field("paper", description=PRESET_HELP)
    report: str | None = Field(None, description=REPORT_HELP)

    @model_validator(mode="after")
    def _one_batch(self) -> "BenchmarkTrainConfig":
        if self.samples < self.batch_size:
            raise ValueError(f"samples = {self.samples}: expected at least batch_size ({self.batch_size})")
        return self


class BenchmarkServeConfig(StrictModel):
    preset: Preset = Field("paper", description=PRESET_HELP)
    requests: int = Field(96, ge=1, description="Most requests per concurrency level.")
    levels: list[int] = Field([1, 8, 32], min_length=1, description="Concurrency levels (a list, or '1,8,32' on the command line).")
    level_cap_s: float = Field(30.0, gt=0, description="Time cap per concurrency level, in seconds.")
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


def split_ints(value: Any, example: str) -> Any:
    """A list field given as "1,8,32" on the command line → [1, 8, 32] (other values pass to pydantic)."""
    if isinstance(value, str):
        try:
            return [int(x) for x in value.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"expected comma-separated integers, e.g. {example}, got {value!r}") from None
    return value


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

    log.info("(a') in-process, two batches at once in threads (the embed actor's shape on CPU)")
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
    commits = sorted(m["committed_at"] for m in FeatureStore(cfg.output, {}).committed_shards(Modality("image")).values())
    return {"images": n, "batch_size": batch_size, "encoder": ref.name, "torch_threads": threads,
            "cpus": os.cpu_count(), "ceiling_per_s": ceiling, "two_batches_per_s": two_batches,
            "two_batches_torch_threads": pair_threads, "pipeline_per_s": n / elapsed,
            "pipeline_steady_per_s": steady_rate(commits, batch_size), "naive_per_s": naive,
            "first_commit_s": commits[0] - start, "pipeline_s": elapsed,
            "pipeline_vs_ceiling": n / elapsed / ceiling, "pipeline_vs_two_batches": n / elapsed / two_batches,
            "pipeline_vs_naive": n / elapsed / naive, "pipeline_cpu_by_process": cpu}


def report_figures(text: str, result: dict[str, Any], report: str | None) -> int:
    """What every benchmark ends with: the figures on the console and, with ``report``, as JSON."""
    print(text)
    if report:
        with open(report, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def steady_rate(commits: list[float], shard_size: int) -> float | None:
    """Items/s between the second and the second-to-last shard commit (start-up and drain excluded)."""
    if len(commits) < 4 or commits[-2] <= commits[1]:
        return None
    return shard_size * (len(commits) - 3) / (commits[-2] - commits[1])


def format_benchmark(r: dict[str, Any]) -> str:
    """The benchmark's printed report."""
    steady = r["pipeline_steady_per_s"]
    steady_text = (f"{steady:.2f} images/s = {steady / r['ceiling_per_s']:.2f} x (a)" if steady else "n/a (too few shards)")
    return "\n".join([
        f"embed benchmark: {r['images']} images, batch {r['batch_size']}, {r['encoder']}, "
        f"{r['cpus']} CPUs, {r['torch_threads']} torch threads",
        f"(a) ceiling, in-process forward on pre-decoded images: {r['ceiling_per_s']:.2f} images/s",
        f"(a') the same, two batches at once in threads of {r['two_batches_torch_threads']} torch thread(s) "
        f"(the embed actor's shape on CPU): {r['two_batches_per_s']:.2f} images/s",
        f"(b) Ray Data pipeline, job start to summary: {r['pipeline_per_s']:.2f} images/s "
        f"({r['pipeline_s']:.1f} s; first shard committed after {r['first_commit_s']:.1f} s)",
        f"    steady state (2nd to 2nd-to-last shard commit): {steady_text}",
        f"(c) naive single-process loop (load, read, decode, encode per batch): {r['naive_per_s']:.2f} images/s",
        f"(b)/(a) = {r['pipeline_vs_ceiling']:.2f}   (b)/(a') = {r['pipeline_vs_two_batches']:.2f}   "
        f"(b)/(c) = {r['pipeline_vs_naive']:.2f}",
        *([f"(b) CPU seconds by process ({r['cpus']} cores; from /proc, the process's last Ray name):",
           *format_windows(r["pipeline_cpu_by_process"])] if r.get("pipeline_cpu_by_process") else []),
    ])


def benchmark_train(n: int = 64, batch_size: int = 16, epochs: int = 1, preset: str = "paper") -> dict[str, Any]:
    """Epoch time of stage-1 training on cached features vs running the frozen encoders in every step.

    Same projection model, batch size, samples and optimizer; paper architectures at random init.
    """
    import torch

    from jobs.corpus import CAPTIONS
    from pipeline.model import ModelConfig, OneEncoder
    from pipeline.train.losses import ContrastiveLoss, LossConfig

    cfg = EmbedConfig(preset=preset, random_init=preset == "paper")
    encoders = {m: FrozenEncoder(resolve_encoder(cfg, m), cfg.encoder(m)) for m in (Modality("image"), Modality("text"))}
    rng = np.random.default_rng(0)
    images = [np.asarray(draw_shape(*concept(i), size=224, rng=rng)) for i in range(n)]
    texts = [CAPTIONS[i % len(CAPTIONS)].format(c=concept(i)[0], s=concept(i)[1]) for i in range(n)]
    raw = {Modality("image"): images, Modality("text"): texts}

    start = time.perf_counter()
    cached = {m: torch.from_numpy(np.concatenate([encoders[m].embed(raw[m][i:i + batch_size]) for i in range(0, n, batch_size)]))
              for m in raw}
    embed_once = time.perf_counter() - start

    def epoch_time(features_of) -> float:
        torch.manual_seed(0)
        dims = {m.value: int(cached[m].shape[-1]) for m in cached}
        model = OneEncoder(ModelConfig(in_dims=dims, tokens={m: 1 for m in dims}))
        loss = ContrastiveLoss(LossConfig())
        opt = torch.optim.AdamW([*model.parameters(), *loss.parameters()], lr=1e-3)
        start = time.perf_counter()
        for _ in range(epochs):
            for i in range(0, n, batch_size):
                a = model("image", features_of(Modality("image"), i))
                b = model("text", features_of(Modality("text"), i))
                terms = loss(a, b)
                opt.zero_grad()
                terms["loss"].backward()
                opt.step()
        return (time.perf_counter() - start) / epochs

    log.info("training on cached features")
    on_cache = epoch_time(lambda m, i: cached[m][i:i + batch_size])
    log.info("training with the frozen encoders inside every step")
    in_loop = epoch_time(lambda m, i: torch.from_numpy(encoders[m].embed(raw[m][i:i + batch_size])))
    return {"samples": n, "batch_size": batch_size, "epochs": epochs, "embed_once_s": embed_once,
            "encoders": f"{encoders['image'].model.config.model_type} + {encoders['text'].model.config.model_type}",
            "epoch_cached_s": on_cache, "epoch_encoders_in_loop_s": in_loop, "speedup": in_loop / on_cache}


def format_train_benchmark(r: dict[str, Any]) -> str:
    return "\n".join([
        f"train benchmark: {r['samples']} image-text pairs, batch {r['batch_size']}, encoders {r['encoders']}, "
        f"stage-1 projection model",
        f"epoch on cached features:              {r['epoch_cached_s']:.3f} s",
        f"epoch with encoders in every step:     {r['epoch_encoders_in_loop_s']:.3f} s",
        f"one-time embedding of the same pairs:  {r['embed_once_s']:.3f} s",
        f"speed-up per epoch: {r['speedup']:.0f}x",
    ])
