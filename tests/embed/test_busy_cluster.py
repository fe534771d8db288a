"""The embed job on a Ray instance whose CPUs other work holds (as a Serve app's replicas do on a laptop): it says
within seconds what it waits for and who holds it, and fails after ``wait_for_resources_s`` instead of waiting
until ``no_progress_timeout_s`` (30 minutes). A command-line run starts its own instance beside one another
program started, and joins a cluster started with `ray start` (``init_ray``)."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import ray

from pipeline.embed.config import EmbedConfig
from pipeline.embed.job import run_embed
from pipeline.embed.waiting import ClusterBusyError
from tests.settings import ROOT


@ray.remote(num_cpus=1)
class Holder:
    """Stands for a Serve replica: an actor of other work that holds a CPU."""

    def ping(self) -> bool:
        return True


def _hold(n: int) -> list:
    holders = [Holder.remote() for _ in range(n)]
    ray.get([h.ping.remote() for h in holders], timeout=60)
    return holders


@contextlib.contextmanager
def _held_cpus(n: int = 2):
    """All of the session's 2 CPUs held by ``n`` actors for the block; released after it, whatever happens."""
    holders = _hold(n)
    try:
        yield holders
    finally:
        for h in holders:
            ray.kill(h)
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0.0) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        # the next test must find the session's CPUs free, not inherit holders still going
        assert ray.available_resources().get("CPU", 0.0) >= 2, f"CPUs not given back in 30 s: {ray.available_resources()}"


def _config(corpus: str, out: str, **fields) -> EmbedConfig:
    return EmbedConfig(input=corpus, output=out, modalities=["text"], no_progress_timeout_s=120, **fields)


def _pending_actors_of_this_job() -> list[str]:
    from pipeline.embed.waiting import list_actors

    return [a.label for a in list_actors(("PENDING_CREATION",), ray.get_runtime_context().get_job_id())]


def test_a_job_whose_cpus_other_work_holds_fails_after_the_grace_period_naming_the_holders(ray_session, sample_corpus,
                                                                                          tmp_path, capsys, caplog):
    out = str(tmp_path / "out")
    caplog.set_level(logging.INFO, logger="pipeline")
    with _held_cpus(2):
        started = time.time()
        with pytest.raises(ClusterBusyError) as raised:
            run_embed(_config(sample_corpus, out, wait_for_resources_s=3))
        failed = time.time()
        from jobs.embed import main  # the command line: one `error:` line, exit status 2

        assert main(["--input", sample_corpus, "--output", out, "--modalities", "text",
                     "--wait-for-resources-s", "1"]) == 2
    message = str(raised.value)
    waits = [r.created for r in caplog.records if "waiting for room" in r.getMessage() and r.created < failed]
    assert waits and waits[0] >= started  # it said so at once (after planning, and building the model once) ...
    assert failed - waits[0] < 15, failed - waits[0]  # ... and failed after 3 s, not no_progress_timeout_s (120 s)
    assert "it needs 1 encoder actor x 0.5 CPU, and 1 CPU beside it for reading and decoding" in message
    assert "0 of the cluster's 2 CPU free, held by: Holder x2 (2)" in message
    assert "no autoscaler can add nodes" in message and "oneencoder serve" in message
    assert "wait_for_resources_s" in message and "num_cpus" in message
    err = capsys.readouterr().err
    assert "error: no room for the embed job" in err and "Holder x2 (2)" in err
    assert not os.path.exists(os.path.join(out, "features"))  # refused before the pipeline started


def test_planning_tar_shards_on_a_held_instance_says_what_it_waits_for_and_fails(ray_session, sample_corpus, tmp_path):
    """Indexing tar shards runs Ray tasks before the encoder pool is planned: they wait for room the same way."""
    from tests.media_factory import write_webdataset

    shards = write_webdataset(sample_corpus, str(tmp_path / "wds"), per_shard=6, modalities=("text",))
    with _held_cpus(2):
        started = time.monotonic()
        with pytest.raises(ClusterBusyError, match=r"it needs 0\.25 CPU for a planning task; 0 of the cluster's 2 CPU "
                                                   r"free, held by: Holder x2 \(2\)"):
            run_embed(_config(shards[0], str(tmp_path / "out"), wait_for_resources_s=2, tar_index="headers"))
        assert time.monotonic() - started < 30


def test_without_the_actor_table_the_error_still_says_what_is_needed_and_free(ray_session, sample_corpus, tmp_path,
                                                                             monkeypatch):
    """Who holds the CPUs comes from the GCS actor table; if that cannot be read (an internal API that moved), the
    job still says what it needs and what is free, and still fails after the grace period."""
    import pipeline.embed.waiting as waiting

    def unreadable(*args, **kwargs):
        raise RuntimeError("no actor table here")

    monkeypatch.setattr(waiting, "list_actors", unreadable)
    with _held_cpus(2), pytest.raises(ClusterBusyError) as raised:
        run_embed(_config(sample_corpus, str(tmp_path / "out"), wait_for_resources_s=1))
    message = str(raised.value)
    assert "it needs 1 encoder actor x 0.5 CPU, and 1 CPU beside it for reading and decoding" in message
    assert "0 of the cluster's 2 CPU free, held by: unknown (the GCS actor table could not be read: no actor table " \
           "here)" in message


