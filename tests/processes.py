"""The machine's processes as the tests see them: one walk of /proc, and a Ray instance's own processes only.

Other Ray instances may run on this machine at the same time (another test session, a CI run, a user's cluster):
a test that kills Ray workers or stops a cluster it started signals its own instance's processes, never theirs.
An instance is named by a folder only it uses (its session dir, or the temp dir a ``ray start`` was given): each of
its head processes (GCS server, raylet, dashboard, monitors) names that folder in its command line, and its workers
and agents, which replace their command line by a title (``ray::RayTrainWorker``), are the raylet's children.
"""
from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    cmdline: bytes  # NUL-separated arguments; a Ray worker's is its title, e.g. b"ray::MapWorker(MapBatches(EncodeActor))"


def processes() -> dict[int, Process]:
    """Every process readable now, by pid (one that exits while it is read is left out)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()  # after "(comm)", which may hold spaces
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z":  # a zombie has exited already: nothing left to signal
            found[int(name)] = Process(int(name), int(fields[1]), cmdline)
    return found


def _names(marker: str) -> re.Pattern:
    """``marker`` as a whole word of a command line: a folder not followed by more of its name (``/tmp/x`` is not
    ``/tmp/x2``), an address not followed by more digits (``:6379`` is not ``:63790``)."""
    return re.compile(re.escape(marker.encode()) + rb"(?![\w.-])")


def _open_files(pid: int) -> bytes:
    """The paths of the files ``pid`` holds open, NUL-separated (nothing if it cannot be read)."""
    links = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}").encode())
            except OSError:
                continue
    except OSError:
        pass
    return b"\0".join(links)


def ray_instance(*markers: str, table: dict[int, Process] | None = None, open_files: bool = False) -> set[int]:
    """The pids of the Ray instance whose processes name any of ``markers`` (its session dir, the temp dir of a
    ``ray start``, its GCS address) in their command line, and of all their descendants; with ``open_files``, also
    those holding a file open under a marker folder (an agent whose raylet died: its title names nothing, its parent
    is init now, but its log files are the instance's). This process and its ancestors are never among them (the
    shell that started the tests may name the same folder)."""
    table = processes() if table is None else table
    patterns = [_names(m) for m in markers]
    mine, pid = set(), os.getpid()
    while pid in table and pid not in mine:
        mine.add(pid)
        pid = table[pid].ppid
    found = {p.pid for p in table.values() if any(pattern.search(p.cmdline) for pattern in patterns)} - mine
    if open_files:
        found |= {p for p in set(table) - found - mine if any(pattern.search(_open_files(p)) for pattern in patterns)}
    while True:
        children = {p.pid for p in table.values() if p.ppid in found} - found - mine
        if not children:
            return found
        found |= children


def ray_workers(title: str, marker: str) -> list[int]:
    """The pids of the worker processes of the Ray instance named by ``marker`` whose title holds ``title`` (an actor's
    class, e.g. ``RayTrainWorker`` or Ray Data's ``MapBatches(EncodeActor)``)."""
    table = processes()
    return sorted(pid for pid in ray_instance(marker, table=table) if title.encode() in table[pid].cmdline)


def this_session() -> str:
    """The session dir of the Ray instance this process is connected to (after ``ray.init``): names it only."""
    import ray

    return ray._private.worker._global_node.get_session_dir_path()


def signal_all(pids, sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:  # gone already
            pass


def stop_ray_instance(*markers: str, grace_s: float = 10) -> None:
    """Stop every process of the instance named by ``markers`` (``ray stop`` would stop every instance on the machine):
    SIGTERM, then SIGKILL for those still there after ``grace_s``. The pids are collected before any dies, as a
    dying raylet orphans its workers, which then no longer descend from anything that names the instance."""
    pids = ray_instance(*markers, open_files=True)
    signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and pids & set(processes()):
        time.sleep(0.1)
    left = pids & set(processes()) | ray_instance(*markers, open_files=True)
    signal_all(left, signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and left & set(processes()):
        time.sleep(0.1)
    assert not left & set(processes()), f"processes of the Ray instance at {markers} outlived SIGKILL: {left}"


def train_worker_pids() -> list[int]:
    """This session's Ray Train worker processes (another Ray instance on the machine has workers of its own, which
    the kill tests must neither count nor kill)."""
    return ray_workers("RayTrainWorker", this_session())


def encoder_actor_pids() -> list[int]:
    """This session's embed-job encoder actor processes (another Ray instance's are left alone, as above)."""
    return ray_workers("MapBatches(EncodeActor)", this_session())
