"""The inputs users have besides a manifest of paths: WebDataset tar shards, Parquet with media bytes
(Hugging Face ``{bytes, path}`` structs), and http(s) URLs fetched from a loopback server."""
from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import tarfile
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import HttpConfig
from pipeline.embed.config import EmbedConfig
from pipeline.embed.job import run_embed
from pipeline.modality import Modality
from pipeline.store.errors import ManifestError, ReadError
from pipeline.store.features import embeddings, read_errors, read_features
from pipeline.store.http import fetch
from pipeline.store.manifest import plan_manifest
from tests.media_factory import tar_add, write_img2dataset, write_webdataset

MODALITIES = ("image", "text", "audio", "video")


def vectors(out: str, modality: str) -> dict[str, np.ndarray]:
    table = read_features(out, modality)
    return dict(zip(table.column("id").to_pylist(), embeddings(table).astype(np.float32)))


@pytest.fixture(scope="module")
def reference(ray_session, sample_corpus, tmp_path_factory):
    """The sample corpus embedded from its JSONL manifest: the vectors every other input must give."""
    out = str(tmp_path_factory.mktemp("reference") / "out")
    run_embed(EmbedConfig(input=sample_corpus, output=out, shard_size=5))
    return {m: vectors(out, m) for m in MODALITIES}


