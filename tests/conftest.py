"""Shared fixtures: one local Ray instance per session, tiny offline encoders, generated corpora."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Set before Ray starts so every worker inherits it. Token auth off: subprocess drivers attach.
_SESSION_DIR = tempfile.mkdtemp(prefix="oneencoder-tests-")
os.environ.update({
    "RAY_AUTH_MODE": "disabled",
    "ONEENCODER_CACHE": os.path.join(_SESSION_DIR, "models"),
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
})
os.environ.pop("RAY_ADDRESS", None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir():
    return _SESSION_DIR


@pytest.fixture(scope="session")
def ray_session(session_dir):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=400_000_000,
             log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().execution_no_progress_timeout_s = 300  # a hang fails the test
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_corpus(session_dir):
    """12 paired samples in every listed format; returns the manifest path."""
    from pipeline.corpus import write_sample_corpus

    return write_sample_corpus(os.path.join(session_dir, "corpus"), n=12)
