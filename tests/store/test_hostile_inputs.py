"""The embed job's inputs as an attacker writes them: tar shards and Parquet manifests of a few kilobytes that
claim gigabytes, loop, lie about their contents or change under the job. Each ends as a named error (planning)
or an error row, within a time and memory bound. (Planning and reads run in-process here, without Ray: the job
runs the same functions in its tasks.)"""
from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.store.errors import ManifestError
from pipeline.store.manifest import plan_manifest, read_chunk
from pipeline.store.tar_headers import interpreter_note, tarfile_is_affected
from tests.settings import ROOT
from tests.tar_factory import archive, gnu_sparse, header, member, negative_size, pax


def _write(path, data: bytes) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
    return str(path)


def _rows(plan, max_bytes: int = 200 << 20) -> pa.Table:
    return pa.concat_tables([read_chunk(plan, c, {}, max_bytes) for c in plan.chunks], promote_options="default")


def bounded(code: str, timeout: float = 60) -> dict:
    """Run ``code`` (which sets ``result``) in a fresh interpreter capped at 3 GB of address space; returns
    ``result`` with ``grew_mb``, how far the peak resident memory rose above what the imports took. (The peak is
    the kernel's VmHWM: ru_maxrss would carry the pytest process's own peak across exec.)"""
    script = (f"import json, resource, sys; sys.path.insert(0, {ROOT!r})\n"
              "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
              "def peak():\n"
              "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
              "import pipeline.store.manifest, pyarrow.parquet\n"
              "base = peak()\nresult = {}\n"
              f"{code}\n"
              "result['grew_mb'] = (peak() - base) / 1024\n"
              "print(json.dumps(result))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- tar shards ----------------------------------------------------------------------------------------

def test_a_negative_member_size_is_refused_at_planning_not_looped_on(tmp_path):
    """CVE-2025-8194: 3.11.7's tarfile walks back onto the same header forever (memory growing ~8 MB/s)."""
    path = _write(tmp_path / "loop.tar", archive(member("a.txt", b"caption"), negative_size()))
    started = time.monotonic()
    with pytest.raises(ManifestError, match=r"loop\.tar is not a valid tar: negative size in the header at byte 1024"):
        plan_manifest(path, {}, shard_size=4)
    assert time.monotonic() - started < 5


def test_the_interpreter_s_tarfile_is_probed_and_named_when_affected():
    data = archive(member("a.txt", b"x"), negative_size())
    tar = tarfile.open(fileobj=io.BytesIO(data))
    offsets = []
    for _ in range(4):  # an affected tarfile stays on the same offset; a fixed one raises
        try:
            tar.next()
        except tarfile.TarError:
            break
        offsets.append(tar.offset)
    loops = len(offsets) == 4 and len(set(offsets)) == 1
    assert tarfile_is_affected() == loops
    note = interpreter_note()
    assert (note is not None) == loops
    if loops:
        assert f"Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}" in note
        assert "CVE-2025-8194" in note and "own header parser" in note


def test_sparse_members_are_read_errors_never_expanded(tmp_path):
    """11 KB of GNU-sparse members declared at 1 GB each: a read error per item, never their declared size."""
    data = archive(member("s0.txt", b"a caption"), gnu_sparse("s0.png", 1 << 30, b"\x89PNG"),
                   pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s1.png",
                        "GNU.sparse.realsize": str(1 << 30)}), member("GNUSparseFile.0/s1.png", b"1\n0\n4\n\x89PNG"),
                   member("s1.txt", b"another"))
    path = _write(tmp_path / "sparse.tar", data)
    result = bounded(f"""
from pipeline.store.manifest import plan_manifest, read_chunk
plan = plan_manifest({path!r}, {{}}, shard_size=4)
table = read_chunk(plan, plan.chunks[0], {{}}, 200 << 20)
result.update(ids=table.column("id").to_pylist(), errors=table.column("image:error").to_pylist(),
              held=[b is not None for b in table.column("image:bytes").to_pylist()])
""")
    assert result["ids"] == ["s0", "s1"] and result["held"] == [False, False]
    assert all("is a sparse file: sparse members are not read" in e for e in result["errors"])
    assert result["grew_mb"] < 100, result


