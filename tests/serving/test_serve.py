"""The Ray Serve application over real HTTP: OpenAI compatibility, every modality, batching, limits,
errors, auth, remote URLs, search and overload. One application per module (plus a tight one)."""
from __future__ import annotations

import base64
import concurrent.futures as futures
import contextlib
import http.server
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
import yaml

from pipeline.config import ConfigError
from pipeline.media.ffmpeg import find_ffmpeg
from pipeline.modalities.depth import depth_map, write_depth
from pipeline.synthetic.draw import SAMPLE_RATE, clip, encode_video, write_wav
from serving.config import APP_NAME
from serving.metrics import ROUTES
from tests.media_factory import png_bytes
from tests.settings import ROOT

SHIPPED_CONFIG = os.path.join(ROOT, "serving", "serve_config.yaml")
TOKEN = "test-token-123"
LIMITS = {"max_items": 8, "max_file_bytes": 400_000, "max_request_bytes": 1_000_000, "max_text_chars": 500,
          "max_image_pixels": 250_000, "max_audio_seconds": 3.0, "max_video_seconds": 3.0, "decode_timeout_s": 20,
          "max_k": 50, "max_request_pixels": 1_000_000, "max_request_audio_seconds": 4.0, "max_request_video_seconds": 4.0}


def _held_port() -> socket.socket:
    """A free loopback port, bound (not listening) by the socket returned, to hold until the server has bound it too: a
    port picked and let go could be taken by another program before the server binds it. Serve's proxy binds its
    HTTP port with SO_REUSEPORT (Ray's SERVE_SOCKET_REUSE_PORT_ENABLED, on by default), as this socket does, so it
    binds the held port; a program without it gets EADDRINUSE."""
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(("127.0.0.1", 0))
    return held


