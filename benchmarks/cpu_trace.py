"""CPU time per process of this machine, sampled from /proc while a benchmark runs (Linux; elsewhere nothing).

It answers "where did the cores go" for a run's start-up: Ray's daemons, Ray Data's own actors, the job's
workers and the driver, window by window. Ray names a worker ``ray::IDLE`` until it gets a task or an actor,
and names it again per call (``ray::_CommitActor.commit``); a process is reported under the last name it had
without the call (a worker that imports the encoder's modules while still IDLE counts as the actor it became).
"""
from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

_RAY_NAME = re.compile(r"^(ray::[^.(\s]+(?:\(.*\))?)")  # ray::Class or ray::Class(args), without .method
_CLOCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_label(pid: int, comm: str, cmdline: list[str]) -> str:
    """A readable, stable name for a process: its Ray name, the Python script it runs, or its command."""
    if pid == os.getpid():
        return "driver (this process)"
    if cmdline and cmdline[0].startswith("ray::"):
        match = _RAY_NAME.match(cmdline[0])
        return match.group(1) if match else cmdline[0]
    scripts = [os.path.basename(a) for a in cmdline[1:3] if a.endswith(".py")]
    return scripts[0] if scripts else comm


def snapshot() -> dict[int, tuple[str, float]]:
    """{pid: (label, CPU seconds used so far, user + system)} of every process this user can read."""
    out: dict[int, tuple[str, float]] = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:  # no /proc: not Linux
        return out
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        out[pid] = (process_label(pid, comm, cmdline), (int(fields[11]) + int(fields[12])) / _CLOCK)
    return out


class CpuTrace:
    """Samples ``snapshot()`` every ``interval`` seconds in a thread between ``__enter__`` and ``__exit__``."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-trace", daemon=True)

    def __enter__(self) -> "CpuTrace":
        self.start = time.time()
        self.samples.append((0.0, snapshot()))
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time() - self.start, snapshot()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.time() - self.start, snapshot()))

    def windows(self, edges: list[float], cores: int | None = None) -> list[dict[str, Any]]:
        """CPU seconds per process label in each window [edges[i], edges[i + 1]) (taken at the nearest samples),
        how many processes of that label used any, and ``idle``: the cores' seconds nobody used. A process that
        ended counts up to its last sample; one that started and ended between two samples is missed (so idle is
        an upper bound)."""
        cores = cores or os.cpu_count() or 1
        names: dict[int, str] = {}
        for _, snap in self.samples:  # a pid's last name other than ray::IDLE
            for pid, (label, _) in snap.items():
                if label != "ray::IDLE" or pid not in names:
                    names[pid] = label
        out = []
        for lo, hi in zip(edges, edges[1:]):
            first, last = self._index(lo), self._index(hi)
            begin = self.samples[first][1]
            end: dict[int, float] = {}  # a pid's CPU at its last sample in the window (it may have ended)
            for _, snap in self.samples[first:last + 1]:
                end.update((pid, cpu) for pid, (_, cpu) in snap.items())
            used: dict[str, float] = {}
            count: dict[str, int] = {}
            for pid, cpu in end.items():
                spent = cpu - begin.get(pid, ("", 0.0))[1]
                if spent > 0:
                    used[names[pid]] = used.get(names[pid], 0.0) + spent
                    count[names[pid]] = count.get(names[pid], 0) + 1
            t0, t1 = self.samples[first][0], self.samples[last][0]
            out.append({"from_s": round(t0, 2), "to_s": round(t1, 2),
                        "idle_s": round(max(0.0, cores * (t1 - t0) - sum(used.values())), 2),
                        "processes": {k: round(v, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1])},
                        "counts": count})
        return out

    def _index(self, t: float) -> int:
        return min(range(len(self.samples)), key=lambda i: abs(self.samples[i][0] - t))


def format_windows(windows: list[dict[str, Any]], top: int = 6) -> list[str]:
    """One line per window: idle, then the ``top`` labels by CPU seconds (``x3``: three processes), the rest summed."""
    lines = []
    for w in windows:
        items = list(w["processes"].items())
        shown = [f"{name}{f' x{n}' if (n := w['counts'].get(name, 1)) > 1 else ''} {s:.1f}" for name, s in items[:top]]
        rest = sum(s for _, s in items[top:])
        if rest:
            shown.append(f"{len(items) - top} others {rest:.1f}")
        lines.append(f"    {w['from_s']:.0f}-{w['to_s']:.0f} s: idle {w['idle_s']:.1f} | " + " | ".join(shown))
    return lines
