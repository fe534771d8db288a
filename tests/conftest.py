"""Shared fixtures: one local Ray instance per session, tiny offline encoders, generated corpora."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",  # as init_ray sets it for jobs (see pipeline/runtime.py)
    # no Ray API call may start a Ray instance by itself: a library's background thread calling one after the
    # session's ray.shutdown() started a new head at exit once (its agents outlived the suite by a minute)
    "RAY_ENABLE_AUTO_CONNECT": "0",
})
# the suite's verdict must not depend on the machine's own settings: no cluster to join, no AWS profile,
# endpoint or credentials files of the user's (the S3 tests name their endpoint), no ffmpeg override
for _name in ("RAY_ADDRESS", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
              "ONEENCODER_FFMPEG"):
    os.environ.pop(_name, None)
os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.path.join(_SESSION_DIR, "no-aws-files")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


def pytest_addoption(parser):
    parser.addoption("--shuffle", metavar="SEED", type=int, default=None,
                     help="run the modules in an order shuffled from SEED, and each module's tests in a shuffled order: "
                          "no test may depend on another having run before it")


def pytest_report_header(config):
    seed = config.getoption("--shuffle")
    return None if seed is None else f"order shuffled with --shuffle {seed}"


def pytest_collection_modifyitems(config, items):
    """``--shuffle SEED``: modules in a random order, then each module's tests (a module's fixtures still start once)."""
    import random

    seed = config.getoption("--shuffle")
    if seed is None:
        return
    rng = random.Random(seed)
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    order = list(modules)
    rng.shuffle(order)
    for name in order:
        rng.shuffle(modules[name])
    items[:] = [item for name in order for item in modules[name]]


def _tree(folder: str) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: relative path -> (size, sha256)."""
    import hashlib

    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                data = fh.read()
            out[os.path.relpath(path, folder)] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def _kept_as_built(value, folder: str):
    """Yield a session fixture's ``value``, then fail (at the session's end) if a test changed ``folder``: the shared
    corpora, stores and models are read-only for tests, and one that must change such an artifact works on a copy of
    it (``shutil.copytree(folder, tmp_path / ...)``), so no test's verdict depends on which tests ran before it."""
    before = _tree(folder)
    yield value
    after = _tree(folder)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"a test wrote into the shared fixture folder {folder}: {changed[:10]}"


@pytest.fixture(scope="session")
def kept_as_built():
    """For a test module's shared fixture: ``yield from kept_as_built(value, folder)`` (see ``_kept_as_built``)."""
    return _kept_as_built


@pytest.fixture(scope="session")
def session_dir():
    return _SESSION_DIR


@pytest.fixture(scope="session")
def ray_session(session_dir):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=400_000_000,
             log_to_driver=False, _system_config={"metrics_report_interval_ms": 1000})  # metrics tests wait less
    from ray.data import DataContext

    DataContext.get_current().execution_no_progress_timeout_s = 300  # a hang fails the test
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_corpus(session_dir):
    """12 paired samples in every listed format; returns the manifest path."""
    from pipeline.synthetic.corpus import write_sample_corpus

    folder = os.path.join(session_dir, "corpus")
    yield from _kept_as_built(write_sample_corpus(folder, n=12), folder)


# --- a trained model on a generated concept corpus, shared by the training and evaluation tests ---
from tests.settings import SMALL_EPOCHS, STAGES, VAL_FRACTION  # noqa: E402


@pytest.fixture(scope="session")
def concept_store(session_dir):
    """480 concept samples (24 concepts) encoded by the tiny encoders into a feature store."""
    from pipeline.synthetic.concept_store import write_concept_store

    root = os.path.join(session_dir, "concept-features")
    yield from _kept_as_built((root, write_concept_store(root, n=480, seed=0)), root)


@pytest.fixture(scope="session")
def feature_store(concept_store):
    return concept_store[0]


def _train(store: str, output: str, epochs: int | None = None):
    """The curriculum with the training defaults (no budget flags: what `oneencoder train` gives a user), or with
    ``epochs`` per stage."""
    from pipeline.train.config import load_train_config
    from pipeline.train.job import run_train

    cfg = load_train_config(None, epochs=epochs, features=store, output=output, stages=STAGES, val_fraction=VAL_FRACTION)
    return output, run_train(cfg), cfg