def test_member_sizes_past_the_end_gzip_and_garbage_are_named(tmp_path):
    big = _write(tmp_path / "big.tar", archive(header("huge.png", 10 << 30)))
    with pytest.raises(ManifestError, match=r"big\.tar is not a valid tar: member at byte 0 claims 10737418240 bytes"):
        plan_manifest(big, {}, shard_size=4)
    packed = _write(tmp_path / "packed.tar", gzip.compress(archive(member("a.txt", b"x"))))
    with pytest.raises(ManifestError, match=r"packed\.tar is not a valid tar: is gzip-compressed: expected an "
                                            "uncompressed tar"):
        plan_manifest(packed, {}, shard_size=4)


def test_a_member_name_that_is_not_utf8_names_its_shard(ray_session, tmp_path, capsys):  # the job joins the session's Ray
    from jobs.cli import main

    path = _write(tmp_path / "latin.tar", archive(member(b"caf\xe9.txt", b"x")))
    code = main(["embed", "--input", path, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "latin.tar is not a valid tar: member name b'caf\\xe9.txt' at byte 0 is not UTF-8" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", [".txt", "a/.txt", " .txt", " padded.txt", "line\nbreak.txt", "tab\there.txt"])
def test_blank_and_control_character_keys_are_refused_like_manifest_ids(tmp_path, name):
    path = _write(tmp_path / "keys.tar", archive(member("ok.txt", b"x"), member(name, b"y")))
    with pytest.raises(ManifestError, match=r"keys\.tar: member .* gives the sample key .*expected a non-empty key"):
        plan_manifest(path, {}, shard_size=4)


def test_manifest_ids_with_control_characters_are_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "a\nb", "text": "x"}) + "\n" + json.dumps({"id": "c", "text": "y"}) + "\n")
    with pytest.raises(ManifestError, match=r"row 1: 'a\\nb'"):
        plan_manifest(str(path), {}, shard_size=4)


def test_duplicate_keys_are_named_from_the_headers_without_reading_the_members(tmp_path):
    """The duplicate-id check reads ids again: a tar's keys, never its media (5 KB of tar once made the driver
    read every shard whole; on S3 that downloads the corpus)."""
    import tracemalloc

    payload = bytes(32 << 20)
    for name in ("a", "b"):
        with tarfile.open(tmp_path / f"{name}.tar", "w") as tar:
            info = tarfile.TarInfo("same.png")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    tracemalloc.start()
    try:
        with pytest.raises(ManifestError, match=r"1 duplicate id\(s\), ids must be unique: 'same'"):
            plan_manifest(str(tmp_path), {}, shard_size=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"planning held {peak} bytes"


def _empty_members(n: int) -> bytes:
    return archive(*(header(f"{i:07d}.txt") for i in range(n)))


def test_indexing_a_shard_is_linear_in_its_samples(tmp_path):
    """A default list rebuilt per sample made indexing quadratic (200k empty members: 238 s)."""
    from pipeline.store.webdataset import index_shard, read_shard

    small, large = 5_000, 50_000
    seconds = {}
    for n in (small, large):
        path = _write(tmp_path / f"{n}.tar", _empty_members(n))
        started = time.perf_counter()
        assert len(index_shard(path, {})["keys"]) == n
        assert read_shard(path, {}, 0, 1 << 20)[0].num_rows == n
        seconds[n] = time.perf_counter() - started
    per_sample = {n: s / n for n, s in seconds.items()}
    assert per_sample[large] < 3 * per_sample[small], per_sample


def test_a_shard_rewritten_with_the_same_keys_fails_the_job_by_name(tmp_path):
    path = tmp_path / "s.tar"
    _write(path, archive(member("k.txt", b"before"), member("k.png", b"\x89PNG one")))
    plan = plan_manifest(str(path), {}, shard_size=4)
    _write(path, archive(member("k.txt", b"AFTER!"), member("k.png", b"\x89PNG two")))  # same names and sizes
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(ManifestError, match=r"changed while the job ran: shard \S*s\.tar was rewritten since it "
                                            r"was planned"):
        read_chunk(plan, plan.chunks[0], {}, 1 << 20)


def _sidecar(path, keys, status="success", **columns):
    table = pa.table({"key": pa.array(keys).dictionary_encode(),
                      "status": pa.array([status] * len(keys)).dictionary_encode(), **columns})
    pq.write_table(table, path, compression="zstd")


def test_a_sidecar_listing_more_samples_than_its_tar_can_hold_is_refused_before_its_keys_are_read(tmp_path):
    for shard in ("00000", "00001"):
        _write(tmp_path / f"{shard}.tar", archive(member(f"{shard}0.jpg", b"\xff\xd8"), member(f"{shard}0.txt", b"c")))
        _sidecar(tmp_path / f"{shard}.parquet", [f"{shard}0"], caption=["c"])
    _sidecar(tmp_path / "00001.parquet", ["000010"] * 3_000_000, caption=pa.array(["c"] * 3_000_000).dictionary_encode())
    assert os.path.getsize(tmp_path / "00001.parquet") < 100_000
    result = bounded(f"""
from pipeline.store.errors import ManifestError
from pipeline.store.manifest import plan_manifest
try:
    plan_manifest({str(tmp_path)!r}, {{}}, shard_size=4)
except ManifestError as e:
    result["error"] = str(e)
""")
    assert "00001.parquet lists 3000000 downloaded samples, but" in result["error"]
    assert "00001.tar (3072 bytes) can hold at most 3" in result["error"] and "tar_index: headers" in result["error"]
    assert result["grew_mb"] < 150, result


# --- Parquet manifests ----------------------------------------------------------------------------------

def _dictionary_bomb(path, value: bytes, rows: int = 64, arrow_dictionary: bool = True) -> str:
    """``rows`` rows naming one ``value``: an Arrow dictionary column (as pandas writes a category), or a plain
    binary column that Parquet's writer dictionary-encodes by itself (the file a reader expands unasked)."""
    media = (pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([value], pa.binary()))
             if arrow_dictionary else pa.array([value] * rows, pa.binary()))
    table = pa.table({"id": [f"r{i}" for i in range(rows)], "image": media, "text": ["a caption"] * rows})
    pq.write_table(table, path, compression="zstd")
    return str(path)


