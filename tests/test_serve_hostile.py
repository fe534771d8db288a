"""The API's parts against an attacker, without Serve: request JSON, remote fetch, input resolution,
the search index, per-item finiteness and error texts. (tests/test_serve.py runs them over HTTP.)"""
from __future__ import annotations

import http.server
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest

from serving.config import RemoteSettings, ServeLimits
from serving.inputs import APIError, Item, fetch, parse_json_body, resolve
from tests.media_factory import png_bytes


@pytest.mark.parametrize("body,code", [
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),                  # a RecursionError in json
    (b'{"input": [' + b"{}," * 300_000 + b"{}]}", "request_too_complex"),  # 25x in memory once parsed
    (b'{"input": ' + b"[" * 9 + b'"a"' + b"]" * 9 + b"}", "invalid_json"),
    (b'{"input": ["a", "b"', "invalid_json"),
    (b'["not", "an object"]', "invalid_json"),
])
def test_request_json_is_bounded_before_it_is_built(body, code):
    started = time.monotonic()
    with pytest.raises(APIError) as err:
        parse_json_body(body, max_values=192)
    assert err.value.status == 400 and err.value.code == code, err.value.message
    assert time.monotonic() - started < 1


def test_request_json_of_the_api_shape_parses():
    body = b'{"model": "m", "input": ["a \\"quoted\\" [bracket", "data:image/png;base64,AAAA"], "k": 5}'
    assert parse_json_body(body, max_values=192)["input"][0] == 'a "quoted" [bracket'


def test_text_that_starts_with_data_is_text_when_the_request_says_so():
    limits = ServeLimits()
    item = resolve(0, "data: the first word of this caption", "text", ["text", "image"], limits)
    assert item.modality == "text" and item.value == "data: the first word of this caption"
    with pytest.raises(APIError, match="malformed data URI"):  # without the modality it is a data URI
        resolve(0, "data: the first word", None, ["text", "image"], limits)


# --- remote fetch -------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        if self.path == "/red.png":
            body = png_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/broken":  # not HTTP at all
            self.wfile.write(b"garbage that is not a status line\r\n\r\n")
        elif self.path == "/short":  # promises more than it sends
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
        elif self.path == "/slow":  # one byte every 0.3 s: never idle long enough for a per-read timeout
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.3)


@pytest.fixture(scope="module")
def loopback():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _fetch(url: str, allow: list[str], private: bool = True, timeout_s: float = 5.0) -> Item:
    remote = RemoteSettings(enabled=True, allow_hosts=allow, allow_private_addresses=private, timeout_s=timeout_s)
    return fetch(Item(2, "image", None, remote_url=url), remote, ServeLimits())


def _refused(url: str, allow: list[str], code: str, match: str = "", **kw) -> APIError:
    with pytest.raises(APIError) as err:
        _fetch(url, allow, **kw)
    assert err.value.status == 400 and err.value.code == code and err.value.param == "input[2]", err.value.message
    assert match in err.value.message, err.value.message
    return err.value


def test_an_allowed_loopback_fetch_works(loopback):
    assert _fetch(f"http://127.0.0.1:{loopback}/red.png", [f"127.0.0.1:{loopback}"]).value == png_bytes()


def test_the_allow_list_matches_host_and_port(loopback):
    _refused(f"http://127.0.0.1:{loopback}/red.png", ["127.0.0.1"], "host_not_allowed", f"127.0.0.1:{loopback}")
    _refused(f"http://127.0.0.1:{loopback}/red.png", [f"127.0.0.1:{loopback + 1}"], "host_not_allowed")


def test_hosts_resolving_to_private_addresses_are_refused_unless_allowed(loopback):
    _refused(f"http://localhost:{loopback}/red.png", [f"localhost:{loopback}"], "host_not_allowed",
             "not a public address", private=False)
    _refused(f"http://127.0.0.1:{loopback}/red.png", [f"127.0.0.1:{loopback}"], "host_not_allowed", private=False)
    for address in ("http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.1]/", "http://10.1.2.3/"):
        host = address.split("/")[2]
        _refused(address, [host], "host_not_allowed", "not a public address", private=False)


@pytest.mark.parametrize("url,code", [
    ("http://[::1/red.png", "invalid_url"),
    ("http://127.0.0.1:99999/red.png", "invalid_url"),
    ("http:///red.png", "invalid_url"),
])
def test_malformed_urls_are_400(url, code):
    _refused(url, ["127.0.0.1"], code)


@pytest.mark.parametrize("path", ["/broken", "/short", "/missing"])
def test_broken_responses_are_400(loopback, path):
    _refused(f"http://127.0.0.1:{loopback}{path}", [f"127.0.0.1:{loopback}"], "fetch_failed")


def test_one_deadline_bounds_the_whole_fetch(loopback):
    started = time.monotonic()
    _refused(f"http://127.0.0.1:{loopback}/slow", [f"127.0.0.1:{loopback}"], "fetch_failed",
             "took longer than remote.timeout_s=1.5 s", timeout_s=1.5)
    assert time.monotonic() - started < 3


