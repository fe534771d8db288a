"""The embed job: manifest → read tasks → decode tasks → frozen-encoder actors → Parquet feature store.

The driver plans the manifest in one streaming pass (``plan_manifest``: ids checked, items counted per
shard of ``shard_size`` rows, chunks cut); one Ray Data execution then embeds every requested modality:
read tasks turn chunks into work rows (each distinct media once), decode tasks decode them, one pool of
encoder actors (holding every modality's encoder, so start-up is paid once) encodes them and writes the
rows as part files. The driver only gathers small commit records; when all of a shard's items have
arrived it has the run's committer actor turn the parts into the shard's files, then writes the shard's
marker (the commit point). A rerun skips committed shards, so an interrupted job resumes without redoing or duplicating work.
"""
from __future__ import annotations

import array
import dataclasses
import json
import logging
import os
import resource
import threading
import time
from typing import Any, Iterator

import numpy as np

from pipeline.artifact import EncoderRecord
from pipeline.config import ConfigError, EncoderConfig
from pipeline.embed.config import EmbedConfig, require_paths
from pipeline.embed.stages import (CPU_CONCURRENT_BATCHES, EncodeActor, MediaLinks, commit_parts, decode_work,
                                   media_links, read_work)
from pipeline.embed.waiting import Need, cluster_can_grow, wait_for_room
from pipeline.embed.watch import PoolWatch
from pipeline.encoders.frozen import read_input_spec
from pipeline.encoders.presets import EncoderRef, resolve_encoder
from pipeline.media.decode import DecodeSettings
from pipeline.media.ffmpeg import find_ffmpeg
from pipeline.modalities import InputSpec
from pipeline.modality import Modality
from pipeline.store.features import STAGES, FeatureStore
from pipeline.store.manifest import ManifestPlan, input_errors, plan_manifest
from pipeline.store.sources import storage_options

log = logging.getLogger(__name__)
MAX_COMMITS_IN_FLIGHT = 8


class ResumeMismatchError(RuntimeError):
    """The output folder holds shards made from a different manifest or encoder setup."""


class PipelineStalledError(RuntimeError):
    """The pipeline made no progress for ``no_progress_timeout_s`` and was stopped; committed shards are kept."""


def run_embed(cfg: EmbedConfig) -> dict[str, Any]:
    """Embed every item of the manifest ``cfg.input`` into the feature store ``cfg.output``.

    Returns the summary (also written to OUT/summary.json). Needs ``ray.init()`` done by the caller.
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
    runs = [_prepare(cfg, m, plan, store, options, ffmpeg) for m in modalities]
    runs = [r for r in runs if r.todo.any()]
    processed = sum(int(plan.shard_items(r.modality)[r.todo].sum()) for r in runs)
    received = _execute(cfg, plan, runs, store, options) if runs else 0
    return _write_summary(store, input_uri, output_uri, time.time() - started, processed, received, planned)


@dataclasses.dataclass
class _ModalityRun:
    modality: Modality
    ref: EncoderRef
    enc: EncoderConfig
    settings: DecodeSettings
    todo: np.ndarray  # bool per shard: has items and no marker yet
    links: MediaLinks  # items embedded with the same media in another chunk


def _prepare(cfg: EmbedConfig, modality: Modality, plan: ManifestPlan, store: FeatureStore, options: dict[str, Any],
             ffmpeg: str) -> _ModalityRun:
    """Resume guard, leftovers removed, the shards still to embed."""
    if cfg.overwrite:
        store.remove_modality(modality)
    store.remove_stale_temp_files(modality)
    store.remove_parts(modality)
    enc, ref = cfg.encoder(modality), resolve_encoder(cfg, modality)
    spec = read_input_spec(ref, enc)
    _guard_resume(store, modality, run_fingerprint(cfg, modality, plan, ref, spec),
                  encoder_record(ref, enc, spec).to_json())
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
    return _ModalityRun(modality, ref, enc, settings, todo, links)


def _execute(cfg: EmbedConfig, plan: ManifestPlan, runs: list[_ModalityRun], store: FeatureStore,
             options: dict[str, Any]) -> int:
    """One Ray Data execution for every modality still to embed; commits shards as they complete. Returns the
    bytes the driver received from the pipeline and the committer (commit records and markers)."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext
    from ray.data.exceptions import ExecutionTimeoutError

    settings = {r.modality.value: r.settings for r in runs}
    pool = _pool([r.enc for r in runs])
    need = _check_room(cfg, pool)
    # keeps watching while the pipeline runs: an encoder actor that finds no room is reported within seconds and,
    # on a cluster that cannot grow, ends the run after wait_for_resources_s (not no_progress_timeout_s)
    watch = PoolWatch(need, cfg.wait_for_resources_s, _task_shapes(cfg))
    ctx = DataContext.get_current()
    previous = (ctx.execution_no_progress_timeout_s, ctx.raise_original_map_exception,
                ctx.custom_execution_callback_classes)
    ctx.execution_no_progress_timeout_s = cfg.no_progress_timeout_s
    ctx.raise_original_map_exception = True  # a read task's ManifestError arrives as itself (iter_records)
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
            rows = cfg.decode.inline_batch_size if r.modality.is_inline else cfg.decode.batch_size
            ds = ds.repartition(target_num_rows_per_block=rows)
            branches.append(ds.map_batches(decode_work, fn_kwargs={"settings": settings}, batch_size=None,
                                           batch_format="pyarrow", num_cpus=cfg.decode.num_cpus,
                                           resources=task_resources))
        ds = branches[0].union(*branches[1:]) if len(branches) > 1 else branches[0]
        ds = ds.map_batches(EncodeActor, batch_size=cfg.actor_batch_rows, batch_format="pyarrow",
                            fn_constructor_kwargs={"encoders": {r.modality.value: (r.ref, r.enc) for r in runs},
                                                   "settings": settings, "output": store.root, "storage": options,
                                                   "shard_size": plan.shard_size, "calls": pool["calls"]},
                            compute=ActorPoolStrategy(size=pool["actors"], max_concurrent_calls_per_actor=pool["calls"],
                                                      enable_true_multi_threading=pool["calls"] > 1),
                            num_cpus=pool["num_cpus"],
                            num_gpus=pool["num_gpus"], resources=pool["resources"] or None)
        committer = _Committer(plan, runs, store, options)
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


