"""The embed job: manifest → read tasks → decode tasks → frozen-encoder actors → Parquet feature store.

The driver plans the manifest in one streaming pass (``plan_manifest``: ids checked, items counted per
shard of ``shard_size`` rows, chunks cut); one Ray Data execution then embeds every requested modality:
read tasks turn chunks into work rows (each distinct media once), decode tasks decode them, one pool of
encoder actors (holding every modality's encoder, so start-up is paid once) encodes them and writes the
rows as part files. The driver only gathers small commit records; when all of a shard's items have
arrived it has the run's committer actor turn the parts into the shard's files, then writes the shard's
marker (the commit point). A rerun skips committed shards, so an interrupted job resumes without redoing or duplicating work.

This module runs the job: the plan, each modality's preparation and the one execution, with the checks that the
cluster has room for it. The stages are ``pipeline.embed.stages``, the driver's committer
``pipeline.embed.committer``, the run records a rerun must match and the summary ``pipeline.embed.resume``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.artifact import EncoderRecord
from pipeline.config import ConfigError, EncoderConfig
from pipeline.embed.committer import Committer
from pipeline.embed.config import EmbedConfig, require_paths
from pipeline.embed.resume import guard_resume, run_fingerprint, write_summary
from pipeline.embed.stages import CPU_CONCURRENT_BATCHES, EncodeActor, MediaLinks, decode_work, media_links, read_work
from pipeline.embed.waiting import Need, cluster_can_grow, wait_for_room
from pipeline.embed.watch import PoolWatch
from pipeline.encoders.frozen import read_input_spec
from pipeline.encoders.presets import EncoderRef, resolve_encoder
from pipeline.media.decode import DecodeSettings
from pipeline.media.ffmpeg import find_ffmpeg
from pipeline.modality import Modality
from pipeline.store.features import FeatureStore
from pipeline.store.manifest import ManifestPlan, plan_manifest
from pipeline.store.sources import storage_options

log = logging.getLogger(__name__)


class PipelineStalledError(RuntimeError):
    """The pipeline made no progress for ``no_progress_timeout_s`` and was stopped; committed shards are kept."""


def run_embed(cfg: EmbedConfig, resolve: Callable[[EmbedConfig, Modality], EncoderRef] = resolve_encoder
              ) -> dict[str, Any]:
    """Embed every item of the manifest ``cfg.input`` into the feature store ``cfg.output``.

    Returns the summary (also written to OUT/summary.json). Needs ``ray.init()`` done by the caller.
    ``resolve``: each modality's encoder (benchmarks and tests of the pipeline alone pass
    ``pipeline.encoders.null.null_encoders``).
    """
    require_paths(cfg)
    started = time.time()
    options = storage_options(cfg.storage)
    input_uri, output_uri = _absolute(cfg.input), _absolute(cfg.output)
    plan = plan_manifest(input_uri, options, cfg.shard_size, cfg.chunk_rows,
                         index_map=lambda fn, args: _index_tasks(cfg, fn, args), tar_index=cfg.tar_index,
                         repeats=cfg.dedupe)
    planned = time.time() - started
    log.info("manifest %s: %d rows, %d chunks, planned in %.1f s", input_uri, plan.rows, len(plan.chunks), planned)
    modalities = cfg.modalities or list(plan.modalities)
    absent = [m.value for m in modalities if m not in plan.modalities]
    if absent:
        raise ConfigError(f"modalities: {', '.join(absent)} not in manifest {input_uri} "
                          f"(its modality columns: {', '.join(m.value for m in plan.modalities)})")
    if plan.ignored_columns:
        log.info("manifest columns ignored (not id or a modality): %s", ", ".join(plan.ignored_columns))
    ffmpeg = find_ffmpeg(cfg.ffmpeg) if any(m.spec.reads == "file" for m in modalities) else ""
    store = FeatureStore(output_uri, options)
    runs = [_prepare(cfg, m, plan, store, options, ffmpeg, resolve) for m in modalities]
    runs = [r for r in runs if r.todo.any()]
    processed = sum(int(plan.shard_items(r.modality)[r.todo].sum()) for r in runs)
    received = _execute(cfg, plan, runs, store, options) if runs else 0
    return write_summary(store, input_uri, output_uri, time.time() - started, processed, received, planned)


@dataclasses.dataclass
class ModalityRun:
    modality: Modality
    ref: EncoderRef
    enc: EncoderConfig
    settings: DecodeSettings
    todo: np.ndarray  # bool per shard: has items and no marker yet
    links: MediaLinks  # items embedded with the same media in another chunk


def _prepare(cfg: EmbedConfig, modality: Modality, plan: ManifestPlan, store: FeatureStore, options: dict[str, Any],
             ffmpeg: str, resolve: Callable[[EmbedConfig, Modality], EncoderRef]) -> ModalityRun:
    """Resume guard, leftovers removed, the shards still to embed."""
    if cfg.overwrite:
        store.remove_modality(modality)
    store.remove_stale_temp_files(modality)
    store.remove_parts(modality)
    enc, ref = cfg.encoder(modality), resolve(cfg, modality)
    spec = read_input_spec(ref, enc)
    guard_resume(store, modality, run_fingerprint(cfg, modality, plan, ref, spec),
                 EncoderRecord.of(ref, enc, spec).to_json())
    counts = plan.shard_items(modality)
    todo = counts > 0
    done = [s for s in store.committed_indexes(modality) if s < len(todo)]
    todo[done] = False
    log.info("%s: %d items in %d shards; %d shards already committed, %d items to embed with %s",
             modality.value, int(counts.sum()), int((counts > 0).sum()), len(done), int(counts[todo].sum()), ref.name)
    links = media_links(plan, modality, todo)
    if len(links.followers):
        log.info("%s: %d items name media first named in another read chunk: encoded once, with it",
                 modality.value, len(links.followers))
    http = cfg.http.model_dump(mode="json") if cfg.http.enabled else None
    settings = DecodeSettings(modality, spec, cfg.limits, options, ffmpeg, http, cfg.decode.ffmpeg_threads)
    return ModalityRun(modality, ref, enc, settings, todo, links)


def _execute(cfg: EmbedConfig, plan: ManifestPlan, runs: list[ModalityRun], store: FeatureStore,
             options: dict[str, Any]) -> int:
    """One Ray Data execution for every modality still to embed; commits shards as they complete. Returns the
    bytes the driver received from the pipeline and the committer (commit records and markers)."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext
    from ray.data.exceptions import ExecutionTimeoutError

    settings = {r.modality.value: r.settings for r in runs}
    cpus = ray.cluster_resources().get("CPU", 1.0)
    pool = _pool(cfg, [r.enc for r in runs], cpus)
    log.info("%s; %d encoder actor(s)%s x %g CPU%s", "decoding in the encoder actors" if pool["fused"] else
             "decoding in decode tasks", pool["actors"], f" (at least {pool['min_actors']})"
             if pool["min_actors"] < pool["actors"] else "", pool["num_cpus"],
             f", {pool['num_gpus']:g} GPU" if pool["num_gpus"] else "")
    need = _check_room(cfg, pool)
    # keeps watching while the pipeline runs: an encoder actor that finds no room is reported within seconds and,
    # on a cluster that cannot grow, ends the run after wait_for_resources_s (not no_progress_timeout_s)
    watch = PoolWatch(need, cfg.wait_for_resources_s, _task_shapes(cfg))
    ctx = DataContext.get_current()
    previous = (ctx.execution_no_progress_timeout_s, ctx.raise_original_map_exception,
                ctx.custom_execution_callback_classes)
    ctx.execution_no_progress_timeout_s = cfg.no_progress_timeout_s
    ctx.raise_original_map_exception = True  # a read task's ManifestError arrives as itself (committer.iter_records)
    callback = watch.callback_class()
    ctx.custom_execution_callback_classes = [*previous[2], *([callback] if callback else [])]
    try:
        branches, task_resources = [], cfg.decode.resources or None
        task_plan = dataclasses.replace(plan, repeats={})  # read tasks get their chunk's links, not all repeats
        for r in runs:  # per modality: read its items, cut them into decode tasks of its size, decode
            chunks = [c.index for c in plan.chunks if r.todo[_shards_of(plan, c)].any()]
            ds = ray.data.from_items([{"chunk": c, **r.links.for_chunk(plan, c)} for c in chunks],
                                     override_num_blocks=len(chunks))
            ds = ds.map_batches(read_work, batch_size=1, num_cpus=cfg.decode.read_num_cpus, resources=task_resources,
                                fn_kwargs={"plan": task_plan, "options": options, "modality": r.modality,
                                           "todo": r.todo.copy(),
                                           "dedupe": cfg.dedupe, "max_bytes": cfg.limits.max_file_bytes,
                                           "http": cfg.http.enabled})
            rows = decode_rows(cfg, r, int(plan.shard_items(r.modality)[r.todo].sum()), cpus)
            log.info("%s: %d items per %s", r.modality.value, rows, "actor call" if pool["fused"] else "decode task")
            ds = ds.repartition(target_num_rows_per_block=rows)
            if pool["fused"]:  # the encoder actors decode each block of work rows themselves
                branches.append(ds)
                continue
            branches.append(ds.map_batches(decode_work,
                                           fn_kwargs={"settings": settings, "block_bytes": cfg.decode.batch_bytes},
                                           batch_size=None,
                                           batch_format="pyarrow", num_cpus=cfg.decode.num_cpus,
                                           resources=task_resources))
        ds = branches[0].union(*branches[1:]) if len(branches) > 1 else branches[0]
        ds = ds.map_batches(EncodeActor, batch_size=cfg.actor_batch_rows, batch_format="pyarrow",
                            fn_constructor_kwargs={"encoders": {r.modality.value: (r.ref, r.enc) for r in runs},
                                                   "settings": settings, "output": store.root, "storage": options,
                                                   "shard_size": plan.shard_size, "calls": pool["calls"],
                                                   "threads": pool["threads"],
                                                   "block_bytes": cfg.decode.batch_bytes if pool["fused"] else None},
                            compute=ActorPoolStrategy(min_size=pool["min_actors"], max_size=pool["actors"],
                                                      initial_size=_startable(pool, need),
                                                      max_concurrent_calls_per_actor=pool["calls"],
                                                      enable_true_multi_threading=pool["calls"] > 1),
                            num_cpus=pool["num_cpus"],
                            num_gpus=pool["num_gpus"], resources=pool["resources"] or None)
        committer = Committer(plan, runs, store, options)
        committer.consume(ds)
        return committer.received
    except Exception as e:
        if watch.failure is not None and e is not watch.failure:  # whatever Ray Data wrapped it in
            raise watch.failure from None
        if isinstance(e, ExecutionTimeoutError):  # Ray Data's no-progress guard: its text names Ray Data's knobs
            raise PipelineStalledError(_stalled_message(cfg, str(e))) from None
        raise
    finally:
        (ctx.execution_no_progress_timeout_s, ctx.raise_original_map_exception,
         ctx.custom_execution_callback_classes) = previous


