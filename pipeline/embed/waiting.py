"""Room for the embed job on a shared Ray instance: what it needs, what is free, who holds the rest.

``wait_for_room`` runs before the pipeline starts: it returns at once when the cluster's FREE resources hold the
encoder pool and a reading/decoding task beside it, else says (WARNING) what the job waits for and who holds it,
and fails with ``ClusterBusyError`` once ``wait_s`` passes on a cluster that cannot add nodes. ``pipeline.embed.watch``
keeps watching while the pipeline runs, with the same view and messages.

Who holds what comes from the GCS (its actor and placement-group tables), which answers with or without the
dashboard; Ray's State API (``ray.util.state``) needs the dashboard, which ``include_dashboard=False`` leaves out.
Work that is not an actor or a placement group (tasks, drivers' leases) shows as "tasks and other work".
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

log = logging.getLogger(__name__)
POLL_S = 0.5        # how often a wait looks again
REPEAT_S = 30.0     # a wait still going on is reported again this often
EPS = 1e-6


class ClusterBusyError(RuntimeError):
    """Other work holds the resources the job needs and nothing can add nodes: the message names what is needed,
    what is free, who holds the rest and what to do."""


@dataclasses.dataclass(frozen=True)
class Need:
    """What the job needs free at once: ``actors`` x ``actor`` (the encoder pool), and each of ``beside`` (one read,
    repartition or decode task at a time) next to them."""

    actor: dict[str, float]
    actors: int
    beside: tuple[dict[str, float], ...]

    def keys(self) -> list[str]:
        return sorted({k for shape in (self.actor, *self.beside) for k, v in shape.items() if v > 0})

    def amount(self, key: str) -> float:
        return self.actors * self.actor.get(key, 0.0) + max((s.get(key, 0.0) for s in self.beside), default=0.0)

    def text(self) -> str:
        beside = " and ".join(f"({shape_text(s)})" if len(s) > 1 else shape_text(s) for s in self.beside)
        if not self.actors:  # planning's tasks alone (indexing tar shards), before any encoder
            return f"{beside} for a planning task"
        pool = f"{self.actors} encoder actor{'s' if self.actors != 1 else ''} x {shape_text(self.actor)}"
        return f"{pool}, and {beside} beside {'them' if self.actors != 1 else 'it'} for reading and decoding"


@dataclasses.dataclass(frozen=True)
class ActorInfo:
    label: str
    job: str
    waiting: bool                # pending creation with no worker yet: not placed, holds nothing
    shape: dict[str, float]      # its resources (empty inside a placement group: the group holds them)
    group: str                   # its placement group id, "" if none


@dataclasses.dataclass
class ClusterView:
    """One look at the cluster: free resources per node, totals, and who holds what (None: unknown, see ``problem``)."""

    free: list[dict[str, float]]
    total: dict[str, float]
    actors: list[ActorInfo]
    holders: dict[str, list] | None  # label -> [count, {resource: amount}]
    problem: str = ""


def shape_text(shape: dict[str, float], zeros: bool = False) -> str:
    return ", ".join(f"{_num(v)} {k}" for k, v in sorted(shape.items()) if v > 0 or zeros) or "no resources"


def _num(value: float) -> str:
    return f"{round(value, 3):g}"


def cluster_can_grow() -> bool:
    """Whether an autoscaler can add nodes (Ray Data's own test; internal, so if it moves, assume it can)."""
    try:
        from ray.data._internal.cluster_autoscaler.util import is_autoscaling_enabled

        return bool(is_autoscaling_enabled())
    except Exception:
        return True


def list_actors(states: tuple[str, ...], job: str | None = None) -> list[ActorInfo]:
    """The GCS actor table's actors in ``states`` (of ``job``, a hex job id, if given)."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    job_id = ray.JobID.from_hex(job) if job else None
    out = []
    for name in states:
        for raw in accessor.get_actor_table(job_id, name):
            a = gcs_pb2.ActorTableData.FromString(raw)
            group = a.placement_group_id.hex() if a.placement_group_id.strip(b"\xff") else ""
            shape = {} if group else {k: float(v) for k, v in a.required_resources.items()}
            waiting = name == "PENDING_CREATION" and not a.address.worker_id
            out.append(ActorInfo(a.class_name or a.name or "actor", a.job_id.hex(), waiting, shape, group))
    return out


def snapshot(keys: list[str]) -> ClusterView:
    """Free and total resources (``keys`` only) and who holds them: actors and placement groups by name."""
    import ray

    view = ClusterView(_per_node(keys, free=True), restrict(ray.cluster_resources(), keys), [], None)
    try:
        view.actors = list_actors(("ALIVE", "PENDING_CREATION"))
        holders: dict[str, list] = {}
        for a in view.actors:
            if not a.waiting and not a.group and any(a.shape.get(k, 0) > 0 for k in keys):
                _add(holders, a.label, restrict(a.shape, keys))
        for group_id, group in ray.util.placement_group_table().items():
            if group.get("state") == "CREATED":
                inside = sorted({a.label for a in view.actors if a.group == group_id})
                label = f"placement group {group.get('name') or group_id[:8]}"
                label += f" ({', '.join(inside)})" if inside else ""
                for bundle in group.get("bundles", {}).values():
                    _add(holders, label, restrict(bundle, keys), count=0)
        view.holders = holders
    except Exception as e:  # still say what is needed and free, from the resource totals
        view.problem = f"the GCS actor table could not be read: {e}"
    return view


def _per_node(keys: list[str], free: bool) -> list[dict[str, float]]:
    """Each alive node's free (or total) resources, ``keys`` only."""
    import ray

    try:
        from ray._private import state

        nodes = (state.available_resources_per_node if free else state.total_resources_per_node)()
        return [restrict(r, keys) for r in nodes.values()]
    except Exception:  # internal: if it moves, the whole cluster counts as one node
        return [restrict(ray.available_resources() if free else ray.cluster_resources(), keys)]


def restrict(resources: dict[str, Any], keys: list[str]) -> dict[str, float]:
    return {k: float(resources.get(k, 0.0)) for k in keys}


def _add(holders: dict[str, list], label: str, shape: dict[str, float], count: int = 1) -> None:
    entry = holders.setdefault(label, [0, {}])
    entry[0] += count
    for k, v in shape.items():
        entry[1][k] = entry[1].get(k, 0.0) + v


def place(nodes: list[dict[str, float]], shape: dict[str, float]) -> bool:
    """Place ``shape`` on the first node with room (its resources taken from ``nodes``); False if none has it."""
    for node in nodes:
        if all(node.get(k, 0.0) + EPS >= v for k, v in shape.items()):
            for k, v in shape.items():
                node[k] = node.get(k, 0.0) - v
            return True
    return False


def has_room(need: Need, free: list[dict[str, float]]) -> bool:
    """Whether the pool's actors fit the free resources and each of ``need.beside`` fits next to them."""
    nodes = [dict(n) for n in free]
    if not all(place(nodes, need.actor) for _ in range(need.actors)):
        return False
    return all(place([dict(n) for n in nodes], shape) for shape in need.beside)


def explain(view: ClusterView, need: Need) -> str:
    """"0 of the cluster's 2 CPU free, held by: Holder x2 (2)" for each resource the job is short of."""
    keys = need.keys()
    free = {k: sum(n.get(k, 0.0) for n in view.free) for k in keys}
    short = [k for k in keys if free[k] + EPS < need.amount(k)]
    spread = "" if short else " (enough in all, but no node has room for all it needs)"
    short = short or [k for k in keys if view.total.get(k, 0.0) - free[k] > EPS] or keys
    return "; ".join(f"{_num(free[k])} of the cluster's {_num(view.total.get(k, 0.0))} {k} free"
                     + (f", held by: {_held(view, k, free[k])}" if view.total.get(k, 0.0) - free[k] > EPS else "")
                     for k in short) + spread


def _held(view: ClusterView, key: str, free: float) -> str:
    if view.holders is None:
        return f"unknown ({view.problem})"
    items = [(res.get(key, 0.0), label, count) for label, (count, res) in view.holders.items()
             if res.get(key, 0.0) > EPS]
    rest = view.total.get(key, 0.0) - free - sum(amount for amount, _, _ in items)
    if rest > 1e-3:
        items.append((rest, "tasks and other work", 0))
    items.sort(key=lambda item: (-item[0], item[1]))
    named = [f"{label}{f' x{count}' if count > 1 else ''} ({_num(amount)})" for amount, label, count in items[:8]]
    return ", ".join(named + ([f"and {len(items) - 8} more"] if len(items) > 8 else []))


ADVICE = ("Stop the work that holds them (e.g. a `oneencoder serve` on this Ray instance), lower "
          "encoders.<modality>.actors or num_cpus, run the job on a Ray instance of its own (without RAY_ADDRESS "
          "and with no `ray start` cluster on the machine, `oneencoder embed` starts one), or raise "
          "wait_for_resources_s to wait longer")


def busy_message(need: Need, view: ClusterView, waited: float) -> str:
    return (f"no room for the embed job on this Ray cluster after {waited:.0f} s (wait_for_resources_s): it needs "
            f"{need.text()}; {explain(view, need)}; and no autoscaler can add nodes. {ADVICE}")


def wait_for_room(need: Need, wait_s: float, grows: bool | None = None, poll_s: float = POLL_S) -> None:
    """Return once the cluster's free resources hold ``need`` (at once if they do now, or if an autoscaler can add
    nodes: the pipeline's requests make it scale). Else log (WARNING) what the job waits for and who holds it,
    look again every ``poll_s``, and raise ClusterBusyError if ``wait_s`` seconds pass without room."""
    started = time.monotonic()
    view = snapshot(need.keys())
    if has_room(need, view.free):
        return
    if grows is None:
        grows = cluster_can_grow()
    if not grows and not has_room(need, _per_node(need.keys(), free=False)):
        from pipeline.config import ConfigError

        nodes = " / ".join(shape_text(n, zeros=True) for n in _per_node(need.keys(), free=False))
        raise ConfigError(f"no node of this Ray cluster can hold the job, even idle: it needs {need.text()}; its "
                          f"nodes have {nodes} (lower encoders.<modality>.actors, num_cpus, num_gpus or resources, or "
                          "decode.resources)")
    if grows:
        log.warning("the job needs %s; %s; starting: the autoscaler may add nodes", need.text(), explain(view, need))
        return
    log.warning("waiting for room: the job needs %s; %s; waiting up to %g s (wait_for_resources_s) for them to be "
                "freed", need.text(), explain(view, need), wait_s)
    reported = started
    while True:
        waited = time.monotonic() - started
        if waited >= wait_s:
            raise ClusterBusyError(busy_message(need, view, waited))
        time.sleep(min(poll_s, wait_s - waited))
        view = snapshot(need.keys())
        if has_room(need, view.free):
            log.info("room for the job after %.1f s of waiting: starting", time.monotonic() - started)
            return
        if time.monotonic() - reported >= REPEAT_S:
            reported = time.monotonic()
            log.warning("still waiting for room (%.0f of %g s): %s", reported - started, wait_s, explain(view, need))