def test_a_pool_no_node_could_ever_hold_is_refused_at_once(ray_session, sample_corpus, tmp_path):
    """A GPU encoder on a cluster without GPUs that cannot grow: nobody holds what it needs, nothing will free it."""
    from pipeline.config import ConfigError

    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"no node of this Ray cluster can hold the job, even idle: it needs 1 encoder "
                                          r"actor x 1 CPU, 1 GPU, .*its nodes have 2 CPU, 0 GPU \(lower"):
        run_embed(_config(sample_corpus, str(tmp_path / "out"), encoders={"text": {"num_gpus": 1}}))
    assert time.monotonic() - started < 30  # not wait_for_resources_s (60 s), not no_progress_timeout_s


@pytest.mark.slow
def test_the_job_says_what_it_waits_for_and_starts_once_the_holders_let_go(ray_session, sample_corpus, tmp_path,
                                                                          caplog):
    caplog.set_level(logging.INFO, logger="pipeline")
    holders = _hold(2)
    released = []

    def release():
        released.append(time.time())
        for h in holders:
            ray.kill(h)

    timer = threading.Timer(5.0, release)
    started = time.time()
    timer.start()
    try:
        summary = run_embed(_config(sample_corpus, str(tmp_path / "out"), wait_for_resources_s=120))
    finally:
        timer.cancel()
        if not released:
            release()
    waits = [r for r in caplog.records if r.levelno == logging.WARNING and "waiting for room" in r.getMessage()]
    assert waits, [r.getMessage() for r in caplog.records]
    assert waits[0].created - started < 5.0 and waits[0].created < released[0]  # said while it waited, at once
    assert "0 of the cluster's 2 CPU free, held by: Holder x2 (2)" in waits[0].getMessage()
    assert "waiting up to 120 s (wait_for_resources_s)" in waits[0].getMessage()
    assert any("room for the job after" in r.getMessage() for r in caplog.records)
    assert summary["modalities"]["text"]["complete"]


@pytest.mark.slow
def test_an_encoder_actor_that_finds_no_room_once_running_is_reported_and_ends_the_run(ray_session, sample_corpus,
                                                                                     tmp_path, caplog, monkeypatch):
    """The CPUs are taken after the check before the start passed (here: the check skipped): the watch inside
    Ray Data's scheduling loop reports the encoder actor within seconds and ends the run after the grace period."""
    import pipeline.embed.job as job

    monkeypatch.setattr(job, "wait_for_room", lambda *args, **kwargs: None, raising=False)
    caplog.set_level(logging.INFO, logger="pipeline")
    with _held_cpus(2):
        started = time.time()
        with pytest.raises(ClusterBusyError) as raised:
            run_embed(_config(sample_corpus, str(tmp_path / "out"), wait_for_resources_s=8))
        ended = time.time()
        elapsed = ended - started
        left = _pending_actors_of_this_job()
    assert elapsed < 60, elapsed
    message = str(raised.value)
    assert "0 of the cluster's 2 CPU free, held by: Holder x2 (2)" in message and "oneencoder serve" in message
    waits = [r for r in caplog.records if r.levelno == logging.WARNING and "encoder actor" in r.getMessage()]
    assert waits, [r.getMessage() for r in caplog.records]
    first = waits[0].getMessage()
    # the pool's first actor (of one per CPU, as the actors decode the text themselves): half a CPU of the two
    assert "1 of the job's 1 encoder actor(s)" in first and "wait(s) for 0.5 CPU that no node has free" in first
    assert "Holder x2 (2)" in first and "the job fails in" in first
    # within seconds of the actor's wait (WARN_AFTER_S = 3 s), well before the run ends (8 s of waiting); measured
    # from the end, since the start of a session's first pipeline takes seconds of its own on a loaded machine
    assert ended - waits[0].created > 8 - 3 - 1.5, (ended - waits[0].created, elapsed)
    assert not left, left  # the run took its waiting actor down with it: nothing grabs the CPUs once freed


@pytest.mark.slow
def test_tasks_that_find_no_room_once_running_are_reported_and_the_job_goes_on_once_freed(ray_session, sample_corpus,
                                                                                        tmp_path, caplog, monkeypatch):
    """The pool fits (0.25 CPU) but a read task (1 CPU here) finds no room beside the 1.5 CPUs other work holds: the
    watch says so once the pipeline has made no progress for a while; tasks are never failed on (a slow task stops
    progress too), so the job goes on when the holder lets go, well past wait_for_resources_s."""
    import pipeline.embed.job as job

    monkeypatch.setattr(job, "wait_for_room", lambda *args, **kwargs: None, raising=False)
    caplog.set_level(logging.INFO, logger="pipeline")
    holder = Holder.options(num_cpus=1.5).remote()
    ray.get(holder.ping.remote(), timeout=60)

    def release_once_reported():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("tasks wait" in r.getMessage() for r in list(caplog.records)):
            time.sleep(0.2)
        ray.kill(holder)

    releaser = threading.Thread(target=release_once_reported, daemon=True)
    releaser.start()
    try:
        summary = run_embed(_config(sample_corpus, str(tmp_path / "out"), wait_for_resources_s=5,
                                    decode={"read_num_cpus": 1.0}, encoders={"text": {"num_cpus": 0.25}}))
    finally:
        releaser.join()
    waits = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "tasks wait" in r.getMessage()]
    assert waits, [r.getMessage() for r in caplog.records]
    assert "the pipeline has made no progress for" in waits[0]
    assert "its tasks wait for resources (1 x 1 CPU)" in waits[0]
    assert "Holder (1.5)" in waits[0] and "no_progress_timeout_s" in waits[0]
    assert any("got their resources: going on" in r.getMessage() for r in caplog.records)
    assert summary["modalities"]["text"]["complete"]


