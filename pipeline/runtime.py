"""Process-level set-up shared by the job entrypoints: logging and connecting to Ray."""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def setup_logging(verbose: bool = False) -> None:
    """Console logging for a job: our messages at INFO, noisy libraries at WARNING."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("filelock", "urllib3", "botocore", "s3fs", "fsspec", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


TRAIN_POLL_S = "0.25"


def init_ray(dashboard: bool = True) -> None:
    """Connect to the Ray cluster a job is meant to run on, else start a Ray instance of the job's own.

    In this order:

    1. ``RAY_ADDRESS`` set: join that cluster. ``ray job submit`` (and ``oneencoder submit``) set it for the job's
       driver, so a submitted job runs where it was sent; ``RAY_ADDRESS=auto`` joins any instance on this machine.
    2. A cluster started on this machine with ``ray start`` (Ray records its address in
       ``<temp dir>/ray/ray_current_cluster``): join it, as Ray's own ``ray.init()`` would (a cluster's head node,
       a shared workstation). Its workers do not inherit this process's environment: the settings go with a
       runtime_env.
    3. Otherwise start a local instance of the job's own (all of the machine's cores as logical CPUs).

    Why not join any running instance (``address="auto"``, as this function once did): on a laptop
    that runs ``oneencoder serve``, ``oneencoder embed`` then joined the server's private instance, whose Serve
    replicas hold most CPUs, and waited for them for 30 minutes. An instance started by another program's
    ``ray.init()`` (a server, a notebook, a test session) is that program's; a command-line run expects to work
    beside it. The second instance gets all cores too: logical CPUs are scheduling tokens, not pinned cores, and
    fewer than 2 would refuse the default embed setup (1 encoder actor x 1 CPU plus 1 CPU for reading) on a
    2-core laptop; the operating system shares the cores, so the job and the server both run slower while both
    are busy. Whoever wants the job scheduled among the server's replicas sets ``RAY_ADDRESS`` (the embed job then
    says within seconds what it waits for and who holds it, and fails after ``wait_for_resources_s``).

    ``oneencoder serve``, ``train``, ``evaluate`` and the benchmarks connect the same way; a process that already
    called ``ray.init()`` (the tests' session) is left as it is.
    """
    import ray

    if ray.is_initialized():
        return
    # quiet the model hub in workers too: nothing is downloaded for offline presets anyway
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
           # Ray Train's controller drains each worker report every 2 s by default and a report waits for it,
           # which would cap epochs on cached features (~0.5 s) at one per 2 s.
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_POLL_S}
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    started = _started_cluster()
    if started:
        try:  # its workers do not inherit our environment
            ray.init(address=started, runtime_env={"env_vars": {key: os.environ[key] for key in env}})
            return
        except ConnectionError as e:  # a cluster killed without `ray stop` leaves its address behind
            log.warning("the Ray cluster recorded by `ray start` at %s does not answer (%s): starting a local "
                        "instance instead", started, e)
    log.info("starting a local Ray instance for this job (RAY_ADDRESS is unset and no `ray start` cluster runs "
             "here); Ray instances other programs started are left alone: set RAY_ADDRESS to join one")
    # A new local instance: its processes inherit this environment, so no runtime_env. A job-level runtime_env
    # keeps Ray from handing the job the workers it prestarted and starts every new worker through the
    # runtime-env agent: about 2-3 s more before the first embedding on 2 cores (measured). The dashboard serves
    # the State API that Ray Train's clean-up polls (else it logs failures).
    ray.init(address="local", include_dashboard=dashboard)


def _started_cluster() -> str | None:
    """The address of the cluster ``ray start`` last started on this machine, if it left one (Ray's own record,
    which a plain ``ray.init()`` reads too); None if there is none."""
    try:
        from ray._private.utils import read_ray_address

        return read_ray_address() or None
    except Exception:  # internal; if it moves, there is no such cluster to find
        return None