def _config(tmp: str, name: str, args: dict, deployments: dict[str, dict] | None = None) -> str:
    """The shipped Serve config with ``args`` merged and some deployment options replaced."""
    with open(SHIPPED_CONFIG) as fh:
        cfg = yaml.safe_load(fh)
    app = cfg["applications"][0]
    app["args"].update(args)
    if deployments is not None:  # the shipped options of those named, replaced where given; new ones added
        shipped = {d["name"]: d for d in app["deployments"]}
        app["deployments"] = [{**shipped.get(name, {"name": name}), **options} for name, options in deployments.items()]
    path = os.path.join(tmp, name)
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)
    return path


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/red.png")
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture(scope="module")
def media_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("www")
    (folder / "red.png").write_bytes(png_bytes((64, 48), (220, 20, 20)))
    handler = lambda *a, **kw: _Files(*a, directory=str(folder), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _ServeCommand:
    """`oneencoder serve ARGS --port P` started as a user runs it (``env``), on a loopback port held until the
    server has bound it too (see _held_port): ``url`` once the command says it is serving, its output in ``lines``.
    On leaving, a server still running is killed."""

    def __init__(self, args: list[str], env: dict[str, str], timeout_s: float):
        self.held = _held_port()
        port = self.held.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [os.path.join(os.path.dirname(sys.executable), "oneencoder"), "serve", *args, "--port", str(port)]
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        self.timeout_s = timeout_s

    def _drain(self) -> None:  # keep the pipe flowing; note when the command says it is serving
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("serving http://"):
                self._ready.set()

    def output(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> "_ServeCommand":
        try:
            deadline = time.monotonic() + self.timeout_s
            while not self._ready.wait(1):
                assert self.proc.poll() is None and time.monotonic() < deadline, \
                    "oneencoder serve did not start:\n" + "".join(self.lines[-40:])
            self.held.close()  # serving: the server has the port now
            assert f"serving {self.url}" in self.output()
        except BaseException:
            self.__exit__()
            raise
        return self

    def stop(self) -> None:
        """Ctrl-C, as the docs say: the command shuts Serve down and exits 0."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(120) == 0, "".join(self.lines[-40:])
        assert "shutting down" in self.output()

    def __exit__(self, *exc) -> None:
        self.held.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@contextlib.contextmanager
def _in_process(app, name: str):
    """``app`` deployed by this process's Serve as application ``name`` on a loopback port held until Serve has bound
    it (see _held_port): yields its URL once /health answers; Serve is shut down on leaving."""
    from ray import serve

    from serving.app import wait_until_ready

    held = _held_port()
    port = held.getsockname()[1]
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app, name=name, route_prefix="/", blocking=False)
        held.close()
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, 300)
        yield url
    finally:
        held.close()
        serve.shutdown()


@pytest.fixture(scope="module")
def served(ray_session, grown, feature_store, media_server, tmp_path_factory):
    """The docs' command, `oneencoder serve --config F --port P`, as its own driver on the session's Ray, serving
    the trained model grown by depth (`train --from`; its other modalities' vectors are the trained model's), with the
    model it grew from served beside it as version oneencoder-base."""
    from ray import serve

    tmp = str(tmp_path_factory.mktemp("serve"))
    gateway = {"ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": {"ONEENCODER_TEST_KEY": TOKEN}}}}
    path = _config(tmp, "serve.yaml", {"model": grown[1], "versions": {"oneencoder-base": grown[0]},
                                       "features": feature_store, "api_key_env": "ONEENCODER_TEST_KEY",
                                       "limits": LIMITS, "remote": {"enabled": True, "allow_private_addresses": True,  # loopback
                                                                  "allow_hosts": [media_server.split("//")[1]]}},
                   {"Gateway": gateway, "encoder-text": {}, "encoder-image": {}, "encoder-audio": {}, "encoder-video": {},
                    "encoder-depth": {"ray_actor_options": {"num_cpus": 0.25}, "autoscaling_config": None, "num_replicas": 1}})
    env = {**os.environ, "RAY_ADDRESS": ray_session, "ONEENCODER_TEST_KEY": TOKEN}
    try:
        with _ServeCommand(["--config", path], env, timeout_s=600) as server:
            yield server.url, grown[1]
            server.stop()
    finally:
        serve.shutdown()


def _post(url: str, body, path: str = "/v1/embeddings", token: str | None = TOKEN, **kw) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if isinstance(body, (bytes, str)):
        return requests.post(url + path, data=body, headers={**headers, "Content-Type": "application/json"}, timeout=120, **kw)
    return requests.post(url + path, json=body, headers=headers, timeout=120, **kw)


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _wav(seconds: float) -> bytes:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    buf = io.BytesIO()
    write_wav(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    return buf.getvalue()


def _mp4(tmp_path, frames: int = 4) -> bytes:
    path = str(tmp_path / "clip.mp4")
    encode_video(path, clip("red", "circle", frames=frames, size=32), 4, find_ffmpeg())
    with open(path, "rb") as fh:
        return fh.read()


@pytest.fixture(scope="module")
def local_model(served):
    from pipeline.inference import load_model

    return load_model(served[1])


def test_model_versions_list_their_lineage_and_share_bit_identical_vectors(served, tmp_path):
    """Two versions at once: the default (grown by depth from the base) and the base. /v1/models lists both with
    lineage and which modalities embed bit-identically; `model` picks one; the base has no depth."""
    url, _ = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    listed = {m["id"]: m for m in requests.get(url + "/v1/models", headers=auth, timeout=30).json()["data"]}
    assert list(listed) == ["oneencoder", "oneencoder-base"]
    grown, base = listed["oneencoder"], listed["oneencoder-base"]
    assert grown["default"] and not base["default"] and grown["from"] == "oneencoder-base" and base["from"] is None
    assert grown["same_vectors_as"] == {"image": ["oneencoder-base"], "text": ["oneencoder-base"],
                                        "audio": ["oneencoder-base"], "video": ["oneencoder-base"], "depth": []}
    assert sorted(base["modalities"]) == ["audio", "image", "text", "video"] and base["searchable"]
    answers = {v: _post(url, {"model": v, "input": ["a red circle"], "encoding_format": "base64"}).json()
               for v in ("oneencoder", "oneencoder-base")}
    assert [a["model"] for a in answers.values()] == ["oneencoder", "oneencoder-base"]
    vectors = {v: a["data"][0]["embedding"] for v, a in answers.items()}
    assert vectors["oneencoder"] == vectors["oneencoder-base"]  # the same bytes
    path = tmp_path / "d.png"
    write_depth(str(path), depth_map("purple", "square", size=32))
    depth = _post(url, {"model": "oneencoder-base", "modality": "depth",
                        "input": [_data_uri("image/png", path.read_bytes())]})
    assert depth.status_code == 400 and depth.json()["error"]["code"] == "unsupported_modality"
    assert "model 'oneencoder-base' has no 'depth' encoder" in depth.json()["error"]["message"]
    narrow = _post(url, {"model": "oneencoder-base", "modality": "depth", "dimensions": 64,  # the same, at a width
                         "input": [_data_uri("image/png", path.read_bytes())]})
    assert narrow.status_code == 400 and narrow.json()["error"]["code"] == "unsupported_modality", narrow.text
    unknown = _post(url, {"model": "oneencoder-v9", "input": "a"})
    assert unknown.status_code == 404 and "'oneencoder', 'oneencoder-base'" in unknown.json()["error"]["message"]


def test_health_and_models(served):
    url, _ = served
    health = requests.get(url + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ready"
    assert set(health.json()["deployments"]) == {"encoder-image", "encoder-text", "encoder-audio", "encoder-video",
                                                 "encoder-depth", "MediaDecoder", "SearchIndex"}
    models = requests.get(url + "/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
    model = models["data"][0]  # the default version first (the base beside it: test_model_versions_...)
    assert model["id"] == "oneencoder" and model["object"] == "model" and model["dimensions"] == 256
    assert sorted(model["modalities"]) == ["audio", "depth", "image", "text", "video"]


def _doc_commands(prefix: str) -> list[str]:
    """The serving docs' shell commands starting with ``prefix``, continuation lines joined."""
    page = open(os.path.join(ROOT, "docs", "serving.md"), encoding="utf-8").read()
    commands = []
    for block in page.split("```bash\n")[1:]:
        joined = block.split("```")[0].replace("\\\n", " ")
        commands += [line.strip() for line in joined.splitlines() if line.strip().startswith(prefix)]
    return commands


def test_docs_curl_commands(served, local_model, tmp_path):
    """The serving docs' curl lines, run by bash as written (this app wants a token: one header is added)."""
    url, _ = served
    (tmp_path / "red.png").write_bytes(png_bytes((64, 48), (220, 20, 20)))
    embed_cmd, search_cmd = _doc_commands("curl -s localhost:8000/v1/")
    outputs = []
    for command in (embed_cmd, search_cmd):
        command = command.replace("curl -s localhost:8000", f"curl -s -H 'Authorization: Bearer {TOKEN}' {url}", 1)
        proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs.append(json.loads(proc.stdout))
    embedded, found = outputs
    assert [d["modality"] for d in embedded["data"]] == ["text", "image"]
    np.testing.assert_allclose(embedded["data"][0]["embedding"], local_model.embed(["a red circle"], "text")[0], atol=1e-4)
    np.testing.assert_allclose(embedded["data"][1]["embedding"],
                               local_model.embed([(tmp_path / "red.png").read_bytes()], "image")[0], atol=1e-4)
    assert len(found["data"]) == 5 and {hit["modality"] for hit in found["data"]} == {"image"}


def test_openai_client_round_trip(served, local_model):
    import openai

    url, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key=TOKEN, max_retries=0)
    texts = ["a red circle", "a blue square"]
    response = client.embeddings.create(model="oneencoder", input=texts)  # the client asks for base64 by default
    got = np.array([d.embedding for d in response.data], np.float32)
    assert [d.index for d in response.data] == [0, 1] and response.model == "oneencoder"
    assert response.usage.prompt_tokens > 0 and response.usage.total_tokens == response.usage.prompt_tokens
    np.testing.assert_allclose(got, local_model.embed(texts, "text"), atol=1e-5)
    floats = client.embeddings.create(model="oneencoder", input="a red circle", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, got[0], atol=1e-6)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.embeddings.create(model="gpt-4", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).embeddings.create(model="oneencoder", input="x")


def test_every_modality_through_data_uris(served, local_model, tmp_path):
    url, _ = served
    png, wav, mp4 = png_bytes((64, 48)), _wav(1.0), _mp4(tmp_path)
    inputs = ["a green triangle", _data_uri("image/png", png), _data_uri("audio/wav", wav), _data_uri("video/mp4", mp4),
              _data_uri("text/plain", "a green triangle".encode())]
    r = _post(url, {"model": "oneencoder", "input": inputs})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["modality"] for d in data] == ["text", "image", "audio", "video", "text"]
    got = np.array([d["embedding"] for d in data], np.float32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    for row, (modality, raw) in enumerate([("text", "a green triangle"), ("image", png), ("audio", wav), ("video", mp4)]):
        np.testing.assert_allclose(got[row], local_model.embed([raw], modality)[0], atol=1e-4, err_msg=modality)
    np.testing.assert_allclose(got[4], got[0], atol=1e-6)
    forced = _post(url, {"model": "oneencoder", "input": [_data_uri("image/png", png)], "modality": "image"})
    assert forced.status_code == 200, forced.text
    assert [d["modality"] for d in forced.json()["data"]] == ["image"]
    np.testing.assert_allclose(forced.json()["data"][0]["embedding"], got[1], atol=1e-6)
    raw = _post(url, {"model": "oneencoder", "input": [_data_uri("image/png", png)], "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(decoded, got[1], atol=1e-6)
    # compact encodings of the same vector: int8 (largest component ±127), binary (sign bits, 8 to a byte)
    body = {"model": "oneencoder", "input": [_data_uri("image/png", png)], "dimensions": 256}
    small = _post(url, {**body, "encoding_format": "int8"}).json()["data"][0]["embedding"]
    assert max(map(abs, small)) == 127 and len(small) == 256
    np.testing.assert_allclose(np.array(small) / 127, got[1] / np.abs(got[1]).max(), atol=0.5 / 127 + 1e-6)
    bits = _post(url, {**body, "encoding_format": "binary"}).json()["data"][0]["embedding"]
    assert len(bits) == 32 and np.array_equal(np.unpackbits(np.array(bits, np.uint8)).astype(bool), got[1] > 0)


def _stats(deployment: str, app: str = APP_NAME) -> dict:
    from ray import serve

    handle = serve.get_deployment_handle(deployment, app)
    try:
        return handle.stats.remote().result(timeout_s=30)
    finally:  # its router pushes metrics from a thread of this process: after the command has shut Serve down,
        handle.shutdown()  # serve.shutdown() here finds no controller and leaves it to fail once Ray is gone


def test_batching_really_batches_under_concurrency(served, local_model):
    url, _ = served
    texts = [f"caption number {i}" for i in range(64)]
    with futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda text: _post(url, {"model": "oneencoder", "input": text}), texts))
    assert [r.status_code for r in answers] == [200] * 64, [r.text for r in answers if r.status_code != 200][:1]
    # batched together, each request still gets the vector of its own text
    got = np.array([r.json()["data"][0]["embedding"] for r in answers], np.float32)
    np.testing.assert_allclose(got, local_model.embed(texts, "text"), atol=1e-4)
    stats = _stats("encoder-text")
    assert max(stats["batch_sizes"]) > 1, stats


BAD_REQUESTS = [
    # (name, body, status, code, param)
    ("malformed JSON", b'{"model": "oneencoder", "input": [', 400, "invalid_json", None),
    ("not an object", b'["a"]', 400, "invalid_json", None),
    ("missing input", {"model": "oneencoder"}, 400, "missing_field", "input"),
    ("empty list", {"model": "oneencoder", "input": []}, 400, "invalid_input", "input"),
    ("token arrays", {"model": "oneencoder", "input": ["ok", [1, 2, 3]]}, 400, "invalid_input", "input[1]"),
    ("empty text", {"model": "oneencoder", "input": ["ok", "   "]}, 400, "invalid_input", "input[1]"),
    ("too long text", {"model": "oneencoder", "input": ["x" * 501]}, 400, "item_too_large", "input[0]"),
    ("too many items", {"model": "oneencoder", "input": ["a"] * 9}, 400, "too_many_items", "input"),
    ("bad base64", {"model": "oneencoder", "input": ["ok", "data:image/png;base64,@@@not-base64"]}, 400, "invalid_base64", "input[1]"),
    ("not base64 encoded", {"model": "oneencoder", "input": ["data:image/png,rawbytes"]}, 400, "invalid_data_uri", "input[0]"),
    ("unknown MIME", {"model": "oneencoder", "input": ["ok", "ok", _data_uri("application/pdf", b"%PDF-1.4")]}, 400,
     "unsupported_mime", "input[2]"),
    ("undecodable image", {"model": "oneencoder", "input": ["ok", _data_uri("image/png", b"this is not a png")]}, 400,
     "invalid_input", "input[1]"),
    ("undecodable audio", {"model": "oneencoder", "input": [_data_uri("audio/wav", b"RIFF\x00\x00garbage")]}, 400,
     "invalid_input", "input[0]"),
    ("item too large", {"model": "oneencoder", "input": [_data_uri("image/png", b"\x00" * 500_000)]}, 400,
     "item_too_large", "input[0]"),
    ("image over the pixel limit", {"model": "oneencoder", "input": [_data_uri("image/png", png_bytes((600, 500)))]}, 400,
     "invalid_input", "input[0]"),
    ("audio over the duration limit", {"model": "oneencoder", "input": ["ok", _data_uri("audio/wav", _wav(4.0))]}, 400,
     "invalid_input", "input[1]"),
    ("modality mismatch", {"model": "oneencoder", "input": [_data_uri("image/png", png_bytes())], "modality": "audio"}, 400,
     "modality_mismatch", "input[0]"),
    ("media modality with a plain string", {"model": "oneencoder", "input": ["a cat"], "modality": "image"}, 400,
     "invalid_input", "input[0]"),
    ("unknown modality", {"model": "oneencoder", "input": ["a"], "modality": "smell"}, 400, "unsupported_modality", "modality"),
    ("bad encoding_format", {"model": "oneencoder", "input": ["a"], "encoding_format": "int4"}, 400,
     "invalid_encoding_format", "encoding_format"),
    ("dimensions the model was not trained for", {"model": "oneencoder", "input": ["a"], "dimensions": 64}, 400,
     "unsupported_dimensions", "dimensions"),
    ("dimensions above the width", {"model": "oneencoder", "input": ["a"], "dimensions": 512}, 400,
     "unsupported_dimensions", "dimensions"),
    ("dimensions not a number", {"model": "oneencoder", "input": ["a"], "dimensions": "64"}, 400,
     "unsupported_dimensions", "dimensions"),
    ("unknown model", {"model": "nope", "input": ["a"]}, 404, "model_not_found", "model"),
    ("deeply nested JSON", b'{"model": "oneencoder", "input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400,
     "invalid_json", None),
    ("a body of many small objects", b'{"model": "oneencoder", "input": [' + b"{}," * 100_000 + b"{}]}", 400,
     "request_too_complex", None),
    ("an HLS playlist posted as a video", {"model": "oneencoder", "input": [_data_uri("video/mp4", (
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\n" + SHIPPED_CONFIG + "\n#EXT-X-ENDLIST\n").encode())]}, 400,
     "invalid_input", "input[0]"),
]


@pytest.mark.parametrize("name,body,status,code,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_an_openai_style_4xx(served, name, body, status, code, param):
    url, _ = served
    r = _post(url, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["param"] == param and error["type"] == "invalid_request_error"
    if param and param.startswith("input["):
        assert error["message"].startswith(param), error["message"]


def test_oversized_body_is_413_and_the_server_stays_healthy(served):
    from ray import serve

    url, _ = served
    big = {"model": "oneencoder", "input": [_data_uri("image/png", b"\x00" * 300_000)] * 4}  # ~1.6 MB > 1 MB
    r = _post(url, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    health = requests.get(url + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ready", health.text
    fine = _post(url, {"model": "oneencoder", "input": "still fine"})
    assert fine.status_code == 200 and [d["modality"] for d in fine.json()["data"]] == ["text"], fine.text
    assert len(fine.json()["data"][0]["embedding"]) == 256
    status = serve.status().applications[APP_NAME]
    assert status.status == "RUNNING"
    assert all(d.status == "HEALTHY" for d in status.deployments.values()), status.deployments


def test_health_answers_while_hostile_bodies_are_scanned(served):
    """Bodies as large as this server takes, each a string that never closes, full of escaped quotes (the old
    scan's worst case: quadratic, about an hour at this size, /health stalled meanwhile): each is a 400, and
    /health answers promptly all the while."""
    url, _ = served
    hostile = b'{"model": "oneencoder", "input": "' + b'\\"' * ((LIMITS["max_request_bytes"] - 40) // 2)
    answers: list[requests.Response] = []
    stop = threading.Event()

    def post_until_stopped() -> None:
        while not stop.is_set() and len(answers) < 200:
            answers.append(_post(url, hostile))

    poster = threading.Thread(target=post_until_stopped, daemon=True)
    poster.start()
    latencies = []
    try:
        for _ in range(10):
            started = time.monotonic()
            health = requests.get(url + "/health", timeout=5)
            latencies.append(time.monotonic() - started)
            assert health.status_code == 200 and health.json()["status"] == "ready", health.text
            time.sleep(0.2)
    finally:
        stop.set()
        poster.join(130)
    assert answers and all(r.status_code == 400 and r.json()["error"]["code"] == "invalid_json" for r in answers), \
        answers[-1].text
    assert "never closes" in answers[0].json()["error"]["message"]
    assert max(latencies) < 2, latencies


def _webp(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buf, "WEBP", lossless=True)
    return buf.getvalue()


def test_a_request_over_its_budgets_is_a_400_naming_them(served, tmp_path):
    """Pixels summed over a request (from the headers) and audio/video seconds shared out among its items: over a
    budget is a 400 naming it and what to do; the same items in smaller requests pass."""
    url, _ = served
    picture = _data_uri("image/webp", _webp((500, 500)))  # at the per-item limit, 250,000 pixels
    over = _post(url, {"model": "oneencoder", "input": [picture] * 8})
    error = over.json()["error"]
    assert over.status_code == 400 and error["code"] == "request_over_budget" and error["param"] == "input", over.text
    assert ("8 image inputs decode to 2,000,000 pixels in all" in error["message"]
            and "over limits.max_request_pixels=1,000,000 per request" in error["message"]), error["message"]
    half = _post(url, {"model": "oneencoder", "input": [picture] * 4})
    assert half.status_code == 200 and [d["modality"] for d in half.json()["data"]] == ["image"] * 4, half.text
    clips = {"audio": _data_uri("audio/wav", _wav(2.5)), "video": _data_uri("video/mp4", _mp4(tmp_path, frames=10))}
    for modality, clip in clips.items():  # each 2.5 s: alone under its 3 s; two share 4 s, 2 s each
        r = _post(url, {"model": "oneencoder", "input": ["a caption", clip, clip]})
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == "input[1]", r.text
        assert (f"limits.max_{modality}_seconds=2" in error["message"]
                and f"share of limits.max_request_{modality}_seconds=4 s, split between the request's 2 {modality} items"
                in error["message"] and f"send fewer or shorter {modality} items per request" in error["message"]), \
            error["message"]
        alone = _post(url, {"model": "oneencoder", "input": ["a caption", clip]})
        assert alone.status_code == 200 and [d["modality"] for d in alone.json()["data"]] == ["text", modality], alone.text
    short = _data_uri("audio/wav", _wav(1.5))
    both = _post(url, {"model": "oneencoder", "input": [short, short]})
    assert both.status_code == 200 and [d["modality"] for d in both.json()["data"]] == ["audio", "audio"], both.text


def test_bearer_auth(served):
    url, _ = served
    body = {"model": "oneencoder", "input": "a"}
    for token in (None, "wrong"):
        r = _post(url, body, token=token)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    models = requests.get(url + "/v1/models", timeout=30)
    assert models.status_code == 401 and models.json()["error"]["code"] == "invalid_api_key", models.text
    for page in ("/docs", "/openapi.json"):  # the API's description is behind the same token
        r = requests.get(url + page, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (page, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer" and "/v1/embeddings" not in r.text, page
    for token in (None, TOKEN):  # FastAPI's ReDoc page is not served at all, with a token or without
        redoc = requests.get(url + "/redoc", headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=30)
        assert redoc.status_code == 404 and "/v1/embeddings" not in redoc.text, redoc.text
    spec = requests.get(url + "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert spec.status_code == 200 and "/v1/embeddings" in spec.json()["paths"]
    assert {"EmbeddingsRequest", "SearchRequest"} <= set(spec.json()["components"]["schemas"])  # the typed bodies
    docs = requests.get(url + "/docs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert docs.status_code == 200 and "openapi.json" in docs.text
    health = requests.get(url + "/health", timeout=30)  # probes need no token
    assert health.status_code == 200 and health.json()["status"] == "ready", health.text
    for page, kind in (("/", "text/html"), ("/search.js", "text/javascript"), ("/search.css", "text/css")):
        r = requests.get(url + page, timeout=30)  # the search page's own files hold no data: no token
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), (page, r.status_code)
        assert r.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'"), page
    media = requests.get(url + "/v1/media", params={"modality": "image", "id": "c00000"}, timeout=30)
    assert media.status_code == 401  # its media are behind the token
    ok = _post(url, body)
    assert ok.status_code == 200 and [d["modality"] for d in ok.json()["data"]] == ["text"], ok.text


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    """GET /metrics, parsed by prometheus_client: {(sample name, sorted labels without node/replica ids): summed value}."""
    from prometheus_client.parser import text_string_to_metric_families

    r = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.text[:300]
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(r.text):
        assert family.name.startswith(("ray_oneencoder_", "ray_serve_")), family.name
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k in (
                "route", "status", "code", "stage", "modality", "model", "deployment", "le")))
            out[(sample.name, labels)] = out.get((sample.name, labels), 0.0) + sample.value
    return out


def _total(scraped: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in scraped.items() if n == name and set(labels.items()) <= set(ls))


def test_metrics_on_the_api_port_move_with_requests(served):
    """GET /metrics (behind the token) serves the ray_oneencoder_* and ray_serve_* families of the node's Ray
    metrics agent; after 3 text embeddings, a search and a malformed body, the request, item, batch, latency and
    error counters have moved by at least that much (the agent exports every metrics_report_interval_ms)."""
    url, _ = served
    assert requests.get(url + "/metrics", timeout=30).status_code == 401
    before = _scrape(url)
    for text in ("metrics one", "metrics two", "metrics three"):
        assert _post(url, {"model": "oneencoder", "input": text}).status_code == 200
    assert _post(url, {"query": "a red circle", "k": 3}, path="/v1/search").status_code == 200
    assert _post(url, b'{"input": [').status_code == 400
    wanted = {("ray_oneencoder_requests_total", (("route", "/v1/embeddings"), ("status", "200"))): 3,
              ("ray_oneencoder_items_total", (("modality", "text"), ("model", "oneencoder"))): 4,
              ("ray_oneencoder_batch_size_count", (("modality", "text"),)): 1,
              ("ray_oneencoder_encode_seconds_count", (("modality", "text"),)): 1,
              ("ray_oneencoder_search_seconds_count", ()): 1,
              ("ray_oneencoder_request_seconds_count", (("route", "/v1/search"),)): 1,
              ("ray_oneencoder_errors_total", (("code", "invalid_json"), ("stage", "parse"), ("status", "400"))): 1}
    deadline, moved = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        after = _scrape(url)
        moved = {key: _total(after, key[0], **dict(key[1])) - _total(before, key[0], **dict(key[1])) for key in wanted}
        if all(moved[key] >= n for key, n in wanted.items()):
            break
        time.sleep(1)
    assert all(moved[key] >= n for key, n in wanted.items()), {k: (moved[k], n) for k, n in wanted.items()}
    with open(os.path.join(ROOT, "deploy", "grafana", "oneencoder.json")) as fh:  # the dashboard's Serve panels
        serve_names = set(re.findall(r"\bray_serve_\w+", fh.read()))
    assert serve_names and serve_names <= {name for name, _ in after}, serve_names - {name for name, _ in after}
    routes = {dict(ls).get("route") for n, ls in after if n == "ray_oneencoder_requests_total"}
    assert routes <= set(ROUTES) | {"other"}, routes  # a client's path never becomes a label


def test_remote_urls_only_from_allowed_hosts(served, media_server, local_model):
    url, _ = served
    port = media_server.rsplit(":", 1)[1]
    ok = _post(url, {"model": "oneencoder", "input": [media_server + "/red.png"], "modality": "image"})
    assert ok.status_code == 200, ok.text
    np.testing.assert_allclose(ok.json()["data"][0]["embedding"],
                               local_model.embed([png_bytes((64, 48), (220, 20, 20))], "image")[0], atol=1e-4)
    cases = [(f"http://localhost:{port}/red.png", "host_not_allowed"), (media_server + "/redirect", "fetch_failed"),
             (media_server + "/missing.png", "fetch_failed"), ("ftp://127.0.0.1/red.png", "invalid_input")]
    for remote, code in cases:
        r = _post(url, {"model": "oneencoder", "input": [_data_uri("image/png", png_bytes()), remote], "modality": "image"})
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (remote, r.text)
        assert r.json()["error"]["param"] == "input[1]"
    as_text = _post(url, {"model": "oneencoder", "input": [media_server + "/red.png"]})  # no modality: a plain string is text
    assert as_text.status_code == 200 and as_text.json()["data"][0]["modality"] == "text"
    caption = "data: the first word of this caption"  # with modality text, a string is text whatever it starts with
    as_text = _post(url, {"model": "oneencoder", "input": [caption], "modality": "text"})
    assert as_text.status_code == 200, as_text.text
    np.testing.assert_allclose(as_text.json()["data"][0]["embedding"], local_model.embed([caption], "text")[0], atol=1e-4)


def test_remote_fetching_is_off_unless_enabled():
    from serving.config import RemoteSettings, ServeLimits
    from serving.inputs import APIError, Item, fetch

    with pytest.raises(APIError, match="remote URLs are not fetched") as err:
        fetch(Item(3, "image", None, remote_url="http://127.0.0.1:1/x.png"), RemoteSettings(), ServeLimits())
    assert err.value.param == "input[3]"


def test_search_returns_the_true_pair(served, feature_store, local_model):
    from pipeline.store.features import embeddings, read_features
    from pipeline.synthetic.corpus import concept_inputs
    from PIL import Image

    url, _ = served
    sample = concept_inputs(0, np.random.default_rng(0))  # the store's sample c00000 (a training item)
    buf = io.BytesIO()
    Image.fromarray(sample["image"]).save(buf, "PNG")
    r = _post(url, {"query": _data_uri("image/png", buf.getvalue()), "target_modality": "image", "k": 3}, path="/v1/search")
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    assert hits[0]["id"] == "c00000" and hits[0]["modality"] == "image" and hits[0]["score"] > 0.99
    # cross-modal: the served ranking equals an exact local search over the projected store
    k = 20
    r = _post(url, {"query": _data_uri("image/png", buf.getvalue()), "target_modality": ["text"], "k": k}, path="/v1/search")
    served_ids = [h["id"] for h in r.json()["data"]]
    table = read_features(feature_store, "text")
    texts = local_model.project(embeddings(table).astype(np.float32), "text")
    scores = texts @ local_model.embed([buf.getvalue()], "image")[0]
    ids = table.column("id").to_pylist()
    expected = [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]
    assert served_ids[:5] == expected[:5] and "c00000" in served_ids, (served_ids, expected)
    twice = _post(url, {"query": "a red circle", "target_modality": ["image", "image"], "k": 10}, path="/v1/search")
    assert len({h["id"] for h in twice.json()["data"]}) == 10  # a target named twice is searched once
    # several modalities, each pair calibrated on the model's held-out ids: one list ranked by match
    everywhere = _post(url, {"query": "a red circle", "k": 5}, path="/v1/search").json()
    matches = [h["match"] for h in everywhere["data"]]
    assert everywhere["ranking"] == "match" and len(matches) == 5 and matches == sorted(matches, reverse=True)
    assert all(0 <= m <= 1 for m in matches)
    every = _post(url, {"query": "a red circle", "k": 50}, path="/v1/search").json()["data"]
    some = _post(url, {"query": "a red circle", "k": 50, "min_match": matches[2]}, path="/v1/search").json()["data"]
    assert some == [h for h in every if h["match"] >= matches[2]] and len(some) >= 3  # below the threshold: dropped
    one = _post(url, {"query": "a red circle", "target_modality": "image", "k": 5}, path="/v1/search").json()
    assert one["ranking"] == "score" and all("match" in h for h in one["data"])
    fixed = _post(url, {"query": "a red circle", "target_modality": "image", "k": 5, "hubness": True},
                  path="/v1/search").json()["data"]
    assert len(fixed) == 5 and [h["score"] for h in fixed] == sorted((h["score"] for h in fixed), reverse=True)
    bad = _post(url, {"query": "a red circle", "k": 0}, path="/v1/search")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "k"
    bad = _post(url, {"query": "a", "target_modality": "smell"}, path="/v1/search")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "target_modality"
    some = _post(url, {"query": "a red circle", "k": 5, "id_prefix": "c0001"}, path="/v1/search").json()["data"]
    assert len(some) == 5 and all(h["id"].startswith("c0001") for h in some)
    for field, value in (("id_prefix", 7), ("id_prefix", ""), ("id_prefix", "c" * 257), ("exact", "yes"),
                         ("min_match", 1.5), ("min_match", "high"), ("min_match", True), ("hubness", 1),
                         ("where", {"split": "test"})):  # a store keeps no metadata columns
        bad = _post(url, {"query": "a red circle", field: value}, path="/v1/search")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == field, (field, value, bad.text)


@pytest.mark.slow
def test_overload_answers_503_and_batch_size_retunes_at_runtime(served, tmp_path):
    """A text-only app with one-deep queues: a burst gets 503s quickly, never a hang; user_config retunes batching."""
    from ray import serve

    from serving.local import prepare

    url, model_dir = served
    tight = {"Gateway": {"ray_actor_options": {"num_cpus": 0.05}, "max_ongoing_requests": 4, "max_queued_requests": 2,
                         "autoscaling_config": None, "num_replicas": 1},
             "encoder-text": {"ray_actor_options": {"num_cpus": 0.05}, "max_ongoing_requests": 4, "max_queued_requests": 1,
                              "autoscaling_config": None, "num_replicas": 1,
                              "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}}
    path = _config(str(tmp_path), "tight.yaml", {"model": model_dir, "modalities": ["text"], "features": None}, tight)
    app, _ = prepare(path)
    serve.run(app, name="tight", route_prefix="/tight", blocking=False)
    try:
        warm = _post(url, {"model": "oneencoder", "input": "warm"}, path="/tight/v1/embeddings", token=None)
        assert warm.status_code == 200 and [d["modality"] for d in warm.json()["data"]] == ["text"], warm.text
        with futures.ThreadPoolExecutor(48) as pool:
            codes = list(pool.map(lambda i: _post(url, {"model": "oneencoder", "input": f"text {i}"},
                                                  path="/tight/v1/embeddings", token=None).status_code, range(96)))
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
        handle = serve.get_deployment_handle("encoder-text", "tight")
        before = handle.stats.remote().result(timeout_s=30)["batch_sizes"]
        assert max(before) == 1
        tight["encoder-text"]["user_config"] = {"max_batch_size": 3, "batch_wait_timeout_s": 0.05}  # only user_config
        tight["Gateway"].update(max_ongoing_requests=32, max_queued_requests=64)
        app, _ = prepare(_config(str(tmp_path), "retuned.yaml", {"model": model_dir, "modalities": ["text"], "features": None}, tight))
        serve.run(app, name="tight", route_prefix="/tight", blocking=False)
        with futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: _post(url, {"model": "oneencoder", "input": f"t {i}"}, path="/tight/v1/embeddings",
                                          token=None), range(32)))
        stats = handle.stats.remote().result(timeout_s=30)
        assert stats["max_batch_size"] == 3 and stats["batch_wait_timeout_s"] == 0.05
        new = stats["batch_sizes"][len(before):] if stats["batch_sizes"][:len(before)] == before else stats["batch_sizes"]
        assert max(new) <= 3 and max(new) > 1, new
    finally:
        serve.delete("tight")


def test_serve_config_and_args_are_validated(trained, tmp_path):
    from serving.config import load_serve_config
    from serving.local import prepare

    app = load_serve_config(SHIPPED_CONFIG)
    assert app["import_path"] == "serving.app:build_app" and app["http_options"]["port"] == 8000
    with pytest.raises(ConfigError, match="model='/nowhere' is not a model artifact"):
        prepare(SHIPPED_CONFIG, model="/nowhere")
    with pytest.raises(ConfigError, match="remote.allow_hosts is empty"):
        prepare(_config(str(tmp_path), "a.yaml", {"model": trained[0], "remote": {"enabled": True}}))
    with pytest.raises(ConfigError, match="ONEENCODER_UNSET_KEY.*not set"):
        prepare(_config(str(tmp_path), "b.yaml", {"model": trained[0], "api_key_env": "ONEENCODER_UNSET_KEY"}))
    with pytest.raises(ConfigError, match="limits.max_items.*greater than or equal to 1"):
        prepare(_config(str(tmp_path), "c.yaml", {"model": trained[0], "limits": {"max_items": 0}}))
    with pytest.raises(ConfigError, match=r"allow_hosts takes host names with an optional port"):
        prepare(_config(str(tmp_path), "d.yaml", {"model": trained[0], "remote": {"enabled": True, "allow_hosts": ["http://x.com/"]}}))
    with pytest.raises(ConfigError, match="modalities.0 = 'smell'.*unknown modality 'smell'"):
        prepare(_config(str(tmp_path), "e.yaml", {"model": trained[0], "modalities": ["smell"]}))
    with pytest.raises(ConfigError, match="modalities=.*subset"):  # registered, but not in this model
        prepare(_config(str(tmp_path), "e2.yaml", {"model": trained[0], "modalities": ["depth"]}))
    with pytest.raises(ValueError, match="Deployment 'encoder-audio' does not exist"):
        prepare(_config(str(tmp_path), "f.yaml", {"model": trained[0], "modalities": ["text", "image"]}))
    with pytest.raises(ConfigError, match=r"versions.v2 = '/nowhere' is not a model artifact"):
        prepare(_config(str(tmp_path), "v.yaml", {"model": trained[0], "versions": {"v2": "/nowhere"}}))
    with pytest.raises(ConfigError, match="'oneencoder' is model_name, the default version .*give this version another"):
        prepare(_config(str(tmp_path), "v2.yaml", {"model": trained[0], "versions": {"oneencoder": str(tmp_path)}}))
    with pytest.raises(ConfigError, match="deployment 'encoder-text' has the option 'max_queue', which Ray Serve does "
                                          "not have; expected some of .*max_queued_requests"):  # Ray's schema lets it by
        prepare(_config(str(tmp_path), "g.yaml", {"model": trained[0]}, {"Gateway": {}, "encoder-text": {"max_queue": 9}}))
    with pytest.raises(ValueError, match="Deployment 'SearchIndex' does not exist.*SearchIndex runs only with features: "
                                         "an index folder is searched in the Gateway's replicas"):
        prepare(_config(str(tmp_path), "f2.yaml", {"model": trained[0], "modalities": ["text"], "index": "/nowhere"},
                        {"Gateway": {}, "encoder-text": {}, "SearchIndex": {}}))
    with pytest.raises(ConfigError, match="not a valid Ray Serve config"):
        with open(tmp_path / "g.yaml", "w") as fh:
            yaml.safe_dump({"applications": [{"name": "x", "import_path": "serving.app:build_app",
                                              "deployments": [{"name": "Gateway", "num_replicas": -3}]}]}, fh)
        prepare(str(tmp_path / "g.yaml"))


def test_serve_cli_refuses_bad_arguments_before_starting_ray(capsys):
    from jobs.cli import main

    assert main(["serve", "--model", "/nowhere"]) == 2
    assert "is not a model artifact" in capsys.readouterr().err
    assert main(["serve", "--model", "/nowhere", "--port", "70000"]) == 2
    assert "--port = 70000" in capsys.readouterr().err


def test_media_is_decoded_apart_and_the_encoders_batch_the_arrays(served, local_model, tmp_path):
    """By default (decode: decoder) a media item is decoded by the MediaDecoder and only its array reaches the
    encoder, which batches arrays under concurrency; with decode: encoders (another app of the same model) the encoder
    decodes it, and there is no MediaDecoder. Both give the vector the model gives in-process."""
    from ray import serve

    from serving.local import prepare

    url, model_dir = served
    png = png_bytes((64, 48))
    expected = local_model.embed([png], "image")[0]
    encoder, decoder = _stats("encoder-image"), _stats("MediaDecoder")["decoded"]
    body = {"model": "oneencoder", "input": [_data_uri("image/png", png)]}
    with futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: _post(url, body), range(32)))
    assert [r.status_code for r in answers] == [200] * 32, answers[0].text
    for r in answers:
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], expected, atol=1e-4)
    wav = _post(url, {"model": "oneencoder", "input": [_data_uri("audio/wav", _wav(1.0))]})
    assert wav.status_code == 200, wav.text
    after = _stats("encoder-image")
    assert _stats("MediaDecoder")["decoded"] == {**decoder, "image": decoder.get("image", 0) + 32,
                                                 "audio": decoder.get("audio", 0) + 1}
    assert after["items"] == {"raw": encoder["items"]["raw"], "decoded": encoder["items"]["decoded"] + 32}
    assert max(after["batch_sizes"][len(encoder["batch_sizes"]):]) > 1, after["batch_sizes"]

    one = {"ray_actor_options": {"num_cpus": 0.05}, "autoscaling_config": None, "num_replicas": 1}
    app, _ = prepare(_config(str(tmp_path), "in-encoders.yaml", {"model": model_dir, "modalities": ["image"],
                                                                "features": None, "decode": "encoders"},
                             {"Gateway": one, "encoder-image": one}))
    serve.run(app, name="in-encoders", route_prefix="/in-encoders", blocking=False)
    try:
        deadline = time.monotonic() + 120
        while (health := requests.get(url + "/in-encoders/health", timeout=30)).status_code != 200:
            assert time.monotonic() < deadline, health.text
            time.sleep(0.5)
        assert health.json()["deployments"] == {"encoder-image": "ready"}  # no MediaDecoder
        r = _post(url, body, path="/in-encoders/v1/embeddings", token=None)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], expected, atol=1e-4)
        assert _stats("encoder-image", "in-encoders")["items"] == {"raw": 1, "decoded": 0}
    finally:
        serve.delete("in-encoders")


def test_depth_is_served_through_the_same_api(served, local_model, tmp_path):
    """`modality: "depth"` with a 16-bit PNG gives the vector load_model gives; the same PNG without a modality is an
    image, as every PNG was before depth existed; a colour picture sent as depth is a 400 naming why."""
    from pipeline.synthetic.draw import draw_shape

    url, _ = served
    path = tmp_path / "d.png"
    write_depth(str(path), depth_map("purple", "square", size=64))
    uri = _data_uri("image/png", path.read_bytes())
    as_depth = _post(url, {"model": "oneencoder", "input": [uri], "modality": "depth"})
    assert as_depth.status_code == 200, as_depth.text
    data = as_depth.json()["data"][0]
    assert data["modality"] == "depth"
    np.testing.assert_allclose(data["embedding"], local_model.embed([path.read_bytes()], "depth")[0], atol=1e-5)
    as_image = _post(url, {"model": "oneencoder", "input": [uri]})
    assert as_image.status_code == 200 and as_image.json()["data"][0]["modality"] == "image"
    rgb = io.BytesIO()
    draw_shape("red", "circle", size=32).save(rgb, "PNG")
    bad = _post(url, {"model": "oneencoder", "modality": "depth", "input": [_data_uri("image/png", rgb.getvalue())]})
    assert bad.status_code == 400 and "depth map has RGB pixels" in bad.json()["error"]["message"]
    wrong = _post(url, {"model": "oneencoder", "modality": "depth", "input": [_data_uri("image/jpeg", rgb.getvalue())]})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "modality_mismatch"


def test_health_is_503_naming_each_deployment_that_is_not_ready():
    """/health (what a load balancer or `wait_until_ready` probes) while replicas are pending or stuck: one answer
    within its 5 s wait, 503, naming each deployment and its state; 200 once every one answers."""
    import asyncio
    import types

    from serving.app import Gateway

    class Handle:  # a DeploymentHandle as /health uses it: `await handle.ready.remote()`
        def __init__(self, answer):
            self.ready = self
            self.answer = answer

        def remote(self):
            return self.answer()

    async def ready():  # an encoder whose warm-up item went through
        return {"ok": True, "ms": 3.2, "reason": None}

    async def broken():  # one whose encoder gives NaN (e.g. fp16 overflow on a GPU)
        return {"ok": False, "ms": None, "reason": "ValueError: item 0 gave a non-finite vector"}

    async def never():  # a replica that is pending (no CPU free) or hung: the call never answers
        await asyncio.Event().wait()

    async def dead():
        raise RuntimeError("the replica died")

    # the Gateway's own health method, on a stand-in for the replica (its handles are all /health reads)
    gateway = types.SimpleNamespace(encoders={"text": Handle(ready), "image": Handle(dead), "audio": Handle(never),
                                              "video": Handle(broken)},
                                    decoder=Handle(dead), search_handle=Handle(never), searcher=None)
    started = time.monotonic()
    response = asyncio.run(Gateway.func_or_class.health(gateway))
    took = time.monotonic() - started
    assert response.status_code == 503
    assert json.loads(response.body) == {"status": "not ready", "deployments": {
        "encoder-text": "ready", "encoder-image": "not ready (RuntimeError)", "encoder-audio": "not ready (TimeoutError)",
        "encoder-video": "not ready (cannot embed: ValueError: item 0 gave a non-finite vector)",
        "MediaDecoder": "not ready (RuntimeError)", "SearchIndex": "not ready (TimeoutError)"}}
    assert took < 8, took  # the stuck ones are waited for together: a probe gets its answer, not 5 s per deployment
    gateway.encoders = {"text": Handle(ready), "audio": Handle(ready)}
    gateway.search_handle = gateway.decoder = None
    response = asyncio.run(Gateway.func_or_class.health(gateway))
    assert response.status_code == 200
    assert json.loads(response.body) == {"status": "ready", "deployments": {"encoder-text": "ready", "encoder-audio": "ready"}}


def test_serve_refuses_a_deployment_the_model_lacks_before_starting_ray(trained, feature_store, tmp_path, monkeypatch,
                                                                         capsys):
    """The docs' `oneencoder serve --model M` on the shipped config (which lists encoder-audio and encoder-video)
    with a stage-1 model (image and text only): exit 2 with one `error:` line naming the deployment and what to do,
    before Ray starts (no replica waits for a modality the model cannot embed)."""
    import shutil

    from jobs.cli import main
    from pipeline.artifact import read_artifact
    from pipeline.train.config import load_train_config
    from pipeline.train.job import run_train
    from tests.settings import SMALL_EPOCHS, VAL_FRACTION

    # a stage-1 model: `train --stages image:text` over a copy of the fixture's run loads its first stage, as trained
    model = shutil.copytree(trained[0], str(tmp_path / "stage1"))
    run_train(load_train_config(None, epochs=SMALL_EPOCHS, features=feature_store, output=model, stages="image:text",
                                val_fraction=VAL_FRACTION))
    assert read_artifact(model).modalities == ["image", "text"]
    monkeypatch.setattr("pipeline.runtime.init_ray", lambda: pytest.fail("Ray was started for a config refused"))
    assert main(["serve", "--model", model, "--features", feature_store]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: Deployment 'encoder-audio' does not exist"), line
    assert "'encoder-image'" in line and "'encoder-text'" in line, line  # what the model does have
    assert (f"the model {model} has the modalities image, text; remove 'encoder-audio' from the Serve config's "
            f"deployments (Serve config: {os.path.abspath(SHIPPED_CONFIG)})") in line, line


@pytest.mark.slow
def test_readme_serve_command_on_the_shipped_config(trained, feature_store, tmp_path):
    """The README's `oneencoder serve --model M --features F` as a user runs it: no --config (the shipped
    serving/serve_config.yaml, a deployment per modality: the fixture model has image, text, audio and video, and the
    MediaDecoder) and no
    RAY_ADDRESS (a Ray instance of its own). It starts, /health names every deployment ready, it embeds, and Ctrl-C
    stops it, its Ray instance included. --port: the shipped 8000 may be taken on this machine."""
    import shutil
    import tempfile

    from tests.processes import ray_instance, stop_ray_instance

    temp = tempfile.mkdtemp(prefix="oesrv-", dir="/tmp")  # the instance's temp dir names its processes (short: sockets)
    env = {**os.environ, "RAY_TMPDIR": temp}
    env.pop("RAY_ADDRESS", None)
    try:
        with _ServeCommand(["--model", trained[0], "--features", feature_store], env, timeout_s=480) as server:
            url = server.url
            health = requests.get(url + "/health", timeout=30)
            assert health.status_code == 200 and health.json() == {"status": "ready", "deployments": {
                "encoder-image": "ready", "encoder-text": "ready", "encoder-audio": "ready", "encoder-video": "ready",
                "MediaDecoder": "ready", "SearchIndex": "ready"}}, health.text
            embedded = requests.post(url + "/v1/embeddings", json={"model": "oneencoder", "input": "a red circle"},
                                     timeout=60)
            assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 256, embedded.text
            assert ray_instance(temp), "not served from a Ray instance of its own"
            server.stop()
        deadline = time.monotonic() + 60  # the instance it started goes with it
        while ray_instance(temp) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not ray_instance(temp), "processes of its Ray instance outlived `oneencoder serve`"
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/health", timeout=10)
    finally:
        stop_ray_instance(temp)
        shutil.rmtree(temp, ignore_errors=True)

