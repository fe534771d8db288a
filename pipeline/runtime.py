"""Process-level set-up shared by the job entrypoints: logging and connecting to Ray."""
from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = False) -> None:
    """Console logging for a job: our messages at INFO, noisy libraries at WARNING."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("filelock", "urllib3", "botocore", "s3fs", "fsspec", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


TRAIN_POLL_S = "0.25"


def init_ray() -> None:
    """Connect to the cluster in RAY_ADDRESS (as under ``ray job submit``) or to one running on this machine, else
    start a local one."""
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
    try:  # a cluster this machine already runs (`ray start --head`): its workers do not inherit our environment
        ray.init(address="auto", runtime_env={"env_vars": {key: os.environ[key] for key in env}})
    except ConnectionError:
        # A new local instance: its processes inherit this environment, so no runtime_env. A job-level
        # runtime_env keeps Ray from handing the job the workers it prestarted and starts every new worker
        # through the runtime-env agent: about 2-3 s more before the first embedding on 2 cores (measured).
        # The dashboard serves the State API that Ray Train's clean-up polls (else it logs failures).
        ray.init(address="local")
