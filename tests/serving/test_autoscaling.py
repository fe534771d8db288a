"""Autoscaling, observed: under sustained load an encoder deployment goes from 1 to 2 replicas, and back to 1 once the
load stops, with no request failing on the way (Serve's autoscaler, with delays short enough for a test)."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.serving.test_serve import _config, _in_process

pytestmark = pytest.mark.slow
TEXT = {"ray_actor_options": {"num_cpus": 0.25}, "max_ongoing_requests": 8, "max_queued_requests": 512,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                               "upscale_delay_s": 1, "downscale_delay_s": 5},
        "user_config": {"max_batch_size": 4, "batch_wait_timeout_s": 0.05}}


def _running(deployment: str) -> int:
    from ray import serve
    from ray.serve._private.common import ReplicaState

    app = serve.status().applications["autoscale"]
    return app.deployments[deployment].replica_states.get(ReplicaState.RUNNING, 0)


def test_an_encoder_scales_up_under_load_and_back_down_after(ray_session, trained, tmp_path):
    from serving.local import prepare

    config = _config(str(tmp_path), "autoscale.yaml", {"model": trained[0], "modalities": ["text"]},
                     {"Gateway": {"ray_actor_options": {"num_cpus": 0.1}, "autoscaling_config": None, "num_replicas": 1},
                      "encoder-text": TEXT})
    app, _ = prepare(config)
    seen, failures, stop = [], [], threading.Event()

    def client(n: int) -> None:
        session = requests.Session()
        while not stop.is_set():
            r = session.post(url + "/v1/embeddings", json={"model": "oneencoder", "input": [f"load {n} {time.time()}"]},
                             timeout=60)
            (seen if r.status_code == 200 else failures).append(r.status_code)

    with _in_process(app, "autoscale") as url:
        try:
            assert _running("encoder-text") == 1
            clients = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(24)]
            for c in clients:
                c.start()
            deadline, replicas = time.monotonic() + 120, 1
            while time.monotonic() < deadline and replicas < 2:
                time.sleep(0.5)
                replicas = _running("encoder-text")
            scaled_up_after = len(seen)
            time.sleep(3)  # both replicas serving the load for a while
            stop.set()
            for c in clients:
                c.join(60)
            assert replicas == 2, f"encoder-text did not scale to 2 replicas under load ({len(seen)} requests served)"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and _running("encoder-text") > 1:
                time.sleep(0.5)
            assert _running("encoder-text") == 1, "encoder-text did not scale back to 1 replica after the load stopped"
            after = requests.post(url + "/v1/embeddings", json={"model": "oneencoder", "input": "after"}, timeout=60)
            assert after.status_code == 200
            assert not failures, f"{len(failures)} requests failed: {sorted(set(failures))}"
            assert len(seen) > scaled_up_after > 0
        finally:
            stop.set()
