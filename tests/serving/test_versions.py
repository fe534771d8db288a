"""Switching the default model version is a config change: the application redeployed with another `model`
(what `serve deploy` of the edited config does) while clients keep sending requests; none fails, and the default id
then embeds with the new version (here: it gains depth)."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.serving.test_serve import _config, _in_process

pytestmark = pytest.mark.slow
SMALL = {"ray_actor_options": {"num_cpus": 0.1}, "autoscaling_config": None, "num_replicas": 1}


def _application(tmp_path, name: str, default: str, grown: tuple[str, str]):
    from serving.local import prepare

    versions = {"oneencoder-base": grown[0], "oneencoder-depth": grown[1]}
    config = _config(str(tmp_path), name, {"model": default, "versions": versions, "modalities": ["text", "depth"]},
                     {"Gateway": SMALL, "encoder-text": SMALL, "encoder-depth": SMALL})
    return prepare(config)[0]


def _default(url: str) -> dict:
    return next(m for m in requests.get(url + "/v1/models", timeout=30).json()["data"] if m["default"])


def test_switching_the_default_version_keeps_every_request_answered(ray_session, grown, tmp_path):
    from ray import serve

    answered, failed, stop = [], [], threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(url + "/v1/embeddings", json={"model": "oneencoder", "input": "a red circle"},
                                 timeout=60)
                (answered if r.status_code == 200 else failed).append((r.status_code, r.text[:200]))
            except requests.RequestException as e:
                failed.append((None, repr(e)))

    with _in_process(_application(tmp_path, "v1.yaml", grown[0], grown), "versions") as url:
        try:
            before = _default(url)
            assert "depth" not in before["modalities"]  # the base model is the default
            clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
            for c in clients:
                c.start()
            time.sleep(2)
            # the edited config: the grown model is now the default (serve deploy of it does the same)
            serve.run(_application(tmp_path, "v2.yaml", grown[1], grown), name="versions", route_prefix="/", blocking=False)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and "depth" not in _default(url)["modalities"]:
                time.sleep(0.5)
            switched_at = len(answered)
            time.sleep(2)
            stop.set()
            for c in clients:
                c.join(60)
            assert "depth" in _default(url)["modalities"], "the default did not switch"
            assert not failed, f"{len(failed)} requests failed while switching: {failed[:3]}"
            assert len(answered) > switched_at > 0
            after = _default(url)
            assert after["from"] == "oneencoder-base"  # the grown model (also listed as oneencoder-depth: the same folder)
            assert after["same_vectors_as"] == {"text": ["oneencoder-base", "oneencoder-depth"], "depth": ["oneencoder-depth"]}
        finally:
            stop.set()