def iter_records(ds) -> Iterator[Any]:
    """The pipeline's output blocks (pyarrow), fetched one at a time; a read task's ManifestError (the input
    changed or turned out unreadable after planning) is raised as itself, not as Ray's wrapper (exit 2)."""
    with input_errors():
        yield from ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0)


def _shards_of(plan: ManifestPlan, chunk) -> slice:
    return slice(chunk.first_row // plan.shard_size, (chunk.first_row + chunk.rows - 1) // plan.shard_size + 1)


def _pool(encs: list[EncoderConfig]) -> dict[str, Any]:
    """The one actor pool's size, resources and batches per actor at once: the largest any requested modality
    asks for (concurrent_batches null: 2 on CPU, where one batch computes while another is unpacked or written,
    1 on GPU)."""
    resources: dict[str, float] = {}
    for e in encs:
        for key, amount in e.resources.items():
            resources[key] = max(resources.get(key, 0.0), amount)
    num_gpus = max(e.num_gpus for e in encs)
    asked = [e.concurrent_batches for e in encs if e.concurrent_batches]
    return {"actors": max(e.actors for e in encs), "num_cpus": max(e.num_cpus for e in encs), "num_gpus": num_gpus,
            "calls": max(asked) if asked else (1 if num_gpus > 0 else CPU_CONCURRENT_BATCHES), "resources": resources}


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
    held = pool["actors"] * pool["num_cpus"]
    need = max(1.0, cfg.decode.num_cpus, cfg.decode.read_num_cpus)
    grows = cluster_can_grow()
    if held + need > total + 1e-9:
        message = (f"encoders: {pool['actors']} actor(s) x num_cpus {pool['num_cpus']:g} hold {held:g} of the "
                   f"cluster's {total:g} CPUs, and reading and decoding need {need:g} more beside them (Ray Data's "
                   f"repartition task takes 1 CPU): expected actors x num_cpus <= {max(total - need, 0):g} on this "
                   "cluster (lower encoders.<modality>.actors or num_cpus; torch_threads sets the threads an actor "
                   "uses)")
        if not grows:
            raise ConfigError(message)
        log.warning("%s; unless the autoscaler adds nodes, the job will stall", message)
    actor = {"CPU": pool["num_cpus"], "GPU": pool["num_gpus"], **pool["resources"]}
    decode = {"CPU": max(cfg.decode.num_cpus, cfg.decode.read_num_cpus), **cfg.decode.resources}
    room = Need({k: v for k, v in actor.items() if v > 0}, pool["actors"],
                ({"CPU": need},) + ((decode,) if cfg.decode.resources else ()))
    wait_for_room(room, cfg.wait_for_resources_s, grows)
    return room


def _task_shapes(cfg: EmbedConfig) -> list[dict[str, float]]:
    """The resources of each kind of task the pipeline runs: read, decode, and Ray Data's repartition (1 CPU)."""
    res = cfg.decode.resources
    return [{"CPU": cfg.decode.read_num_cpus, **res}, {"CPU": cfg.decode.num_cpus, **res}, {"CPU": 1.0}]


class _CommitActor:
    """Runs ``commit_parts`` for the driver (a complete shard's parts → its files); holds nothing between calls."""

    def commit(self, *args: Any) -> dict[str, Any]:
        return commit_parts(*args)


class _Committer:
    """The driver's side: gathers commit records per (modality, shard), commits each shard once complete.

    Holds two bitmaps of ``shard_size`` bits per shard in flight (rows with their id, linked rows with their
    vector), 24 bytes per piece of those shards (part number, offset, length), and per part file still holding
    pieces of shards not yet marked its path and count (the part is deleted when it reaches 0); nothing per
    item. (Scattered repeats are the exception: a shard then waits for pieces from many calls, up to one per row.)
    """

    def __init__(self, plan: ManifestPlan, runs: list[_ModalityRun], store: FeatureStore, options: dict[str, Any]):
        import ray

        self.plan, self.store, self.options = plan, store, options
        self.runs = {r.modality.value: r for r in runs}
        self.expected = {r.modality.value: plan.shard_items(r.modality) for r in runs}
        self.linked = {r.modality.value: r.links.per_shard for r in runs}
        self.total = {name: int(r.todo.sum()) for name, r in self.runs.items()}
        # per shard in flight: its bitmaps and its pieces, (part number, offset, length) each
        self.pending: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, array.array]] = {}
        self.in_flight: dict[Any, tuple[str, int, list[int]]] = {}  # shared with the marker writer, under self.lock
        # the part files with pieces not yet in a marked shard (or ignored), under self.lock: path → number,
        # number → [path, pieces left]; numbers are never reused (parts_seen is the next one)
        self.numbers: dict[str, int] = {}
        self.live: dict[int, list] = {}
        self.parts_seen = 0
        # changed: notified when a commit is handed over, a marker written or the writer fails
        self.lock, self.failure = threading.Lock(), None
        self.changed = threading.Condition(self.lock)
        self.done = {name: 0 for name in self.runs}
        self.items = self.received = 0  # received: bytes of records and markers that reached the driver
        self.started = self.last_log = time.time()
        # one long-lived committer, started beside the pipeline's workers: a task per shard would wait for a
        # fresh worker process whenever the CPUs are busy (on 2 cores, commits lagged the encoder by a minute)
        self.actor = ray.remote(_CommitActor).options(num_cpus=0, max_concurrency=MAX_COMMITS_IN_FLIGHT,
                                                      max_restarts=-1, max_task_retries=3).remote()

    def consume(self, ds) -> None:
        """Hand each complete shard to the committer while the pipeline runs; a thread writes each marker as
        soon as its commit returns (not when the next batch arrives: a slow or idle pipeline would hold
        committed shards unmarked, to be redone after a crash)."""
        import ray

        stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(stop,), name="commit-markers", daemon=True)
        watcher.start()
        try:
            for batch in iter_records(ds):
                self._check()
                with self.lock:
                    self.received += batch.nbytes
                for record in batch.to_pylist():  # one per part file written, not per item
                    self._add(record)
            self._wait_for_commits(0)
        finally:  # no commit of this run may write after it stops (a rerun rewrites its shards)
            with self.changed:
                stop.set()
                self.changed.notify_all()
            watcher.join()
            ray.kill(self.actor)
        for name in self.runs:  # parts of a failed actor call (retried) whose records never came
            self.store.remove_parts(name)
        if self.pending:
            missing = sorted(self.pending)[:10]
            raise RuntimeError(f"the pipeline ended before these (modality, shard)s were complete: {missing}")

    def _add(self, record: dict[str, Any]) -> None:
        key = (record["modality"], record["shard"])
        run = self.runs[key[0]]
        with self.lock:
            number = self.numbers.get(record["part"])
            if number is None:
                number = self.numbers[record["part"]] = self.parts_seen
                self.parts_seen += 1
                self.live[number] = [record["part"], record["pieces"]]
        if not run.todo[key[1]]:  # a retried actor call resent rows of a shard already handed to the committer
            self._release([number])
            return
        if key not in self.pending:
            size = -(-self.plan.shard_size // 8)
            self.pending[key] = (np.zeros(size, np.uint8), np.zeros(size, np.uint8), array.array("q"))
        bits, vbits, pieces = self.pending[key]
        np.bitwise_or(bits, np.frombuffer(record["bits"], np.uint8), out=bits)
        np.bitwise_or(vbits, np.frombuffer(record["vbits"], np.uint8), out=vbits)
        pieces.extend((number, record["offset"], record["length"]))
        if (int(np.unpackbits(bits).sum()) == self.expected[key[0]][key[1]]
                and int(np.unpackbits(vbits).sum()) == self.linked[key[0]][key[1]]):  # its items, and linked vectors
            self._wait_for_commits(MAX_COMMITS_IN_FLIGHT - 1)
            run.todo[key[1]] = False
            numbers = pieces[0::3].tolist()
            with self.lock:
                named = [(self.live[n][0], o, length) for n, o, length in zip(numbers, pieces[1::3], pieces[2::3])]
            ref = self.actor.commit.remote(self.store.root, self.options, key[0], key[1], named, run.ref.name,
                                           run.enc.tokens)
            with self.changed:
                self.in_flight[ref] = (*key, numbers)
                self.changed.notify_all()
            del self.pending[key]

    def _release(self, numbers: list[int]) -> None:
        """One piece of each of the parts ``numbers`` is done with (its shard marked, or its record ignored); delete
        the parts left with none. A part that cannot be deleted now is only disk: the run's end and the next run
        remove it."""
        with self.lock:
            freed = []
            for number in numbers:
                self.live[number][1] -= 1
                if not self.live[number][1]:
                    freed.append(self.live.pop(number)[0])
                    del self.numbers[freed[-1]]
        try:
            self.store.remove_files(freed)
        except Exception as e:
            log.warning("could not delete %d part files now (removed at the end of the run): %s", len(freed), e)

    def _wait_for_commits(self, at_most: int) -> None:
        """Until at most ``at_most`` commits are in flight (the watcher writes their markers); its error, if any."""
        with self.changed:
            self.changed.wait_for(lambda: self.failure is not None or len(self.in_flight) <= at_most)
        self._check()

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _watch(self, stop: threading.Event) -> None:
        """The marker writer: waits on the commits in flight, writes each one's marker as it returns."""
        import ray

        while not stop.is_set():
            with self.changed:  # idle until a commit is handed over (or consume stops it)
                self.changed.wait_for(lambda: self.in_flight or stop.is_set())
                refs = list(self.in_flight)
            if not refs:
                continue
            try:
                ready, _ = ray.wait(refs, num_returns=1, timeout=0.2)
                for ref in ready:
                    marker = ray.get(ref)
                    with self.lock:
                        name, shard, parts = self.in_flight[ref]
                    self.store.write_marker(name, shard, marker)
                    self._release(parts)
                    with self.changed:  # out of flight once its marker is written: the run's end waits for it
                        del self.in_flight[ref]
                        self.changed.notify_all()
                        self.received += len(json.dumps(marker))
                        self.done[name] += 1
                        self.items += int(self.expected[name][shard])
            except BaseException as e:  # a failed commit or marker write: consume raises it
                with self.changed:
                    self.failure = e
                    self.changed.notify_all()
                return
            now = time.time()
            if ready and (now - self.last_log > 5 or not (self.in_flight or self.pending)):
                self.last_log = now
                progress = ", ".join(f"{n} {self.done[n]}/{self.total[n]}" for n in self.runs)
                log.info("committed shards this run: %s; %d items, %.1f items/s", progress, self.items,
                         self.items / max(now - self.started, 1e-9))


def encoder_record(ref: EncoderRef, enc: EncoderConfig, spec: InputSpec) -> EncoderRecord:
    """What a model artifact needs to rebuild this modality's frozen encoder and its inputs."""
    return EncoderRecord(ref.modality.value, ref.name, ref.source, ref.revision, ref.build,
                         enc.model_dump(mode="json"), _as_json(dataclasses.asdict(spec)))


RUN_FORMAT = 3  # version of run.json: a store made by another version is not resumed blindly (3: shards of rows)


def run_fingerprint(cfg: EmbedConfig, modality: Modality, plan: ManifestPlan, ref: EncoderRef,
                    spec: InputSpec) -> dict[str, Any]:
    """Everything a modality's rows depend on; a rerun resumes only when all of it is unchanged.

    Runtime settings that do not change the rows (actors, batch sizes, CPUs/GPUs, threads) are left out.
    """
    enc = cfg.encoder(modality)
    return _as_json({"format": RUN_FORMAT, "manifest": plan.uri, "manifest_sha256": plan.digest,
            "items": plan.items(modality),
            "shard_size": cfg.shard_size, "encoder": ref.name, "tokens": enc.tokens, "dtype": enc.dtype,
            "precision": enc.precision, "num_frames": enc.num_frames, "max_text_tokens": enc.max_text_tokens,
            "input": dataclasses.asdict(spec), "limits": cfg.limits.model_dump(mode="json")})


def _as_json(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as it reads back from JSON (tuples become lists), so a stored record compares equal."""
    return json.loads(json.dumps(obj))


def _guard_resume(store: FeatureStore, modality: Modality, fingerprint: dict[str, Any], encoder: dict[str, Any]) -> None:
    """Refuse to mix rows made differently; record a new run (its encoder once, with the fingerprint)."""
    existing = store.run_record(modality)
    if existing is not None and existing != fingerprint:
        detail = "; ".join(f"{k}: was {was!r}, now {now!r}" for k, was, now in _differences(existing, fingerprint))
        raise ResumeMismatchError(
            f"{store.root} already holds {modality.value} features made differently ({detail}). "
            "Pass --overwrite to start over, or choose another --output.")
    if existing is None:
        store.start_run(modality, fingerprint, encoder)


def _differences(was: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs, e.g. ("limits.max_audio_seconds", 60.0, 30.0)."""
    out = []
    for key in sorted(set(was) | set(now)):
        a, b = was.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((prefix + key, a, b))
    return out


def _write_summary(store: FeatureStore, input_uri: str, output_uri: str, elapsed: float, processed: int,
                   received: int, planned: float) -> dict[str, Any]:
    per_modality = {}
    for modality in Modality.all():
        run = store.run_record(modality)
        if run is None:
            continue
        markers = store.committed_shards(modality)
        errors = {s: sum(m["errors"].get(s, 0) for m in markers.values()) for s in STAGES}
        features = sum(m["features"] for m in markers.values())
        dims = {m.get("dim") for m in markers.values()}
        unique = [m.get("unique") for m in markers.values()]
        per_modality[modality.value] = {
            "items": run["items"], "unique": sum(unique) if None not in unique else None,
            "features": features, "errors": errors, "encoder": run["encoder"],
            "tokens": run["tokens"], "dim": dims.pop() if len(dims) == 1 else None, "dtype": run["dtype"],
            "shards_committed": len(markers), "complete": features + sum(errors.values()) == run["items"]}
    summary = {"input": input_uri, "output": output_uri, "modalities": per_modality,
               "elapsed_s": round(elapsed, 3), "plan_s": round(planned, 3), "items_this_run": processed,
               "driver_received_bytes": received,
               "driver_cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 3),
               "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "items_per_s": round(processed / elapsed, 3) if elapsed > 0 else None}
    store.write_json("summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = [f"embedded {summary['input']} -> {summary['output']}", "",
             f"{'modality':<9}{'items':>8}{'unique':>8}{'features':>10}{'read':>7}{'decode':>8}{'encode':>8}   "
             "K x D      dtype    encoder"]
    for name, m in summary["modalities"].items():
        e = m["errors"]
        unique = "?" if m["unique"] is None else m["unique"]
        lines.append(f"{name:<9}{m['items']:>8}{unique:>8}{m['features']:>10}{e['read']:>7}{e['decode']:>8}{e['encode']:>8}   "
                     f"{m['tokens']} x {m['dim']!s:<6} {m['dtype']:<8} {m['encoder']}"
                     + ("" if m["complete"] else "   (incomplete: rerun to resume)"))
    lines += ["", f"this run: {summary['items_this_run']} items in {summary['elapsed_s']:.1f} s"
              + (f" ({summary['items_per_s']:.1f} items/s)" if summary["items_this_run"] else " (all shards were already committed)"),
              "unique = media decoded and encoded once for every row that names them (same URI, same text, or same "
              "bytes held in the input)",
              f"errors (read/decode/encode) are rows in {summary['output'].rstrip('/')}/errors/*.parquet; "
              f"summary: {summary['output'].rstrip('/')}/summary.json"]
    return "\n".join(lines)


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)
