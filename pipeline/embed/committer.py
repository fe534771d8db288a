"""The embed job's committer: the driver gathers the pipeline's commit records per (modality, shard) and, once
a shard's items have all arrived, has the run's committer actor turn its pieces into the shard's files
(``pipeline.store.parts.commit_parts``), then writes the shard's marker (the commit point) and deletes the part
files no shard in flight still needs.
"""
from __future__ import annotations

import array
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from pipeline.store.features import FeatureStore
from pipeline.store.manifest import ManifestPlan, input_errors
from pipeline.store.parts import commit_parts

if TYPE_CHECKING:
    from pipeline.embed.job import ModalityRun

log = logging.getLogger(__name__)
MAX_COMMITS_IN_FLIGHT = 8


def iter_records(ds) -> Iterator[Any]:
    """The pipeline's output blocks (pyarrow), fetched one at a time; a read task's ManifestError (the input
    changed or turned out unreadable after planning) is raised as itself, not as Ray's wrapper (exit 2)."""
    with input_errors():
        yield from ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0)


class _CommitActor:
    """Runs ``commit_parts`` for the driver (a complete shard's parts → its files); holds nothing between calls."""

    def commit(self, *args: Any) -> dict[str, Any]:
        return commit_parts(*args)


class Committer:
    """The driver's side: gathers commit records per (modality, shard), commits each shard once complete.

    Holds two bitmaps of ``shard_size`` bits per shard in flight (rows with their id, linked rows with their
    vector), 24 bytes per piece of those shards (part number, offset, length), and per part file still holding
    pieces of shards not yet marked its path and count (the part is deleted when it reaches 0); nothing per
    item. (Scattered repeats are the exception: a shard then waits for pieces from many calls, up to one per row.)
    """

    def __init__(self, plan: ManifestPlan, runs: list[ModalityRun], store: FeatureStore, options: dict[str, Any]):
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
                                           run.enc.stored_tokens, run.enc.sequence)
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
