"""Submit a job to a Ray cluster through the job submission API, follow its logs, return its status."""
from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
import uuid
from typing import Any, Sequence

from pipeline.config import ConfigError

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# never uploaded with the working dir: version control, caches, local outputs
EXCLUDES = [".git", "**/__pycache__", "**/.pytest_cache", "*.egg-info", "out", "models", ".venv"]
# what the head answers while no job agent is ready (a cluster just started); submitting again later works
NO_AGENT = "No available agent to submit job"
AGENT_WAIT_S = 60.0
# settings every job process needs on the cluster (see pipeline/runtime.py)
JOB_ENV = ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TOKENIZERS_PARALLELISM",
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "ONEENCODER_CACHE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


def entrypoint(job: str, config: str | None, extra: Sequence[str], root: str = PROJECT_ROOT) -> str:
    """The shell command the cluster runs, e.g. ``python -m jobs.embed --config jobs/configs/embed_tiny.yaml``."""
    from jobs.registry import JOBS

    remote = [name for name, j in JOBS.items() if j.submit]
    if job not in remote:
        raise ConfigError(f"unknown job {job!r}: expected one of {', '.join(remote)}")
    args = list(extra)
    if config:
        path = os.path.abspath(config)
        if not os.path.isfile(path):
            raise ConfigError(f"--config {config!r}: no such file")
        rel = os.path.relpath(path, root)
        if rel.startswith(".."):
            raise ConfigError(f"--config {config!r} is outside the project folder {root}, which is what gets "
                              "uploaded as the job's working dir; put it under jobs/configs/")
        args = ["--config", rel, *args]
    return shlex.join(["python", "-m", *JOBS[job].command, *args])


def runtime_env(root: str = PROJECT_ROOT, env: dict[str, str] | None = None) -> dict:
    """The project as working dir, plus the environment settings present here."""
    source = os.environ if env is None else env
    env_vars = {k: source[k] for k in JOB_ENV if source.get(k)}
    env_vars.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    return {"working_dir": root, "excludes": EXCLUDES, "env_vars": env_vars}


def submit(job: str, address: str, config: str | None = None, extra: Sequence[str] = (), follow: bool = True,
           timeout_s: float | None = None, out=sys.stdout, agent_wait_s: float = AGENT_WAIT_S) -> int:
    """Submit ``job``; with ``follow``, stream its logs and return 0 if it succeeded, else 1."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    command = entrypoint(job, config, extra)
    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # ConnectionError, auth errors: say where and what
        raise ConfigError(f"cannot reach the Ray job API at {address}: {e}") from None
    job_id = _submit_when_agent_ready(client, address, agent_wait_s, out, entrypoint=command,
                                      runtime_env=runtime_env(), metadata={"oneencoder_job": job})
    print(f"submitted {job_id}: {command}", file=out, flush=True)
    if not follow:
        print(f"follow it with: ray job logs --address {address} --follow {job_id}", file=out, flush=True)
        return 0

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", file=out, flush=True)

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout_s))
    except asyncio.TimeoutError:
        client.stop_job(job_id)
        print(f"job {job_id} ran past {timeout_s:.0f} s and was stopped", file=out, flush=True)
    deadline = time.time() + 60
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.time() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    print(f"job {job_id}: {status.value}", file=out, flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


def _submit_when_agent_ready(client, address: str, wait_s: float, out, **job: Any) -> str:
    """``client.submit_job(**job)``, retried while the head answers that no job agent is available yet (a
    cluster just started: HTTP 500 "No available agent to submit job"), for up to ``wait_s`` seconds. The
    submission id is chosen here, so a retry can never start the job twice (the head refuses a used id)."""
    submission_id = f"oneencoder_{uuid.uuid4().hex[:16]}"
    deadline, delay = time.monotonic() + wait_s, 1.0
    while True:
        try:
            return client.submit_job(submission_id=submission_id, **job)
        except RuntimeError as e:
            if NO_AGENT not in str(e):
                raise
            if time.monotonic() + delay > deadline:
                raise RuntimeError(f"the Ray job API at {address} had no job agent ready for {wait_s:g} s "
                                   f"(\"{NO_AGENT}\"): is every node of the cluster up? Try again when "
                                   "`ray status` lists them") from None
            print(f"the cluster has no job agent ready yet; submitting again in {delay:g} s", file=out, flush=True)
            time.sleep(delay)
            delay = min(2 * delay, 8.0)