def _ray_processes(marker: str) -> list[int]:
    """The processes of the Ray instance whose folder is ``marker``, its workers and agents included."""
    from tests.processes import ray_instance

    return sorted(ray_instance(marker))


@pytest.mark.slow
def test_the_command_line_starts_its_own_instance_beside_another_programs_but_joins_a_ray_start_cluster(
        ray_session, sample_corpus, tmp_path):
    """The session's instance stands for `oneencoder serve`'s, all its CPUs held: `oneencoder embed` (no
    RAY_ADDRESS) runs on an instance of its own and completes. A cluster recorded by `ray start` (Ray's
    ray_current_cluster file) is joined, as a plain ray.init() would."""
    temp = tempfile.mkdtemp(prefix="oe-busy-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "RAY_TMPDIR": temp}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "out"
    try:
        with _held_cpus(2):
            proc = subprocess.run([sys.executable, "-m", "jobs.embed", "--input", sample_corpus, "--output", str(out),
                                   "--modalities", "text", "--wait-for-resources-s", "20"],
                                  env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "starting a local Ray instance for this job" in proc.stderr
        assert "this run: 12 items" in proc.stdout
        deadline = time.monotonic() + 20
        while _ray_processes(temp) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _ray_processes(temp)  # its instance went with it

        os.makedirs(os.path.join(temp, "ray"), exist_ok=True)
        with open(os.path.join(temp, "ray", "ray_current_cluster"), "w") as fh:
            fh.write(ray_session)
        probe = ("from pipeline.runtime import init_ray; init_ray(); import ray; "
                 "print(ray.get_runtime_context().gcs_address)")
        joined = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                                cwd=ROOT)
        assert joined.returncode == 0, joined.stderr[-3000:]
        assert joined.stdout.split()[-1] == ray_session
    finally:
        from tests.processes import stop_ray_instance

        stop_ray_instance(temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_an_extra_actor_of_an_autoscaling_pool_that_finds_no_room_is_not_a_stuck_job(ray_session, monkeypatch):
    """When the actors decode (on CPU), the pool starts one actor and adds more while CPUs are free: an added actor
    that lost the CPUs to other work waits, but the job runs on at its minimum. Only a pool below its minimum is
    stuck (and fails after wait_for_resources_s)."""
    import pipeline.embed.watch as watch_module
    from pipeline.embed.waiting import ActorInfo, Need

    job = ray.get_runtime_context().get_job_id()
    pending = ActorInfo("MapWorker(MapBatches(EncodeActor))", job, True, {"CPU": 64.0}, "")  # no node holds 64
    alive: list[ActorInfo] = []
    monkeypatch.setattr(watch_module, "list_actors",
                        lambda states, job=None: [pending] if "PENDING_CREATION" in states else alive)
    watch = watch_module.PoolWatch(Need({"CPU": 0.5}, 1, ({"CPU": 1.0},)), 5.0, [])
    stuck, _ = watch._stuck()
    assert stuck == [pending]  # none running: below the minimum of 1
    alive.append(ActorInfo("MapWorker(MapBatches(EncodeActor))", job, False, {"CPU": 0.5}, ""))
    alive.append(ActorInfo("_CommitActor", job, False, {"CPU": 0.0}, ""))
    assert watch._stuck() == ([], None)  # the minimum runs: the extra one may wait


def test_a_reported_wait_that_ends_with_the_run_is_said_to_have_ended(ray_session, caplog):
    """The last wait may end, and the pipeline finish, between two of the watch's looks: the run's end says it."""
    import pipeline.embed.watch as watch_module
    from pipeline.embed.waiting import Need

    caplog.set_level(logging.INFO, logger="pipeline")
    watch = watch_module.PoolWatch(Need({"CPU": 0.5}, 1, ({"CPU": 1.0},)), 5.0, [])
    callback = watch.callback_class()()
    callback.after_execution_succeeds(None)
    assert not any("going on" in r.getMessage() for r in caplog.records)  # nothing was reported waiting
    watch._warned = True
    callback.after_execution_succeeds(None)
    callback.after_execution_succeeds(None)
    assert sum("got their resources: going on" in r.getMessage() for r in caplog.records) == 1
