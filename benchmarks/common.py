"""What every benchmark shares: its command line (a config class, read as the jobs' are), the JSON result it
writes under ``benchmarks/results/``, and the description of the machine it ran on."""
from __future__ import annotations

import json
import os
import platform
from typing import Any, Callable, Literal

from jobs.registry import Job, build_parser, execute

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
UNRECORDED = {"report", "workdir"}  # settings of where a run writes, not of what it measures
Preset = Literal["paper", "tiny"]
PRESET_HELP = "paper = the paper's architectures at random init (offline); tiny = the test-sized encoders."
REPORT_HELP = ("Where the JSON result goes (a path, or a URI such as s3://bucket/result.json for a run on a "
               "cluster); null = benchmarks/results/<benchmark>.json, from which `python -m benchmarks.report` "
               "makes docs/benchmarks.md's table.")


def benchmark(name: str, summary: str, config: str) -> Job:
    """The command line of ``python -m benchmarks.<name>``: ``config``'s fields as flags (as a job's), run by
    the module's ``run(cfg, args)``. Not an `oneencoder` sub-command."""
    return Job(name, (f"benchmarks.{name}",), summary, config, f"benchmarks.{name}:run",
               f"python -m benchmarks.{name} --config FILE", submit=False)


def cli(job: Job, argv: list[str] | None = None) -> int:
    """Parse ``argv`` with ``job``'s flags and run it: exit 2 with one `error:` line for a bad config."""
    return execute(job, build_parser(job).parse_args(argv))


def finish(name: str, cfg: Any, result: dict[str, Any], text: Callable[[dict[str, Any]], str]) -> int:
    """What every benchmark ends with: its figures on the console, and as JSON (``cfg.report``, or
    ``benchmarks/results/<name>.json``) with its config and the machine it ran on."""
    print(text(result))
    config = cfg.model_dump(mode="json", exclude=UNRECORDED)
    write_result(name, command(name, cfg), config, result, cfg.report)
    return 0


RESULT_FORMAT = 1  # version of a result file's layout (benchmarks/report.py refuses another)


def write_result(name: str, how: str, config: dict[str, Any], result: Any, path: str | None = None) -> str:
    """Write benchmark ``name``'s ``result`` with the command that reran it (``how``), its ``config`` and this
    machine (and its Ray cluster's resources) to ``path``: a local file, or a URI such as s3://bucket/key.json
    (so a run submitted to a cluster keeps its result); default ``benchmarks/results/<name>.json``."""
    import fsspec

    path = path or os.path.join(RESULTS, f"{name}.json")
    record = {"format": RESULT_FORMAT, "benchmark": name, "command": how, "config": config, "machine": machine(),
              "result": result}
    if "://" not in path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with fsspec.open(path, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1)
        fh.write("\n")
    print(f"result written to {path}")
    return path


def command(name: str, cfg: Any) -> str:
    """The command line that reruns ``cfg``: its fields that differ from their defaults as flags."""
    words = [f"python -m benchmarks.{name}"]
    for field, info in type(cfg).model_fields.items():
        value = getattr(cfg, field)
        if field in UNRECORDED or info.is_required() or value == info.get_default(call_default_factory=True):
            continue
        flag = "--" + field.replace("_", "-")
        if isinstance(value, bool):
            words += [flag] if value else []
        else:
            words += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return " ".join(words)


def machine() -> dict[str, Any]:
    """This machine as a benchmark table names it: CPU model and cores, memory, GPU, and the versions that
    matter (Python, torch, Ray)."""
    import ray
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cluster = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")} \
        if ray.is_initialized() else None  # where the work ran, when that is more than this machine
    return {"system": f"{platform.system()} {platform.machine()}", "cpu": cpu, "cores": os.cpu_count(),
            "memory_gib": round(memory_gib, 1) if memory_gib else None, "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "cluster": cluster}


def describe(m: dict[str, Any]) -> str:
    """One line naming a result's machine (and its Ray cluster, when that had more CPUs or GPUs than it)."""
    memory = f", {m['memory_gib']:g} GiB RAM" if m.get("memory_gib") else ""
    cluster = m.get("cluster") or {}
    more = cluster.get("CPU", 0) > (m["cores"] or 0) or cluster.get("GPU", 0) > (1 if m["gpu"] else 0)
    on = f" (Ray cluster: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs)" if more else ""
    return (f"{m['system']}, {m['cpu']}, {m['cores']} cores{memory}, {m['gpu'] or 'no GPU'}{on}; "
            f"Python {m['python']}, torch {m['torch']}, Ray {m['ray']}")


def split_ints(value: Any, example: str) -> Any:
    """A list field given as "1,8,32" on the command line → [1, 8, 32] (other values pass to pydantic)."""
    if isinstance(value, str):
        try:
            return [int(x) for x in value.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"expected comma-separated integers, e.g. {example}, got {value!r}") from None
    return value


def steady_rate(commits: list[float], shard_size: int) -> float | None:
    """Items/s between the second and the second-to-last shard commit (start-up and drain excluded)."""
    if len(commits) < 4 or commits[-2] <= commits[1]:
        return None
    return shard_size * (len(commits) - 3) / (commits[-2] - commits[1])


def commit_times(out: str, modality: str) -> list[float]:
    """When each shard of ``modality`` in the feature store ``out`` was committed (its markers), in order."""
    from pipeline.store.features import FeatureStore

    return sorted(m["committed_at"] for m in FeatureStore(out, {}).committed_shards(modality).values())