@pytest.fixture(scope="session")
def trained(ray_session, feature_store, session_dir):
    """A model of the whole curriculum, SMALL_EPOCHS per stage: for the tests that need *a* trained artifact."""
    output = os.path.join(session_dir, "model")
    yield from _kept_as_built(_train(feature_store, output, SMALL_EPOCHS), output)


@pytest.fixture(scope="session")
def hard_concept_store(session_dir):
    """The quality bar's first corpus: 480 samples in the hard style (the concept harder to see in pictures and
    clips, so that image and video retrieval stay below 1.0 and a worse model shows)."""
    from pipeline.synthetic.concept_store import write_concept_store

    root = os.path.join(session_dir, "hard-concept-features")
    yield from _kept_as_built((root, write_concept_store(root, n=480, seed=0, style="hard")), root)


@pytest.fixture(scope="session")
def trained_defaults(ray_session, feature_store, session_dir):
    """The curriculum trained with the defaults (automatic epochs, early stopping): the quality tests' model."""
    output = os.path.join(session_dir, "model-defaults")
    yield from _kept_as_built(_train(feature_store, output), output)


@pytest.fixture(scope="session")
def trained_hard(ray_session, hard_concept_store, session_dir):
    """The quality bar's model of the hard corpus: the defaults on it."""
    output = os.path.join(session_dir, "model-hard")
    yield from _kept_as_built(_train(hard_concept_store[0], output), output)


@pytest.fixture(scope="session")
def other_concept_store(session_dir):
    """The quality bar's second corpus: 480 samples in the other style (captions, voice, clips)."""
    from pipeline.synthetic.concept_store import write_concept_store

    root = os.path.join(session_dir, "other-concept-features")
    yield from _kept_as_built((root, write_concept_store(root, n=480, seed=0, style="other")), root)


@pytest.fixture(scope="session")
def trained_other(ray_session, other_concept_store, session_dir):
    """The quality bar's second model: the defaults on the other corpus style."""
    output = os.path.join(session_dir, "model-other")
    yield from _kept_as_built(_train(other_concept_store[0], output), output)


# --- the trained model grown by a fifth modality, depth (`oneencoder train --from`) ---

def _digests(folder: str) -> dict[str, str]:
    import hashlib

    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                out[name] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="session")
def depth_store(session_dir):
    """240 concept samples' image, text and depth features (the same tiny encoders as the trained model's store),
    as `oneencoder embed` would write them."""
    from pipeline.synthetic.concept_store import write_concept_store

    root = os.path.join(session_dir, "depth-features")
    write_concept_store(root, n=240, seed=0, modalities=("image", "text", "depth"))
    yield from _kept_as_built(root, root)


@pytest.fixture(scope="session")
def grown(ray_session, trained, depth_store, session_dir):
    """(MODEL, MODEL2): the trained model, and it plus depth by the command the docs give."""
    from jobs.train import main

    base = trained[0]
    before = _digests(base)
    output = os.path.join(session_dir, "model-depth")
    assert main(["--from", base, "--features", depth_store, "--stages", "depth:image", "--output", output]) == 0
    assert _digests(base) == before  # the model it grows is left as it was
    yield from _kept_as_built((base, output), output)


# --- S3: a local S3-compatible server (moto in server mode) and the embed command's run onto it ---------------

@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the port it bound, not one picked
    server.start()                                                                # and freed for it to take (a race)
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_corpus(s3_endpoint, sample_corpus):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("media")
    fs.mkdir("features")
    corpus = os.path.dirname(sample_corpus)
    rows = []
    with open(sample_corpus) as fh:
        for line in fh:
            row = json.loads(line)
            for m in ("image", "audio"):
                fs.put_file(os.path.join(corpus, row[m]), f"media/corpus/{row[m]}")
            rows.append({"id": row["id"], "image": row["image"], "audio": row["audio"]})
    rows.append({"id": "gone", "image": "images/missing.png", "audio": "s3://media/nothing/here.wav"})
    fs.pipe_file("media/corpus/manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    return fs


@pytest.fixture(scope="session")
def s3_run1(ray_session, s3_endpoint, s3_corpus):
    """The embed command's run from the S3 manifest to s3://features/run1 (image and audio): its process."""
    env = {**os.environ, "RAY_ADDRESS": ray_session, "AWS_ENDPOINT_URL": s3_endpoint}
    cmd = [sys.executable, "-m", "jobs.embed", "--input", "s3://media/corpus/manifest.jsonl",
           "--output", "s3://features/run1", "--modalities", "image,audio"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