@pytest.fixture(scope="module")
def shards(sample_corpus, tmp_path_factory):
    """The 12 samples as 3 shards of 4, plus bad members in a 4th: an oversized image, a caption that is not
    UTF-8, a corrupt image, and a symlink (never followed)."""
    folder = tmp_path_factory.mktemp("wds")
    paths = write_webdataset(sample_corpus, str(folder), per_shard=4)
    bad = str(folder / "shard-000003.tar")
    with tarfile.open(bad, "w") as tar:
        tar_add(tar, "big.png", b"\x89PNG" + b"\0" * 300_000)
        tar_add(tar, "big.txt", b"a caption")
        tar_add(tar, "latin.txt", "caf\xe9".encode("latin-1"))
        tar_add(tar, "broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
        link = tarfile.TarInfo("evil.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return str(folder), paths + [bad]


@pytest.mark.slow
def test_tar_shards_give_the_manifest_s_vectors_with_one_row_per_key(ray_session, reference, shards, tmp_path):
    folder, paths = shards
    out = str(tmp_path / "out")
    cfg = EmbedConfig(input=folder, output=out, shard_size=5, limits={"max_file_bytes": 200_000})
    summary = run_embed(cfg)
    for m in MODALITIES:
        got = vectors(out, m)
        for key, vector in reference[m].items():  # every sample key is an id with the manifest's vector
            np.testing.assert_allclose(got[key], vector, atol=2e-3, err_msg=f"{m} {key}")
    assert set(vectors(out, "text")) == set(reference["text"]) | {"big"}
    table = read_features(out, "image")
    uris = dict(zip(table.column("id").to_pylist(), table.column("uri").to_pylist()))
    assert uris["s00000"] == f"{paths[0]}#s00000.png"
    errors = {(e["id"], e["modality"]): (e["stage"], e["error"]) for e in read_errors(out).to_pylist()}
    assert errors[("big", "image")][0] == "read" and "is 300004 bytes, over limits.max_file_bytes=200000" in errors[("big", "image")][1]
    assert errors[("latin", "text")][0] == "read" and "not valid UTF-8" in errors[("latin", "text")][1]
    assert errors[("broken", "image")][0] == "decode"
    assert len(errors) == 3 and "evil" not in {k for k, _ in errors}  # a symlink member is not a sample
    assert summary["modalities"]["image"]["items"] == 12 + 2 and summary["modalities"]["image"]["complete"]
    assert run_embed(cfg)["items_this_run"] == 0  # resumes to a no-op


def test_a_tar_a_folder_and_a_brace_pattern_plan_the_same_rows(shards, tmp_path):
    folder, paths = shards
    pattern = os.path.join(folder, "shard-{000000..000002}.tar")
    plans = [plan_manifest(uri, {}, shard_size=5) for uri in (pattern, os.path.join(folder, "shard-{000000,000001,000002}.tar"))]
    assert plans[0].sources == paths[:3] == plans[1].sources and plans[0].digest == plans[1].digest
    assert plans[0].rows == 12 and plans[0].fmt == "webdataset" and plans[0].ignored_columns == ["json"]
    assert plans[0].counts.tolist() == [[5] * 4, [5] * 4, [2] * 4]
    one = plan_manifest(paths[0], {}, shard_size=5)
    assert one.rows == 4 and one.sources == [paths[0]]
    whole = plan_manifest(folder + "/", {}, shard_size=5)
    assert whole.sources == paths and whole.rows == 12 + 3  # big, latin, broken (a symlink is no sample)


def test_bad_tar_inputs_are_named(shards, tmp_path):
    folder, paths = shards
    with pytest.raises(ManifestError, match=r"cannot read shard: file not found: .*shard-000004\.tar"):
        plan_manifest(os.path.join(folder, "shard-{000000..000009}.tar"), {}, shard_size=5)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(ManifestError, match=r"garbage\.tar is not a valid tar"):
        plan_manifest(str(garbage), {}, shard_size=5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="a folder with no .tar shards"):
        plan_manifest(str(tmp_path / "empty"), {}, shard_size=5)
    twice = tmp_path / "twice"
    twice.mkdir()
    shutil.copy(paths[0], twice / "a.tar")
    shutil.copy(paths[0], twice / "b.tar")
    with pytest.raises(ManifestError, match="4 duplicate id.*'s00000'"):
        plan_manifest(str(twice), {}, shard_size=5)
    downwards = plan_manifest(os.path.join(folder, "shard-{000002..000000}.tar"), {}, shard_size=5)
    assert downwards.sources == paths[:3][::-1]  # as bash counts down
    with pytest.raises(ManifestError, match=r"names the shard '.*shard-000001\.tar' more than once"):
        plan_manifest(os.path.join(folder, "shard-{000001,000001}.tar"), {}, shard_size=5)


# patterns against what bash itself makes of them: order, nesting, steps, letters, downwards, padding, escapes
BASH_PATTERNS = ["s-{000000..000002}.tar", "{a,b}-{0..1}.tar", "x-{a,{b,c}}.tar", "s-{0..6..2}.tar", "s-{a..c}.tar",
                 "s-{3..1}.tar", "s-{08..11}.tar", "d/{x,y}/p-{1,2}.tar", "s-{a,b{1..2},c}.tar", "s-{-1..1}.tar",
                 "s-\\{a,b\\}.tar", "s-{a,b}{c,d}{e,f}.tar", "s-{0..10..5}.tar"]


@pytest.mark.parametrize("pattern", BASH_PATTERNS)
def test_brace_patterns_expand_as_bash_expands_them(pattern):
    import shlex
    import subprocess

    from pipeline.store.webdataset import expand_braces

    bash = subprocess.run(["bash", "-c", f"printf '%s\\n' {pattern}"], capture_output=True, text=True, check=True)
    assert expand_braces(pattern) == bash.stdout.splitlines(), shlex.quote(pattern)


def test_brace_patterns_too_big_deep_or_unbalanced_are_refused_at_once():
    import time

    from pipeline.store.webdataset import TarError, expand_braces

    started = time.monotonic()
    for pattern, message in [("x-{0..99999999999}.tar", "names over 10,000,000 shards"),
                             ("x-{0..9999}-{0..9999}.tar", "names over 10,000,000 shards"),
                             ("x" + "{a,b}" * 30 + ".tar", "names over 10,000,000 shards"),
                             ("x" + "{" * 2000 + "a,b" + "}" * 2000 + ".tar", "braces nested over 16 deep"),
                             ("x-{a,b.tar", "unbalanced braces"), ("x-{a,a}.tar", "names the shard 'x-a.tar' more than once")]:
        with pytest.raises(TarError, match=re.escape(message)):
            expand_braces(pattern)
    assert time.monotonic() - started < 1  # counted, not built: 2^30 names or 10^11 are never listed


def _duplicated_images(sample_corpus, folder, n: int = 9, distinct: int = 3) -> tuple[str, list[dict]]:
    """``n`` samples over ``distinct`` images, each under its own key and name, in one tar; returns its path and
    the rows (id, image file, caption)."""
    corpus = os.path.dirname(sample_corpus)
    with open(sample_corpus) as fh:
        samples = [json.loads(line) for line in fh][:distinct]
    rows = [{"id": f"k{i:02d}", "image": os.path.join(corpus, samples[i % distinct]["image"]), "text": f"caption {i}"}
            for i in range(n)]
    path = os.path.join(folder, "dup.tar")
    with tarfile.open(path, "w") as tar:
        for r in rows:
            with open(r["image"], "rb") as fh:
                tar_add(tar, r["id"] + ".png", fh.read())
            tar_add(tar, r["id"] + ".txt", r["text"].encode())
    return path, rows


def test_media_held_in_the_input_is_grouped_by_content_each_row_keeping_its_name(sample_corpus, tmp_path):
    from pipeline.embed.stages import work_rows
    from pipeline.modality import Modality
    from pipeline.store.manifest import read_chunk
    from pipeline.store.rows import item_mask

    path, rows = _duplicated_images(sample_corpus, str(tmp_path))
    plan = plan_manifest(path, {}, shard_size=4)
    table = read_chunk(plan, plan.chunks[0], {})
    image = Modality("image")
    items = table.filter(pa.array(item_mask(table, image)))
    grouped = work_rows(items, image, plan.base, dedupe=True).to_pylist()
    assert [w["ids"] for w in grouped] == [["k00", "k03", "k06"], ["k01", "k04", "k07"], ["k02", "k05", "k08"]]
    assert [w["rows"] for w in grouped] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert grouped[0]["uris"] == [f"{path}#k00.png", f"{path}#k03.png", f"{path}#k06.png"]  # each its own name
    with open(rows[1]["image"], "rb") as fh:
        assert grouped[1]["data"] == fh.read() and grouped[1]["value"] == f"{path}#k01.png"
    single = work_rows(items, image, plan.base, dedupe=False).to_pylist()
    assert [w["ids"] for w in single] == [[r["id"]] for r in rows] and [w["uris"] for w in single] == [[f"{path}#{r['id']}.png"] for r in rows]
    text = work_rows(table.filter(pa.array(item_mask(table, Modality("text")))), Modality("text"), plan.base, dedupe=True)
    assert text.num_rows == 9  # distinct captions: nothing to share


@pytest.mark.slow
def test_duplicate_media_in_tars_is_embedded_once_per_content(ray_session, reference, sample_corpus, tmp_path):
    """img2dataset-style shards often hold one image under several keys: one encode per content, a row per key."""
    path, rows = _duplicated_images(sample_corpus, str(tmp_path))
    out = str(tmp_path / "out")
    summary = run_embed(EmbedConfig(input=path, output=out, modalities=["image"], shard_size=4))
    image = summary["modalities"]["image"]
    assert image["items"] == 9 and image["unique"] == 3 and image["complete"]
    got = vectors(out, "image")
    for i, r in enumerate(rows):  # each key has its image's vector (as embedded from the JSONL manifest)
        np.testing.assert_allclose(got[r["id"]], reference["image"][f"s{i % 3:05d}"], atol=2e-3, err_msg=r["id"])
    uris = dict(zip(read_features(out, "image").column("id").to_pylist(), read_features(out, "image").column("uri").to_pylist()))
    assert uris == {r["id"]: f"{path}#{r['id']}.png" for r in rows}
    assert run_embed(EmbedConfig(input=path, output=str(tmp_path / "all"), modalities=["image"], shard_size=4,
                                 dedupe=False))["modalities"]["image"]["unique"] == 9


def test_img2dataset_parquet_plans_the_shards_without_reading_their_tars(sample_corpus, tmp_path, monkeypatch):
    import pipeline.store.webdataset as wds

    paths = write_img2dataset(sample_corpus, str(tmp_path))
    opened = []
    opens = wds._open
    monkeypatch.setattr(wds, "_open", lambda uri, *a: opened.append(uri) or opens(uri, *a))
    plan = plan_manifest(str(tmp_path), {}, shard_size=4)
    assert plan.sidecars and opened == [paths[0]]  # only the first tar, to check its Parquet against it
    opened.clear()
    headers = plan_manifest(str(tmp_path), {}, shard_size=4, tar_index="headers")
    assert not headers.sidecars and opened == paths
    assert plan.rows == headers.rows == 9 and plan.counts.tolist() == headers.counts.tolist() == [[4, 4], [4, 4], [1, 1]]
    assert [c.digest for c in plan.chunks] == [c.digest for c in headers.chunks]  # the same samples to read
    assert plan.ignored_columns == headers.ignored_columns == ["json"]
    # the first shard's Parquet disagreeing with its tar (a key it does not hold): every tar is indexed
    table = pq.read_table(os.path.join(tmp_path, "00000.parquet")).to_pylist()
    table[-1]["status"] = "success"
    pq.write_table(pa.Table.from_pylist(table), os.path.join(tmp_path, "00000.parquet"))
    opened.clear()
    fallback = plan_manifest(str(tmp_path), {}, shard_size=4)
    assert not fallback.sidecars and fallback.rows == 9 and sorted(opened) == sorted([paths[0]] * 2 + paths[1:])
    (tmp_path / "00000.parquet").write_bytes(b"PAR1 truncated")  # unreadable: named, with the way around it
    with pytest.raises(ManifestError, match=r"cannot read img2dataset's shard index .*00000\.parquet.*tar_index: headers"):
        plan_manifest(str(tmp_path), {}, shard_size=4)
    assert plan_manifest(str(tmp_path), {}, shard_size=4, tar_index="headers").rows == 9


def test_video2dataset_parquet_plans_the_shards_with_the_members_the_first_tar_holds(sample_corpus, tmp_path,
                                                                                       monkeypatch):
    """video2dataset writes the same Parquet beside each tar, for key.mp4 (not key.jpg) samples: the member names
    come from the first tar's headers, so its Parquet plans the rest without reading them."""
    import pipeline.store.webdataset as wds

    paths = write_img2dataset(sample_corpus, str(tmp_path), media="video", per_shard=3)
    opened = []
    opens = wds._open
    monkeypatch.setattr(wds, "_open", lambda uri, *a: opened.append(uri) or opens(uri, *a))
    plan = plan_manifest(str(tmp_path), {}, shard_size=4)
    assert plan.sidecars and opened == [paths[0]]
    headers = plan_manifest(str(tmp_path), {}, shard_size=4, tar_index="headers")
    assert plan.modalities == headers.modalities == [Modality("text"), Modality("video")]
    assert plan.rows == headers.rows == 6 and plan.counts.tolist() == headers.counts.tolist()
    assert [c.digest for c in plan.chunks] == [c.digest for c in headers.chunks]  # the same samples to read
    assert plan.ignored_columns == headers.ignored_columns == ["json"]
    # a first tar whose videos are named two ways (key.mp4, key.webm) gives no one layout: headers everywhere
    with tarfile.open(paths[0], "a") as tar:
        tar_add(tar, "zz.webm", b"not read")
    opened.clear()
    mixed = plan_manifest(str(tmp_path), {}, shard_size=4)
    assert not mixed.sidecars and sorted(set(opened)) == sorted(paths)


@pytest.mark.slow
def test_img2dataset_shards_embed_as_their_headers_say_and_a_lying_parquet_is_named(ray_session, sample_corpus, tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_img2dataset(sample_corpus, str(folder))
    runs = {}
    for how in ("auto", "headers"):
        out = str(tmp_path / how)
        summary = run_embed(EmbedConfig(input=str(folder), output=out, modalities=["image", "text"], shard_size=4,
                                        tar_index=how))
        assert all(summary["modalities"][m]["complete"] and summary["modalities"][m]["items"] == 9 for m in ("image", "text"))
        runs[how] = {m: vectors(out, m) for m in ("image", "text")}
    for m in ("image", "text"):
        assert sorted(runs["auto"][m]) == sorted(f"{s:05d}{i:04d}" for s in range(3) for i in range(3))
        for key, vector in runs["headers"][m].items():
            np.testing.assert_array_equal(runs["auto"][m][key], vector)
    # the last shard's Parquet lists a sample its tar does not hold: the read finds out and names that shard (not
    # the first of its read chunk, which holds all three) and the way out
    table = pq.read_table(os.path.join(folder, "00002.parquet")).to_pylist()
    table[-1]["status"] = "success"
    pq.write_table(pa.Table.from_pylist(table), os.path.join(folder, "00002.parquet"))
    with pytest.raises(ManifestError, match=r"shard \S*00002\.tar held 4 samples when planned, 3 now; its keys "
                                            r"were planned from img2dataset's \.parquet .*00002\.parquet.*tar_index: headers"):
        run_embed(EmbedConfig(input=str(folder), output=str(tmp_path / "lying"), modalities=["text"], shard_size=4))
    fixed = run_embed(EmbedConfig(input=str(folder), output=str(tmp_path / "lying"), modalities=["text"], shard_size=4,
                                  chunk_rows=4, tar_index="headers", overwrite=True))
    assert fixed["modalities"]["text"]["items"] == 9 and fixed["modalities"]["text"]["complete"]


def test_a_manifest_that_changes_after_planning_is_a_user_error(ray_session, tmp_path, monkeypatch, capsys):
    """The read tasks find the manifest no longer matches the plan: the job stops with exit 2 and one error line
    naming the file, not a Ray traceback, and commits nothing read from the changed file."""
    from jobs import embed
    from pipeline.embed import job

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"t{i}", "text": f"caption {i}"}) + "\n" for i in range(8)))
    planned = job.plan_manifest

    def plan_then_edit(*args, **kwargs):  # another writer replaces a caption between the plan and the reads
        plan = planned(*args, **kwargs)
        manifest.write_text(manifest.read_text().replace("caption 5", "caption X"))
        return plan

    monkeypatch.setattr(job, "plan_manifest", plan_then_edit)
    out = tmp_path / "out"
    assert embed.main(["--input", str(manifest), "--output", str(out), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: manifest {manifest} changed while the job ran"), err[-3:]
    assert not [name for name in os.listdir(out / "_progress" / "text") if name.startswith("shard-")]


@pytest.mark.slow
def test_parquet_with_media_bytes_as_hugging_face_exports_them(ray_session, reference, sample_corpus, tmp_path):
    corpus = os.path.dirname(sample_corpus)
    with open(sample_corpus) as fh:
        rows = [json.loads(line) for line in fh]

    def media(row, m):
        with open(os.path.join(corpus, row[m]), "rb") as f:
            return f.read()

    # rows 0-9: bytes in {bytes, path} structs (image, audio) and a plain binary column (video); row 10: no bytes,
    # a path relative to the file (a URI item); row 11: no image at all; "junk": bytes that are no image
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = [{"bytes": media(r, "image"), "path": os.path.basename(r["image"])} for r in rows[:10]]
    images += [{"bytes": None, "path": rows[10]["image"]}, None, {"bytes": b"junk bytes", "path": "junk.png"}]
    table = pa.table({
        "id": [r["id"] for r in rows] + ["junk"],
        "image": pa.array(images, struct),
        "text": [r["text"] for r in rows] + [None],
        "audio": pa.array([{"bytes": media(r, "audio"), "path": None} for r in rows] + [None], struct),
        "video": pa.array([media(r, "video") for r in rows] + [None], pa.binary()),
    })
    # the manifest in a folder of this test's own (not the shared corpus), with row 10's file beside it: its path
    # is relative to the manifest
    folder = tmp_path / "hf"
    os.makedirs(folder / os.path.dirname(rows[10]["image"]))
    shutil.copy(os.path.join(corpus, rows[10]["image"]), folder / rows[10]["image"])
    manifest = str(folder / "embedded.parquet")
    pq.write_table(table, manifest, row_group_size=5)
    out = str(tmp_path / "out")
    summary = run_embed(EmbedConfig(input=manifest, output=out, shard_size=5))
    for m in MODALITIES:
        got = vectors(out, m)
        expected = {k: v for k, v in reference[m].items() if not (m == "image" and k == "s00011")}
        assert set(got) == set(expected), m
        for key, vector in expected.items():
            np.testing.assert_allclose(got[key], vector, atol=2e-3, err_msg=f"{m} {key}")
    uris = dict(zip(read_features(out, "image").column("id").to_pylist(), read_features(out, "image").column("uri").to_pylist()))
    assert uris["s00000"] == "00000.png" and uris["s00010"] == os.path.join(folder, rows[10]["image"])
    audio_uris = read_features(out, "audio").column("uri").to_pylist()
    assert all(u.startswith(manifest + "#id=s000") for u in audio_uris)
    errors = read_errors(out).to_pylist()
    assert [(e["id"], e["modality"], e["stage"], e["uri"]) for e in errors] == [("junk", "image", "decode", "junk.png")]
    assert summary["modalities"]["image"]["items"] == 12


# --- http(s) URLs ----------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    corpus = ""
    hits: dict[str, int] = {}

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        path = self.path
        self.hits[path] = self.hits.get(path, 0) + 1
        if path.startswith("/media/"):
            return self._send(200, open(os.path.join(self.corpus, path[len("/media/"):]), "rb").read())
        if path == "/flaky.png":  # two failures, then the image: retried
            if self.hits[path] <= 2:
                return self._send(503, b"busy")
            return self._send(200, open(os.path.join(self.corpus, "images/00000.png"), "rb").read())
        if path == "/moved.png":
            return self._send(302, b"", {"Location": "/media/images/00002.png"})
        if path == "/loop.png":
            return self._send(302, b"", {"Location": "/loop.png"})
        if path == "/big.png":
            return self._send(200, b"\0" * 300_000)
        if path == "/forbidden.png":
            return self._send(403, b"no")
        return self._send(404, b"not here")

    def _send(self, status, body, headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def web(sample_corpus):
    _Handler.corpus, _Handler.hits = os.path.dirname(sample_corpus), {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Handler.hits
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_url_manifest_is_fetched_with_limits_retries_and_per_row_errors(ray_session, reference, sample_corpus, web, tmp_path):
    base, hits = web
    with open(sample_corpus) as fh:
        rows = [json.loads(line) for line in fh][:4]
    manifest = [{"id": r["id"], "image": f"{base}/media/{r['image']}", "audio": f"{base}/media/{r['audio']}"} for r in rows]
    manifest += [{"id": "flaky", "image": f"{base}/flaky.png"}, {"id": "moved", "image": f"{base}/moved.png"},
                 {"id": "loop", "image": f"{base}/loop.png"}, {"id": "big", "image": f"{base}/big.png"},
                 {"id": "gone", "image": f"{base}/gone.png"}, {"id": "forbidden", "image": f"{base}/forbidden.png"}]
    path = tmp_path / "urls.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in manifest))
    out = str(tmp_path / "out")
    summary = run_embed(EmbedConfig(input=str(path), output=out, shard_size=4, limits={"max_file_bytes": 200_000},
                                    http={"allow_private_addresses": True, "backoff_s": 0.05, "max_redirects": 3}))
    got = {m: vectors(out, m) for m in ("image", "audio")}
    for r in rows:
        for m in ("image", "audio"):
            np.testing.assert_allclose(got[m][r["id"]], reference[m][r["id"]], atol=2e-3)
    np.testing.assert_allclose(got["image"]["flaky"], reference["image"]["s00000"], atol=2e-3)
    np.testing.assert_allclose(got["image"]["moved"], reference["image"]["s00002"], atol=2e-3)
    assert hits["/flaky.png"] == 3 and hits["/gone.png"] == 1 and hits["/loop.png"] == 4
    errors = {e["id"]: (e["stage"], e["error"]) for e in read_errors(out).to_pylist()}
    assert errors["loop"] == ("read", f"image: cannot fetch {base}/loop.png: more than http.max_redirects=3 redirects")
    assert errors["big"][0] == "read" and "300000 bytes, over the limit of 200000 bytes per item" in errors["big"][1]
    assert errors["gone"] == ("read", f"image: cannot fetch {base}/gone.png: HTTP 404 Not Found")
    assert errors["forbidden"] == ("read", f"image: cannot fetch {base}/forbidden.png: HTTP 403 Forbidden")
    assert len(errors) == 4 and summary["modalities"]["image"]["complete"]


def test_fetch_refuses_private_addresses_and_other_hosts_by_default(web):
    base, hits = web
    defaults = HttpConfig().model_dump()
    before = dict(hits)
    with pytest.raises(ReadError, match=r"resolves to 127\.0\.0\.1, not a public address.*http\.allow_private_addresses"):
        fetch(f"{base}/media/images/00000.png", defaults, 1 << 20)
    with pytest.raises(ReadError, match=r"resolves to 169\.254\.169\.254"):  # cloud metadata: no request is made
        fetch("http://169.254.169.254/latest/meta-data/", defaults, 1 << 20)
    with pytest.raises(ReadError, match="localhost:80 is not on the allow-list"):
        fetch("http://localhost/x.png", HttpConfig(allow_hosts=["images.example.org"]).model_dump(), 1 << 20)
    with pytest.raises(ReadError, match=r"expected an http\(s\) URL"):
        fetch("gopher://127.0.0.1/x", defaults, 1 << 20)
    assert hits == before  # refused before any connection
    allowed = {**defaults, "allow_private_addresses": True}
    assert fetch(f"{base}/media/images/00000.png", allowed, 1 << 20)[:4] == b"\x89PNG"
    with pytest.raises(ReadError, match=r"cannot fetch http://127\.0\.0\.1:9/x\.png: .*Connection.*after 2 attempts"):
        fetch("http://127.0.0.1:9/x.png", {**allowed, "retries": 1, "backoff_s": 0, "timeout_s": 2}, 1 << 20)
