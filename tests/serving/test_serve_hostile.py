"""The API's parts against an attacker, without Serve: request JSON, remote fetch, input resolution,
the search index, the store check at start-up, what one request may cost. (tests/serving/test_serve.py runs them
over HTTP; an item that breaks the encoder: tests/test_item_encoder.py.)"""
from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from serving.config import RemoteSettings, ServeLimits
from serving.inputs import APIError, Item, fetch, parse_json_body, resolve
from tests.media_factory import png_bytes
from tests.settings import ROOT


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


# --- the JSON scan on hostile bodies at the size limit: linear, whatever the bytes ------------------------------

LIMIT = ServeLimits().max_request_bytes  # 32 MiB: the largest body the Gateway parses
MAX_VALUES = 2 * ServeLimits().max_items + 64  # what the Gateway allows


def _filled(prefix: bytes, unit: bytes, suffix: bytes = b"") -> bytes:
    """``prefix``, then ``unit`` repeated, then ``suffix``: a body of (nearly) LIMIT bytes."""
    return prefix + unit * ((LIMIT - len(prefix) - len(suffix)) // len(unit)) + suffix


HOSTILE_BODIES = [  # (name, body, code, words of the message); the old regex scan took hours on the first five
    ("unclosed string of escaped quotes", lambda: _filled(b'{"input": "', b'\\"'), "invalid_json", "never closes"),
    ("unclosed string of escaped backslashes", lambda: _filled(b'{"input": "', b"\\\\"), "invalid_json", "never closes"),
    ("unclosed string, an escaped quote every 3 bytes", lambda: _filled(b'{"input": "', b'a\\"'), "invalid_json",
     "never closes"),
    ("quotes and backslashes", lambda: _filled(b"", b'"\\'), "invalid_json", "never closes"),
    ("closing brackets", lambda: b"]" * LIMIT, "invalid_json", "unbalanced ']' at offset 0"),
    ("unclosed string of random bytes", lambda: b'{"input": "' + os.urandom(LIMIT - 11).replace(b'"', b"x"),
     "invalid_json", "never closes"),
    ("unclosed string of plain bytes", lambda: _filled(b'{"input": "', b"a"), "invalid_json", "never closes"),
    ("quotes", lambda: b'"' * LIMIT, "request_too_complex", "more than 192 values"),
    ("opening brackets", lambda: b"[" * LIMIT, "invalid_json", "nested more than 8 levels"),
    ("opening objects", lambda: _filled(b"", b'{"a":'), "invalid_json", "nested more than 8 levels"),
    ("a long number", lambda: b"1" * LIMIT, "invalid_json", "a number of more than 1000 characters"),
    ("a long negative number", lambda: _filled(b'{"k": -', b"9"), "invalid_json", "a number of more than 1000"),
    ("number characters", lambda: _filled(b"[", b"1e+-."), "invalid_json", "a number of more than 1000"),
    ("random bytes", lambda: os.urandom(LIMIT), "invalid_json", "request body is not valid JSON"),
    ("whitespace", lambda: b" \t\r\n" * (LIMIT // 4), "invalid_json", "Expecting value"),
    ("many strings", lambda: _filled(b"[", b'"a",'), "request_too_complex", "more than 192 values"),
    ("many numbers", lambda: _filled(b"[", b"1,"), "request_too_complex", "more than 192 values"),
    ("NaNs", lambda: _filled(b'{"input": [', b"NaN,", b"NaN]}"), "invalid_json", "NaN is not JSON"),
    ("UTF-16", lambda: '{"input": "a"}'.encode("utf-16") + b" \x00" * (LIMIT // 2 - 20), "invalid_json",
     "unexpected byte b'\\xff' at offset 0"),
]


@pytest.mark.timeout(60)  # pytest-timeout's SIGALRM interrupts a regex in this thread: a slow scan fails, not hangs
@pytest.mark.parametrize("name,make,code,words", HOSTILE_BODIES, ids=[b[0] for b in HOSTILE_BODIES])
def test_hostile_bodies_at_the_size_limit_are_refused_in_linear_time(name, make, code, words):
    body = make()
    assert LIMIT - 16 <= len(body) <= LIMIT
    started = time.monotonic()
    with pytest.raises(APIError) as err:
        parse_json_body(body, MAX_VALUES)
    took = time.monotonic() - started
    assert took < 5, f"{name}: {took:.1f} s to refuse {len(body)} bytes"
    assert err.value.status == 400 and err.value.code == code and words in err.value.message, err.value.message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unit", [b"A", b'\\"', b"\\u00e9", b"\\/"], ids=["plain", "escaped quotes", "unicode escapes",
                                                                          "escaped slashes"])
def test_a_valid_body_at_the_size_limit_parses_in_linear_time(unit):
    body = _filled(b'{"model": "m", "input": "', unit, b'"}')
    started = time.monotonic()
    parsed = parse_json_body(body, MAX_VALUES)
    assert len(parsed["input"]) == (len(body) - 27) // len(unit) and time.monotonic() - started < 5


def test_the_scan_leaves_the_event_loop_free():
    """The Gateway parses in a thread: while the scan runs on hostile bodies at the size limit, the event loop keeps
    ticking (no single regex match holds the GIL long). In a subprocess, which a scan of hours (the old one on these
    bodies) cannot keep from being timed out."""
    script = textwrap.dedent("""
        import asyncio, json, time
        from serving.config import ServeLimits
        from serving.inputs import APIError, parse_json_body

        LIMIT = ServeLimits().max_request_bytes

        async def stalls(body):
            longest, done = 0.0, False
            async def tick():
                nonlocal longest
                last = time.perf_counter()
                while not done:
                    await asyncio.sleep(0.001)
                    now = time.perf_counter()
                    longest, last = max(longest, now - last), now
            ticker = asyncio.create_task(tick())
            started = time.perf_counter()
            try:
                await asyncio.to_thread(parse_json_body, body, 192)
            except APIError as e:
                code = e.code
            took, done = time.perf_counter() - started, True
            await ticker
            return {"code": code, "scan_s": took, "longest_stall_s": longest}

        bodies = [b'{"input": "' + b'\\\\"' * (LIMIT // 2 - 6), b'{"input": "' + b"\\\\\\\\" * (LIMIT // 2 - 6)]
        print(json.dumps([asyncio.run(stalls(body)) for body in bodies]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for run in json.loads(proc.stdout):
        assert run["code"] == "invalid_json" and run["scan_s"] < 5 and run["longest_stall_s"] < 0.5, run


def test_nan_and_infinity_are_refused_as_not_json():
    """Python's json takes NaN and ±Infinity; JSON has neither. A million of them is refused at the first."""
    started = time.monotonic()
    with pytest.raises(APIError, match="NaN is not JSON") as err:
        parse_json_body(b'{"model": "m", "input": [' + b"NaN, " * 1_000_000 + b"NaN]}", MAX_VALUES)
    assert err.value.status == 400 and err.value.code == "invalid_json" and time.monotonic() - started < 1
    for body, constant in ((b'{"input": "a", "k": NaN}', "NaN"), (b'{"input": "a", "x": {"y": [1, -Infinity]}}',
                                                               "-Infinity"), (b'{"input": "a", "k": Infinity}', "Infinity")):
        with pytest.raises(APIError, match=f"request body is not valid JSON: {constant} is not JSON") as err:
            parse_json_body(body, MAX_VALUES)
        assert err.value.status == 400 and err.value.code == "invalid_json"


def test_json_loads_refuses_nan_past_the_scan_too(monkeypatch):
    from serving import inputs

    monkeypatch.setattr(inputs, "_scan", lambda *args: None)  # as if the scan had let it through
    with pytest.raises(APIError, match="Infinity is not JSON") as err:
        parse_json_body(b'{"input": "a", "k": Infinity}', MAX_VALUES)
    assert err.value.status == 400 and err.value.code == "invalid_json"


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


# --- search index, the store at start-up ----------------------------------------------------------

def _search_index(vectors: dict[str, np.ndarray]):
    import pyarrow as pa

    from pipeline.index.segments import Segment
    from serving.search import Searcher

    index = object.__new__(Searcher)
    index.segments = {m: [Segment(m, "store", v, pa.table({"id": pa.array([f"{m}{i}" for i in range(len(v))], pa.string()),
                                                           "uri": pa.nulls(len(v), pa.string())}))]
                      for m, v in vectors.items()}
    index.calibration = None
    return index


def test_search_names_each_target_once_and_an_empty_modality_finds_nothing():
    rng = np.random.default_rng(0)
    index = _search_index({"image": rng.normal(size=(5, 8)).astype(np.float32), "video": np.zeros((0, 8), np.float32)})
    query = rng.normal(size=8).astype(np.float32)
    found = index.search(query, "text", ["image", "image", "video"], 10)
    assert len(found["hits"]) == 5 and len({h["id"] for h in found["hits"]}) == 5 and found["ranking"] == "score"
    assert index.search(query, "text", ["video"], 3)["hits"] == []
    # an index without calibration (built before it existed) answers, but neither thresholds nor corrects
    refused = index.search(query, "text", ["image"], 3, min_match=0.5)
    assert refused["param"] == "min_match" and "no calibration for text -> image" in refused["error"]
    assert index.search(query, "text", ["image"], 3, hubness=True)["param"] == "hubness"


def test_a_store_from_other_encoders_is_refused_at_start_up(trained, feature_store, tmp_path):
    from pipeline.config import ConfigError
    from pipeline.store.files import read_json, write_json
    from serving.app import _indexed_modalities
    from serving.config import ServeArgs

    other = tmp_path / "store"
    shutil.copytree(feature_store, other)
    record = read_json(str(other / "_progress" / "image" / "encoder.json"))
    write_json(str(other / "_progress" / "image" / "encoder.json"), {**record, "name": "google/vit-base-patch16-224@main"})
    model_dir = trained[0]
    args = ServeArgs(model=model_dir, features=str(other))
    with pytest.raises(ConfigError, match="image features come from encoder 'google/vit-base-patch16-224@main', but "
                                          "the model was trained on 'oneencoder/tiny-image@v1'"):
        _indexed_modalities(args, ["image", "text"])
    assert _indexed_modalities(ServeArgs(model=model_dir, features=feature_store), ["image", "text"]) == ["image", "text"]


# --- what one request may cost: pixels summed from headers, seconds shared out --------------------------------

def _webp(size: tuple[int, int]) -> bytes:
    """A solid-colour lossless WebP: a 40 MP one is a few dozen bytes and about a second of decoding."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buf, "WEBP", lossless=True, quality=0, method=0)
    return buf.getvalue()


def _npy_header(shape: tuple[int, int]) -> bytes:
    """The header of a uint16 .npy depth map of ``shape`` (with no data: only the header is read)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<u2", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_a_request_over_its_pixel_budget_is_refused_from_headers_before_decoding():
    """64 images of 40 MP (each at the per-item limit, 2 KB of JSON in all) would take about a minute of decoding:
    the Gateway sums their pixels from the headers and refuses the request at once, naming the limit."""
    from serving.budget import media_pixels, request_budget

    limits = ServeLimits()
    big = _webp((8000, 5000))
    assert len(big) < 200 and media_pixels(big, -1) == 40_000_000 == limits.max_image_pixels
    started = time.monotonic()
    with pytest.raises(APIError) as err:
        request_budget([Item(i, "image", big) for i in range(64)], limits)
    assert time.monotonic() - started < 1  # decoding one of them alone takes about that
    assert err.value.status == 400 and err.value.code == "request_over_budget" and err.value.param == "input"
    assert ("64 image inputs decode to 2,560,000,000 pixels in all" in err.value.message
            and "limits.max_request_pixels=256,000,000" in err.value.message
            and "send fewer or smaller images per request" in err.value.message), err.value.message
    assert request_budget([Item(i, "image", big) for i in range(6)] + [Item(6, "text", "a caption")], limits) == [{}] * 7
    # depth maps count as their headers say (16-bit PNG, .npy), and a header nobody can read counts nothing
    depth_png = io.BytesIO()
    from PIL import Image

    Image.new("I;16", (300, 200)).save(depth_png, "PNG")
    assert media_pixels(depth_png.getvalue(), -1) == 60_000 and media_pixels(_npy_header((5000, 8000)), -1) == 40_000_000
    assert media_pixels(b"not a picture", -1) == 0 and media_pixels(_npy_header((5000, 8000))[:20], -1) == 0
    items = [Item(i, "image", big) for i in range(6)] + [Item(6, "depth", _npy_header((5000, 8000)))]
    with pytest.raises(APIError, match="7 depth and image inputs decode to 280,000,000 pixels"):
        request_budget(items, limits)
    # one over the per-item limit is refused by its decoder before decoding: it counts as that limit, and the
    # request gets the decoder's error about that item (as it did before the budget)
    huge = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + (8000).to_bytes(4, "big") * 2 + bytes(9) + b"\x00\x00\x00\x00IDAT"
    assert media_pixels(huge, -1) == 64_000_000
    assert request_budget([Item(i, "image", big) for i in range(5)] + [Item(5, "image", huge)], limits) == [{}] * 6


def test_audio_and_video_budgets_are_shared_out_among_the_items():
    from serving.budget import request_budget

    limits = ServeLimits(max_audio_seconds=30, max_request_audio_seconds=60, max_video_seconds=60,
                         max_request_video_seconds=100)
    items = [Item(0, "audio", b"a"), Item(1, "text", "hi"), Item(2, "audio", b"b"), Item(3, "audio", b"c"),
             Item(4, "video", b"v")]
    assert request_budget(items, limits) == [{"max_audio_seconds": 20.0}, {}, {"max_audio_seconds": 20.0},
                                             {"max_audio_seconds": 20.0}, {}]  # one video: 100 s > its 60 s
    two_videos = request_budget([Item(0, "video", b"v"), Item(1, "video", b"w")], limits)
    assert two_videos == [{"max_video_seconds": 50.0}] * 2
    assert request_budget([Item(0, "audio", b"a")], limits) == [{}]  # an item alone keeps the per-item limit


def _decoding_only(modality: str, limits):
    """A modality's ItemEncoder that decodes for real and 'encodes' to a constant (no model needed)."""
    from pipeline.item_encoder import Encoded, ItemEncoder
    from pipeline.media.decode import DecodeSettings
    from pipeline.media.ffmpeg import find_ffmpeg
    from pipeline.modalities import InputSpec
    from pipeline.modality import Modality

    encoder = object.__new__(ItemEncoder)
    encoder.modality = Modality(modality)
    encoder.settings = DecodeSettings(Modality(modality), InputSpec(image_hw=(32, 32), num_frames=4), limits, {},
                                      find_ffmpeg())
    encoder.encode = lambda decoded: [Encoded(np.ones(2, np.float32), 1) for _ in decoded]
    return encoder


def test_an_item_longer_than_its_share_is_refused_naming_both_limits(tmp_path):
    """Each item is decoded with its share as its limit: a 2 s clip passes alone and fails as one of three sharing
    4 s, before its frames are decoded; the Gateway's message says where the share came from and what to do."""
    from pipeline.item_encoder import Encoded, ItemError
    from pipeline.media.ffmpeg import find_ffmpeg
    from pipeline.synthetic.draw import SAMPLE_RATE, clip, encode_video, write_wav
    from serving.budget import explain_share, request_budget

    limits = ServeLimits(max_audio_seconds=3, max_request_audio_seconds=4, max_video_seconds=3,
                         max_request_video_seconds=4)
    wav = io.BytesIO()
    write_wav(wav, (0.3 * np.sin(np.arange(2 * SAMPLE_RATE) / 10)).astype(np.float32))
    encode_video(str(tmp_path / "c.mp4"), clip("red", "circle", frames=8, size=32), 4, find_ffmpeg())  # 2 s
    media = {"audio": wav.getvalue(), "video": (tmp_path / "c.mp4").read_bytes()}
    for modality, data in media.items():
        encoder = _decoding_only(modality, limits)
        alone = [Item(0, modality, data)]
        assert isinstance(encoder.embed([data], request_budget(alone, limits))[0], Encoded)
        three = [Item(i, modality, data) for i in range(3)]
        shares = request_budget(three, limits)
        results = encoder.embed([data] * 3, shares)
        assert all(isinstance(r, ItemError) and f"limits.max_{modality}_seconds=1.33333" in r.reason for r in results)
        message = explain_share(results[1].reason, shares[1], three, limits)
        assert (f"share of limits.max_request_{modality}_seconds=4 s, split between the request's 3 {modality} items "
                f"(1.33333 s each; limits.max_{modality}_seconds=3 s is for an item alone): send fewer or shorter "
                f"{modality} items per request") in message, message


def test_the_replica_never_loosens_its_own_limits():
    from serving.config import ServeArgs
    from serving.deployments import ModalityEncoder

    seen = []

    class Model:
        def embed_items(self, items, modality, limits=None, timings=None):
            seen.append(limits)
            return []

    replica = object.__new__(ModalityEncoder.func_or_class)
    replica.models, replica.modality, replica.args = {"m": Model()}, "audio", ServeArgs(limits={"max_audio_seconds": 10})
    replica._embed([b"a", b"b", b"c"], [{"max_audio_seconds": 4.0}, {"max_audio_seconds": 99.0}, None])
    replica._embed([b"a"], [{}])
    assert seen == [[{"max_audio_seconds": 4.0}, {"max_audio_seconds": 10.0}, None], None]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow, on the padded TIFF
def test_pixels_are_read_from_headers_in_bounded_time():
    """Every format the decoders open, exactly; a header padded out to the file limit (Pillow would walk its million
    chunks in Python) counts as the most a decoder accepts, in milliseconds; a size given twice counts the larger."""
    import struct
    import zlib

    from PIL import Image

    from serving.budget import media_pixels

    for fmt, mode, options in (("PNG", "RGB", {}), ("PNG", "I;16", {}), ("JPEG", "RGB", {"progressive": True}),
                               ("WEBP", "RGB", {}), ("GIF", "P", {}), ("BMP", "RGB", {}), ("TIFF", "I;16", {}),
                               ("TIFF", "RGB", {"compression": "tiff_lzw"})):
        buf = io.BytesIO()
        Image.new(mode, (3001, 2003)).save(buf, fmt, **options)
        assert media_pixels(buf.getvalue(), -1) == 3001 * 2003, (fmt, mode)
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000
    buf = io.BytesIO()  # a camera's metadata before the frame header: still exact
    Image.new("RGB", (640, 480)).save(buf, "JPEG", exif=exif.tobytes(), icc_profile=bytes(200_000))
    assert media_pixels(buf.getvalue(), -1) == 640 * 480

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def ihdr(width: int, height: int) -> bytes:
        return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))

    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64)).save(jpeg, "JPEG")
    most = ServeLimits().max_file_bytes
    padded = {"PNG": b"\x89PNG\r\n\x1a\n" + ihdr(64, 64) + chunk(b"abCd", b"") * (most // 12) + chunk(b"IDAT", b""),
              "JPEG": jpeg.getvalue()[:2] + b"\xff\xfe\x00\x02" * (most // 4) + jpeg.getvalue()[2:],
              "GIF": b"GIF89a" + struct.pack("<HH", 64, 64) + b"\x00\x00\x00" + b"\x21\xfe\x01a\x00" * (most // 5),
              "TIFF": b"II*\x00\x08\x00\x00\x00\xff\xff" + struct.pack("<HHI4s", 60000, 3, 1, bytes(4)) * 65535}
    for fmt, data in padded.items():
        started = time.monotonic()
        assert media_pixels(data, 12345) == 12345 and time.monotonic() - started < 0.5, fmt
    twice = b"\x89PNG\r\n\x1a\n" + ihdr(1, 1) + ihdr(8000, 5000) + chunk(b"IDAT", b"")
    assert Image.open(io.BytesIO(twice)).size == (8000, 5000) and media_pixels(twice, -1) == 40_000_000


def test_the_gateway_parses_small_bodies_inline_and_larger_ones_in_a_thread(monkeypatch):
    """A body of a few fields is parsed on the event loop (a thread hop would cost more than the parse); one over
    INLINE_JSON_BYTES in a worker thread. Both are parsed and refused alike."""
    import types

    from serving.app import INLINE_JSON_BYTES, Gateway
    from serving.config import ServeArgs

    threaded = []

    async def to_thread(fn, *args):
        threaded.append(len(args[0]))
        return fn(*args)

    monkeypatch.setattr(asyncio, "to_thread", to_thread)

    class Body:
        def __init__(self, data: bytes):
            self.data, self.headers = data, {"content-length": str(len(data))}

        async def stream(self):
            yield self.data

    gateway = types.SimpleNamespace(args=ServeArgs(model="unused"), _authorize=lambda request: None)
    parse = Gateway.func_or_class._json
    small = json.dumps({"model": "m", "input": "a red circle"}).encode()
    large = json.dumps({"model": "m", "input": "a red circle " * (INLINE_JSON_BYTES // 13)}).encode()
    assert asyncio.run(parse(gateway, Body(small)))["input"] == "a red circle" and threaded == []
    assert asyncio.run(parse(gateway, Body(large)))["input"].startswith("a red circle") and threaded == [len(large)]
    for body in (b"[" * 20 + b"]" * 20, b"[" * 20 + b" " * INLINE_JSON_BYTES + b"]" * 20):
        with pytest.raises(APIError, match="nested more than 8 levels deep"):
            asyncio.run(parse(gateway, Body(body)))
    assert threaded == [len(large), len(body)]
