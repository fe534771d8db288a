"""The kill tests' helpers (tests/processes.py) find their own Ray instance's processes only: while they run, another
Ray instance on the machine (a concurrent suite's, a CI run's, a user's) keeps its workers, titles alike."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.processes import (encoder_actor_pids, ray_instance, signal_all, stop_ray_instance, this_session,
                             train_worker_pids)

pytestmark = pytest.mark.slow  # starts a second Ray instance and SIGKILLs workers

ENCODE_ACTOR = "MapWorker(MapBatches(EncodeActor))"  # the class name Ray Data gives the embed job's encoder actors

# A second Ray instance, as another program on the machine runs it: its own temp dir, actors with the titles the kill
# tests look for. It prints their pids, waits for a line, then asks its actors for their pids again.
SECOND = """
import os, sys
import ray

ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=sys.argv[1])

class Pid:
    def pid(self):
        return os.getpid()

actors = [ray.remote(num_cpus=0)(type(name, (Pid,), {})).remote() for name in sys.argv[2:]]
print(*ray.get([a.pid.remote() for a in actors], timeout=120), flush=True)
sys.stdin.readline()
print(*ray.get([a.pid.remote() for a in actors], timeout=60), flush=True)
"""


def test_kill_helpers_find_their_own_workers_and_spare_another_instances(ray_session, tmp_path):
    import ray


    class Pid:  # defined here, so that Ray ships it by value (workers cannot import this test module)
        def pid(self) -> int:
            return os.getpid()

    temp = tempfile.mkdtemp(prefix="oe-other-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = tmp_path / "second.err"
    with open(log, "w") as err:
        other = subprocess.Popen([sys.executable, "-c", SECOND, temp, "RayTrainWorker", ENCODE_ACTOR], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        theirs = [int(pid) for pid in other.stdout.readline().split()]
        assert len(theirs) == 2, log.read_text()[-3000:]
        mine = [ray.remote(num_cpus=0)(type(name, (Pid,), {})).remote() for name in ("RayTrainWorker", ENCODE_ACTOR)]
        own = ray.get([actor.pid.remote() for actor in mine], timeout=120)

        # each helper finds this session's actor of its title, and not the other instance's of the same title
        assert train_worker_pids() == [own[0]] and encoder_actor_pids() == [own[1]], (own, theirs)
        session = ray_instance(this_session())
        assert set(own) <= session and not set(theirs) & session
        # and the other instance's processes are found by its own folder, for a test that must stop it
        assert set(theirs) <= ray_instance(temp) and not ray_instance(temp) & session

        signal_all(train_worker_pids() + encoder_actor_pids())  # what the kill tests do to their victims
        for actor in mine:
            with pytest.raises(ray.exceptions.RayActorError):
                ray.get(actor.pid.remote(), timeout=60)
        out, _ = other.communicate("the kill helpers have run\n", timeout=120)
        assert other.returncode == 0, log.read_text()[-3000:]
        assert [int(pid) for pid in out.split()] == theirs  # the same processes answered: none was killed
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        stop_ray_instance(temp)
        shutil.rmtree(temp, ignore_errors=True)