def _self_signed(folder, name: str) -> tuple[str, str]:
    """A certificate for ``name`` signed by its own key; (cert path, key path)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return cert_path, key_path


def test_https_goes_to_the_checked_address_and_verifies_the_host_name(tmp_path, monkeypatch):
    import ssl

    cert, key = _self_signed(str(tmp_path), "localhost")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        _refused(f"https://localhost:{port}/red.png", [f"localhost:{port}"], "fetch_failed", "CERTIFICATE_VERIFY_FAILED")
        monkeypatch.setenv("SSL_CERT_FILE", cert)  # trust it: the certificate now verifies for "localhost"
        assert _fetch(f"https://localhost:{port}/red.png", [f"localhost:{port}"]).value == png_bytes()
        # the same server by address: the certificate names localhost, not 127.0.0.1
        _refused(f"https://127.0.0.1:{port}/red.png", [f"127.0.0.1:{port}"], "fetch_failed", "CERTIFICATE_VERIFY_FAILED")
    finally:
        server.shutdown()


def test_a_closed_port_is_a_400(loopback):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        _refused(f"http://127.0.0.1:{port}/x", [f"127.0.0.1:{port}"], "fetch_failed")


# --- search index, finiteness, error texts --------------------------------------------------------

def _search_index(vectors: dict[str, np.ndarray]):
    from serving.deployments import SearchIndex

    index = object.__new__(SearchIndex.func_or_class)
    index.vectors = vectors
    index.ids = {m: [f"{m}{i}" for i in range(len(v))] for m, v in vectors.items()}
    index.uris = {m: [None] * len(v) for m, v in vectors.items()}
    return index


def test_search_names_each_target_once_and_an_empty_modality_finds_nothing():
    rng = np.random.default_rng(0)
    index = _search_index({"image": rng.normal(size=(5, 8)).astype(np.float32), "video": np.zeros((0, 8), np.float32)})
    query = rng.normal(size=8).astype(np.float32)
    hits = index.search(query, ["image", "image", "video"], 10)
    assert len(hits) == 5 and len({h["id"] for h in hits}) == 5
    assert index.search(query, ["video"], 3) == []


@pytest.fixture(scope="module")
def model_dir(trained):
    return trained[0]


def test_non_finite_vectors_fail_their_item_only(model_dir, monkeypatch):
    """The frozen encoder overflowing on one input (as fp16 on a GPU would): that item fails, in load_model and in
    the Serve replica alike (the one raw-item → vector path), and its batch-mates get their vectors."""
    from pipeline.inference import load_model
    from pipeline.item_encoder import ItemError
    from serving.deployments import ModalityEncoder

    model = load_model(model_dir)
    frozen = model.items("text").frozen
    real = frozen.embed_counted

    def overflowing(texts):
        features, tokens = real(texts)
        features[[i for i, t in enumerate(texts) if "overflow" in t]] = np.inf
        return features, tokens

    monkeypatch.setattr(frozen, "embed_counted", overflowing)
    results = model.embed_items(["a red circle", "overflow", "a blue square"], "text")
    assert isinstance(results[1], ItemError) and "non-finite" in results[1].reason and results[1].stage == "encode"
    assert all(np.isfinite(r.vector).all() for r in (results[0], results[2]))
    with pytest.raises(ValueError, match="item 1: text: the encoder gave non-finite values"):
        model.embed(["a red circle", "overflow"], "text")
    replica = object.__new__(ModalityEncoder.func_or_class)
    replica.model, replica.modality = model, "text"
    answers = replica._embed(["overflow", "a red circle"])
    assert "non-finite" in answers[0]["error"] and np.isfinite(answers[1]["embedding"]).all()


def test_an_item_that_breaks_the_encoder_fails_alone(model_dir, monkeypatch):
    """A forward pass that raises is retried item by item: only the item that breaks it gets an error."""
    from pipeline.inference import load_model
    from pipeline.item_encoder import ItemError

    model = load_model(model_dir)
    frozen = model.items("text").frozen
    real = frozen.embed_counted

    def fragile(texts):
        if any("boom" in t for t in texts):
            raise RuntimeError("CUDA error: an illegal memory access")
        return real(texts)

    monkeypatch.setattr(frozen, "embed_counted", fragile)
    results = model.embed_items(["a red circle", "boom", "a blue square", ""], "text")
    assert [type(r).__name__ for r in results] == ["Encoded", "ItemError", "Encoded", "ItemError"]
    assert results[1].stage == "encode" and "RuntimeError: CUDA error" in results[1].reason and results[1].index == 1
    assert results[3].stage == "decode" and "empty text" in results[3].reason and results[3].index == 3
    np.testing.assert_array_equal(results[0].vector, model.embed(["a red circle"], "text")[0])
    assert isinstance(model.embed_items([b"bytes for text"], "text")[0], ItemError)


def test_errors_about_posted_bytes_name_no_server_path(model_dir):
    from pipeline.inference import load_model

    model = load_model(model_dir)
    for modality, data in (("audio", b""), ("audio", b"RIFF\x00\x00"), ("video", os.urandom(3000)),
                           ("image", b"not an image")):
        with pytest.raises(ValueError) as err:
            model.embed([data], modality)
        assert "/tmp" not in str(err.value) and "oneencoder-" not in str(err.value), str(err.value)


def test_a_store_from_other_encoders_is_refused_at_start_up(model_dir, feature_store, tmp_path):
    from pipeline.config import ConfigError
    from pipeline.store.files import read_json, write_json
    from serving.app import _indexed_modalities
    from serving.config import ServeArgs

    other = tmp_path / "store"
    shutil.copytree(feature_store, other)
    record = read_json(str(other / "_progress" / "image" / "encoder.json"))
    write_json(str(other / "_progress" / "image" / "encoder.json"), {**record, "name": "google/vit-base-patch16-224@main"})
    args = ServeArgs(model=model_dir, features=str(other))
    with pytest.raises(ConfigError, match="image features come from encoder 'google/vit-base-patch16-224@main', but "
                                          "the model was trained on 'oneencoder/tiny-image@v1'"):
        _indexed_modalities(args, ["image", "text"])
    assert _indexed_modalities(ServeArgs(model=model_dir, features=feature_store), ["image", "text"]) == ["image", "text"]
