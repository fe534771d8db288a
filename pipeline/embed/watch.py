"""Watching a running embed pipeline for work that waits for resources: Ray Data calls ``PoolWatch.step`` from its
scheduling loop (an ExecutionCallback), so a wait is seen within seconds and a run can be ended from inside."""
from __future__ import annotations

import logging
import time
from typing import Any

from pipeline.embed.waiting import (REPEAT_S, ActorInfo, ClusterBusyError, ClusterView, Need, busy_message,
                                    cluster_can_grow, explain, list_actors, place, restrict, shape_text, snapshot)

log = logging.getLogger(__name__)
ENCODER_ACTOR = "EncodeActor"  # in the class name Ray Data gives the encoder pool's actors
WARN_AFTER_S = 3.0  # an actor waits this long before the watch speaks (its worker can take a second or two to start)
TASKS_IDLE_S = 10.0  # no progress for this long while the job's tasks wait for resources: the watch speaks


class PoolWatch:
    """Watches a running pipeline from Ray Data's scheduling loop (``callback_class``), once per ``poll_s``.

    An encoder actor of this job that waits for resources no node has free is reported (WARNING) after
    ``WARN_AFTER_S``, again every ``REPEAT_S``; after ``wait_s`` of waiting on a cluster that cannot grow, the step
    raises ClusterBusyError (kept in ``failure``), which ends the execution. Tasks of the job's shapes
    (``task_shapes``) waiting for resources while the pipeline makes no progress for ``TASKS_IDLE_S`` are reported,
    never failed on: a slow task also stops progress, and ``no_progress_timeout_s`` bounds the wait.
    """

    def __init__(self, need: Need, wait_s: float, task_shapes: list[dict[str, float]], poll_s: float = 1.0):
        import ray

        self.need, self.wait_s, self.poll_s = need, wait_s, poll_s
        self.task_shapes = [dict(t) for t in {tuple(sorted(restrict(s, need.keys()).items())) for s in task_shapes}]
        self.job, self.grows = ray.get_runtime_context().get_job_id(), cluster_can_grow()
        self.failure: ClusterBusyError | None = None
        self._next = self._next_warn = 0.0
        self._stuck_since: float | None = None
        self._progress, self._progress_at, self._warned = None, time.monotonic(), False

    def callback_class(self) -> type | None:
        """A Ray Data ExecutionCallback class (built without arguments, as Ray Data does) calling ``step``; None if
        that internal interface moved (then only the check before the start guards the wait)."""
        try:
            from ray.data._internal.execution.execution_callback import ExecutionCallback
        except ImportError:
            return None
        watch = self

        class _ResourceWatch(ExecutionCallback):
            def on_execution_step(self, executor: Any) -> None:
                watch.step(executor)

            def after_execution_succeeds(self, executor: Any) -> None:
                watch.going_on()  # the last wait may end, and the run with it, between two looks

        return _ResourceWatch

    def step(self, executor: Any) -> None:
        """One look (at most one per ``poll_s``): report a wait, or raise ClusterBusyError to end the execution."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.poll_s
        try:
            stuck, view = self._stuck()
            tasks = self._tasks(executor, now, stuck)
        except Exception as e:  # a diagnosis must never break the pipeline
            log.debug("resource watch failed: %s", e)
            return
        self._stuck_since = (self._stuck_since or now) if stuck else None
        waited = now - self._stuck_since if stuck else 0.0
        if stuck and waited >= self.wait_s and not self.grows:
            self.failure = ClusterBusyError(busy_message(self.need, view or snapshot(self.need.keys()), waited))
            raise self.failure
        if (stuck and waited >= WARN_AFTER_S) or tasks:
            if now >= self._next_warn:
                self._next_warn, self._warned = now + REPEAT_S, True
                view = view or snapshot(self.need.keys())
                log.warning("%s; %s; %s", self._what(stuck, tasks), explain(view, self.need), self._then(stuck, waited))
        elif not stuck:
            self.going_on()

    def going_on(self) -> None:
        """Says once that what was reported waiting got its resources (at the next look, or when the run ends)."""
        if self._warned:
            self._warned, self._next_warn = False, 0.0
            log.info("the job's actors and tasks got their resources: going on")

    def _stuck(self) -> tuple[list[ActorInfo], ClusterView | None]:
        """This job's actors waiting for resources that no node has free (and a look at the cluster, if any). None
        while as many encoder actors as the pool needs (``need.actors``) run: an autoscaling pool's extra actor that
        lost a race for free CPUs is no reason to stop the job (Ray Data gives up on it)."""
        pending = [a for a in list_actors(("PENDING_CREATION",), self.job) if a.waiting and a.shape]
        if not pending:
            return [], None
        running = [a for a in list_actors(("ALIVE",), self.job) if ENCODER_ACTOR in a.label]
        if len(running) >= self.need.actors:
            return [], None
        view = snapshot(self.need.keys())
        keys = self.need.keys()
        return [a for a in pending if not place([dict(n) for n in view.free], restrict(a.shape, keys))], view

    def _tasks(self, executor: Any, now: float, stuck: list[ActorInfo]) -> list[tuple[dict[str, float], int]]:
        """(shape, count) of this job's kinds of task waiting for resources, once the pipeline has made no progress
        for TASKS_IDLE_S; [] before that."""
        progress = _progress(executor)
        if progress is None:  # without a progress signal a waiting task is not told from a busy pipeline: say nothing
            return []
        if progress != self._progress:
            self._progress, self._progress_at = progress, now
        if now - self._progress_at < TASKS_IDLE_S:
            return []
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        waiting = []
        for shape in self.task_shapes:
            count = sum(r.count for d in status.resource_demands.ray_task_actor_demand for r in d.bundles_by_count
                        if restrict(r.bundle, self.need.keys()) == shape and set(r.bundle) <= set(shape))
            count -= sum(1 for a in stuck if restrict(a.shape, self.need.keys()) == shape)
            if count > 0:
                waiting.append((shape, count))
        return waiting

    def _what(self, stuck: list[ActorInfo], tasks: list[tuple[dict[str, float], int]]) -> str:
        parts = []
        if stuck:
            parts.append(f"{len(stuck)} of the job's {self.need.actors} encoder actor(s) "
                         f"({', '.join(sorted({a.label for a in stuck}))}) wait(s) for {shape_text(stuck[0].shape)} "
                         "that no node has free")
        if tasks:
            parts.append(f"the pipeline has made no progress for {time.monotonic() - self._progress_at:.0f} s and its "
                         f"tasks wait for resources ({', '.join(f'{n} x {shape_text(s)}' for s, n in tasks)})")
        return " and ".join(parts)

    def _then(self, stuck: list[ActorInfo], waited: float) -> str:
        if self.grows:
            return "waiting: the autoscaler may add nodes"
        if stuck:
            return (f"waiting; the job fails in {max(self.wait_s - waited, 0):.0f} s unless they are freed "
                    "(wait_for_resources_s)")
        return "waiting; the job fails after no_progress_timeout_s without progress"


def _progress(executor: Any) -> tuple | None:
    """What Ray Data's no-progress guard compares (outputs taken, tasks finished per operator); None if unknown."""
    try:
        return tuple((op.metrics.num_outputs_taken, op.metrics.num_tasks_finished) for op in executor._topology)
    except Exception:
        return None