@pytest.mark.parametrize("arrow_dictionary", [True, False])
def test_planning_a_parquet_manifest_never_expands_its_media(tmp_path, arrow_dictionary):
    """A 1.1 KB file of 64 rows naming one 8 MB value (dictionary encoding) took the driver to 1.45 GB."""
    path = _dictionary_bomb(tmp_path / "bomb.parquet", bytes(8 << 20), arrow_dictionary=arrow_dictionary)
    assert os.path.getsize(path) < 4096
    result = bounded(f"""
from pipeline.store.manifest import plan_manifest
plan = plan_manifest({path!r}, {{}}, shard_size=16)
result.update(rows=plan.rows, counts=plan.counts.tolist(), chunks=len(plan.chunks))
""")
    assert result["rows"] == 64 and result["counts"] == [[16, 16]] * 4
    assert result["grew_mb"] < 100, result


def test_reading_a_parquet_manifest_bounds_each_read_by_real_sizes(tmp_path):
    """Chunks are cut by the bytes rows hold once expanded (not the footer's claim), and a value over
    max_file_bytes is never copied out of its dictionary: that row's read error."""
    path = _dictionary_bomb(tmp_path / "bomb.parquet", bytes(8 << 20))
    result = bounded(f"""
from pipeline.store.manifest import plan_manifest, read_chunk
plan = plan_manifest({path!r}, {{}}, shard_size=16)
result["chunks"] = [c.rows for c in plan.chunks]
table = read_chunk(plan, plan.chunks[0], {{}}, 4 << 20)
result["errors"] = table.column("image:error").to_pylist()
result["held"] = sum(b is not None for b in table.column("image:bytes").to_pylist())
""")
    assert sum(result["chunks"]) == 64 and max(result["chunks"]) <= 32  # 256 MB of rows at most per read
    assert result["held"] == 0 and all("8388608 bytes, over limits.max_file_bytes=4194304" in e for e in result["errors"])
    assert result["grew_mb"] < 200, result  # 32 rows expanded: 256 MB


def test_a_pandas_categorical_manifest_reads_its_values(tmp_path, sample_corpus):
    """pandas writes category columns as dictionaries: their values are the strings, not a type error."""
    with open(sample_corpus) as fh:
        rows = [json.loads(line) for line in fh][:4]
    folder = os.path.dirname(sample_corpus)
    table = pa.table({"id": pa.array([r["id"] for r in rows]).dictionary_encode(),
                      "image": pa.array([os.path.join(folder, r["image"]) for r in rows]).dictionary_encode(),
                      "text": pa.array([r["text"] for r in rows]).dictionary_encode()})
    path = str(tmp_path / "categorical.parquet")
    pq.write_table(table, path)
    plan = plan_manifest(path, {}, shard_size=4)
    got = _rows(plan)
    assert got.column("id").to_pylist() == [r["id"] for r in rows]
    assert got.column("image").to_pylist() == [os.path.join(folder, r["image"]) for r in rows]
    assert got.column("image:error").null_count == 4 and got.column("text").to_pylist() == [r["text"] for r in rows]