MAX_DECODE_ROWS = 2048  # media items per decode task when decode.batch_size is null
BLOCKS_PER_TASK = 8     # and at most this many blocks of decode.batch_bytes of the largest decoded items
TASKS_PER_CPU = 4       # and no fewer tasks than this per CPU


def decode_rows(cfg: EmbedConfig, run: ModalityRun, items: int, cpus: float) -> int:
    """Media items per decode task (see DecodeConfig.batch_size): ``decode.batch_size``, else as many as
    BLOCKS_PER_TASK blocks of ``decode.batch_bytes`` hold when every item decodes to its modality's largest size
    (a task yields a block each time its items reach ``batch_bytes``: most inputs decode smaller), at most
    MAX_DECODE_ROWS, and no more than spread ``items`` over TASKS_PER_CPU tasks per CPU of the cluster (``cpus``), so
    that a small run still uses every core and hands its first blocks on early."""
    if run.modality.is_inline:
        return cfg.decode.inline_batch_size
    if cfg.decode.batch_size:
        return cfg.decode.batch_size
    size = run.modality.spec.decoded_bytes
    largest = size(run.settings.spec, run.settings.limits) if size else 1
    by_bytes = BLOCKS_PER_TASK * cfg.decode.batch_bytes // max(1, largest)
    spread = -(-items // max(1, int(TASKS_PER_CPU * cpus)))
    return max(1, min(MAX_DECODE_ROWS, by_bytes, spread))


def _stalled_message(cfg: EmbedConfig, report: str) -> str:
    """One line for a run Ray Data stopped after ``no_progress_timeout_s`` without progress: what was still running
    (from Ray Data's ``report``) and what to do, in this job's settings rather than Ray Data's."""
    running = [line.strip(" -") for line in report.splitlines() if line.startswith("  - ")]
    return (f"the pipeline made no progress for no_progress_timeout_s = {cfg.no_progress_timeout_s:g} s and was stopped"
            + (f" (still running: {'; '.join(running)})" if running else "")
            + ": a read, decode or encode call is stuck or that slow (a decoder that hangs, an input that never "
            "answers, a task waiting for resources). Shards committed so far are kept and a rerun resumes; raise "
            "no_progress_timeout_s (--no-progress-timeout-s or the config) if work this slow is expected, and keep "
            "limits.decode_timeout_s below it so that a hung decoder becomes its item's error instead")


def _index_tasks(cfg: EmbedConfig, fn: Any, args: list[tuple]) -> Iterator[Any]:
    """Planning's tasks (indexing tar shards) once there is room for them: on a busy instance the job says what it
    waits for and who holds it, and fails after ``wait_for_resources_s``, as for the pipeline itself."""
    task = {"CPU": cfg.decode.read_num_cpus}
    wait_for_room(Need({}, 0, (task,)), cfg.wait_for_resources_s)
    yield from _ray_map(fn, args, cfg.decode.read_num_cpus)


def _ray_map(fn: Any, args: list[tuple], num_cpus: float, window: int = 64):
    """``fn(*a)`` for each ``a`` as Ray tasks, at most ``window`` at a time; results yielded in order."""
    import ray

    task = ray.remote(fn).options(num_cpus=num_cpus)
    pending: list[Any] = []
    for a in args:
        pending.append(task.remote(*a))
        if len(pending) >= window:
            yield ray.get(pending.pop(0))
    for ref in pending:
        yield ray.get(ref)


def _shards_of(plan: ManifestPlan, chunk) -> slice:
    return slice(chunk.first_row // plan.shard_size, (chunk.first_row + chunk.rows - 1) // plan.shard_size + 1)


def _pool(cfg: EmbedConfig, encs: list[EncoderConfig], cpus: float) -> dict[str, Any]:
    """The one actor pool: whether its actors also decode (``fused``), its size, resources, batches per actor at once
    and torch threads per batch; the largest any requested modality asks for.

    Decode tasks (on GPU, or ``decode.fused`` false): ``actors`` and ``num_cpus`` null mean 1; ``concurrent_batches``
    null means 2 on CPU (one batch computes while another is unpacked or written), 1 on GPU; torch threads null
    mean the node's cores / concurrent batches (the actor's own choice). Fused (``decode.fused`` true, or null with
    every encoder on CPU and no ``decode.resources``): every actor decodes and encodes one batch at a time (threads
    would contend for the GIL while decoding), so there are as many as the cluster's ``cpus`` (at least 1 started,
    more as free CPUs allow), sharing the CPUs that reading leaves (``_read_room``), each with that share of torch
    threads."""
    resources: dict[str, float] = {}
    for e in encs:
        for key, amount in e.resources.items():
            resources[key] = max(resources.get(key, 0.0), amount)
    num_gpus = max(e.num_gpus for e in encs)
    fused = cfg.decode.fused if cfg.decode.fused is not None else (
        num_gpus == 0 and not cfg.decode.resources)
    asked_actors = [e.actors for e in encs if e.actors]
    asked_cpus = [e.num_cpus for e in encs if e.num_cpus]
    asked_calls = [e.concurrent_batches for e in encs if e.concurrent_batches]
    if fused:
        actors = max(asked_actors) if asked_actors else max(1, int(cpus))
        share = max(0.01, round((cpus - _read_room(cfg, True)) / actors, 2))
        num_cpus = max(asked_cpus) if asked_cpus else share
        calls = max(asked_calls) if asked_calls else 1
        threads = max(1, int(num_cpus) // calls) if num_gpus == 0 else None
        min_actors = actors if asked_actors else 1
    else:
        actors = max(asked_actors) if asked_actors else 1
        num_cpus = max(asked_cpus) if asked_cpus else 1.0
        calls = max(asked_calls) if asked_calls else (1 if num_gpus > 0 else CPU_CONCURRENT_BATCHES)
        threads, min_actors = None, actors
    return {"fused": fused, "actors": actors, "min_actors": min_actors, "num_cpus": num_cpus, "num_gpus": num_gpus,
            "calls": calls, "threads": threads, "resources": resources}


def _startable(pool: dict[str, Any], need: Need) -> int:
    """Actors to start with: all of an autoscaling pool's that the cluster's free CPUs hold now beside the read
    side (at least its minimum, which ``_check_room`` waited for), so a run does not wait for Ray Data to add them
    one by one (each loads the encoders)."""
    import ray

    if pool["min_actors"] >= pool["actors"] or pool["num_gpus"] or pool["resources"]:
        return pool["min_actors"]
    free = ray.available_resources().get("CPU", 0.0) - max(s.get("CPU", 0.0) for s in need.beside)
    return max(pool["min_actors"], min(pool["actors"], int(free / pool["num_cpus"] + 1e-9)))


def _read_room(cfg: EmbedConfig, fused: bool) -> float:
    """CPUs the job needs beside the encoder pool: one read, repartition (Ray Data's: 1 CPU) or decode task at once."""
    return max(1.0, cfg.decode.read_num_cpus, 0.0 if fused else cfg.decode.num_cpus)


def _check_room(cfg: EmbedConfig, pool: dict[str, Any]) -> Need:
    """Refuse an encoder pool that leaves the read and decode side no room, then wait until the cluster's FREE
    resources hold the pool and a task beside it. Ray Data starts the pool first; a read, repartition (1 CPU,
    whatever ``decode.num_cpus`` says) or decode task then needs CPUs beside it, and on a cluster that cannot grow
    the job would wait for them until ``no_progress_timeout_s`` (whether its own pool holds them or other work,
    such as a Serve app, does). Returns what the job needs (the watch uses it while the pipeline runs).

    Raises ConfigError when the pool can never fit, ClusterBusyError when other work still holds the room after
    ``wait_for_resources_s`` (see ``pipeline.embed.waiting``)."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    held = pool["min_actors"] * pool["num_cpus"]
    need = _read_room(cfg, pool["fused"])
    grows = cluster_can_grow()
    if held + need > total + 1e-9:
        message = (f"encoders: {pool['min_actors']} actor(s) x num_cpus {pool['num_cpus']:g} hold {held:g} of the "
                   f"cluster's {total:g} CPUs, and reading and decoding need {need:g} more beside them (Ray Data's "
                   f"repartition task takes 1 CPU): expected actors x num_cpus <= {max(total - need, 0):g} on this "
                   "cluster (lower encoders.<modality>.actors or num_cpus; torch_threads sets the threads an actor "
                   "uses)")
        if not grows:
            raise ConfigError(message)
        log.warning("%s; unless the autoscaler adds nodes, the job will stall", message)
    actor = {"CPU": pool["num_cpus"], "GPU": pool["num_gpus"], **pool["resources"]}
    decode = {"CPU": max(cfg.decode.num_cpus, cfg.decode.read_num_cpus), **cfg.decode.resources}
    room = Need({k: v for k, v in actor.items() if v > 0}, pool["min_actors"],
                ({"CPU": need},) + ((decode,) if cfg.decode.resources else ()))
    wait_for_room(room, cfg.wait_for_resources_s, grows)
    return room


def _task_shapes(cfg: EmbedConfig) -> list[dict[str, float]]:
    """The resources of each kind of task the pipeline runs: read, decode, and Ray Data's repartition (1 CPU)."""
    res = cfg.decode.resources
    return [{"CPU": cfg.decode.read_num_cpus, **res}, {"CPU": cfg.decode.num_cpus, **res}, {"CPU": 1.0}]


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)
