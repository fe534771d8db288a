"""S3 round trip against a local S3-compatible HTTP server (moto in server mode): manifest, media
and output on S3, endpoint from the standard AWS_ENDPOINT_URL variable."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.config import StorageConfig
from pipeline.store.errors import ManifestError
from pipeline.store.features import embeddings, read_errors, read_features
from pipeline.store.manifest import plan_manifest
from pipeline.store.sources import storage_options


def test_s3_manifest_media_and_output(s3_endpoint, s3_corpus, s3_run1):
    proc = s3_run1
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "s3://features/run1/summary.json" in proc.stdout
    opts = storage_options(StorageConfig(endpoint_url=s3_endpoint))
    for modality in ("image", "audio"):
        table = read_features("s3://features/run1", modality, opts)
        assert sorted(table.column("id").to_pylist()) == [f"s{i:05d}" for i in range(12)]
        assert embeddings(table).shape == (12, 1, 32)
        assert all(u.startswith("s3://media/corpus/") for u in table.column("uri").to_pylist())
    errors = read_errors("s3://features/run1", opts).to_pylist()
    assert sorted((e["id"], e["modality"], e["stage"]) for e in errors) == [("gone", "audio", "read"), ("gone", "image", "read")]
    assert all("file not found: s3://media/" in e["error"] for e in errors)
    summary = json.loads(s3_corpus.cat_file("features/run1/summary.json"))
    assert summary["modalities"]["image"]["complete"] and summary["modalities"]["audio"]["features"] == 12
    assert not s3_corpus.glob("features/run1/**/.tmp-*")


def test_unreachable_endpoint_is_named():
    opts = storage_options(StorageConfig(endpoint_url="http://127.0.0.1:9"))
    opts["config_kwargs"] = {"connect_timeout": 1, "retries": {"max_attempts": 1}}
    with pytest.raises(ManifestError, match="cannot reach the S3 endpoint"):
        plan_manifest("s3://bucket/manifest.jsonl", opts, shard_size=4)


@pytest.mark.slow
def test_webdataset_shards_on_s3_by_brace_pattern(ray_session, s3_endpoint, s3_corpus, sample_corpus, tmp_path):
    from tests.media_factory import write_webdataset

    for path in write_webdataset(sample_corpus, str(tmp_path / "wds"), per_shard=5, modalities=("image", "text")):
        s3_corpus.put_file(path, f"media/wds/{os.path.basename(path)}")
    env = {**os.environ, "RAY_ADDRESS": ray_session, "AWS_ENDPOINT_URL": s3_endpoint}
    cmd = [sys.executable, "-m", "jobs.embed", "--input", "s3://media/wds/shard-{000000..000002}.tar",
           "--output", "s3://features/wds"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    opts = storage_options(StorageConfig(endpoint_url=s3_endpoint))
    for modality in ("image", "text"):
        table = read_features("s3://features/wds", modality, opts)
        assert sorted(table.column("id").to_pylist()) == [f"s{i:05d}" for i in range(12)]
    uris = read_features("s3://features/wds", "image", opts).column("uri").to_pylist()
    assert "s3://media/wds/shard-000002.tar#s00010.png" in uris
    assert read_errors("s3://features/wds", opts).num_rows == 0


def test_img2dataset_shards_on_s3_are_planned_from_their_parquet(s3_endpoint, s3_corpus, sample_corpus, tmp_path):
    from tests.media_factory import write_img2dataset

    for path in write_img2dataset(sample_corpus, str(tmp_path)):
        for local in (path, path[:-4] + ".parquet"):
            s3_corpus.put_file(local, f"media/i2d/{os.path.basename(local)}")
    opts = storage_options(StorageConfig(endpoint_url=s3_endpoint))
    plan = plan_manifest("s3://media/i2d/", opts, shard_size=4)
    headers = plan_manifest("s3://media/i2d/", opts, shard_size=4, tar_index="headers")
    assert plan.sidecars and plan.sources == headers.sources == [f"s3://media/i2d/{s:05d}.tar" for s in range(3)]
    assert plan.rows == 9 and [c.digest for c in plan.chunks] == [c.digest for c in headers.chunks]


def test_markers_on_s3_are_listed_to_resume_and_read_together_for_the_summary(s3_endpoint, s3_corpus, monkeypatch):
    from pipeline.store.features import FeatureStore

    opts = storage_options(StorageConfig(endpoint_url=s3_endpoint))
    store = FeatureStore("s3://features/markers", opts)
    for shard in range(0, 300, 3):
        store.write_marker("image", shard, {"features": shard, "dim": 8, "unique": shard, "errors": {}})
    store.write_bytes_atomic("_progress/image/notes.txt", b"not a marker")
    markers = store.committed_shards("image")
    assert list(markers) == list(range(0, 300, 3)) and all(m["features"] == s for s, m in markers.items())

    def no_reads(*args, **kwargs):
        raise AssertionError("a marker was read")

    monkeypatch.setattr(store.fs, "cat_file", no_reads)
    monkeypatch.setattr(store.fs, "cat", no_reads)
    monkeypatch.setattr(store.fs, "open", no_reads)
    assert store.committed_indexes("image") == list(range(0, 300, 3))  # what a resume needs: a listing


def test_a_shard_commits_from_ranged_reads_of_part_files_on_s3_and_parts_are_deleted(s3_endpoint, s3_corpus):
    """Part files on S3: a shard's commit reads only its pieces (ranged GETs of two calls' parts), and the
    driver's delete of finished parts is one request that tolerates a part already gone."""
    import numpy as np
    import pyarrow as pa

    from pipeline.store.features import FeatureStore
    from pipeline.store.parts import commit_parts, pack_pieces, part_schema

    opts = storage_options(StorageConfig(endpoint_url=s3_endpoint))
    store = FeatureStore("s3://features/pieces", opts)
    schema = part_schema(1, 2, "float32")

    def rows(numbers):
        n = len(numbers)
        return pa.Table.from_arrays([
            pa.array([f"x{r}" for r in numbers]), pa.nulls(n, pa.string()), pa.array(numbers, pa.int64()),
            pa.array([True] * n), pa.array([True] * n), pa.nulls(n, pa.string()), pa.nulls(n, pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(np.array(numbers, np.float32), 2)), 2),
            pa.array([False] * n)], schema=schema)

    pieces = {}
    for call, shards in (("a", [[0, 1], [4]]), ("b", [[2, 3], [5, 6]])):  # shard 0: rows 0-3, shard 1: rows 4-7
        data, ranges = pack_pieces([rows(r) for r in shards])
        store.write_bytes_atomic(f"_parts/image/{call}.arrows", data)
        pieces[call] = [(f"_parts/image/{call}.arrows", offset, length) for offset, length in ranges]
    counts = commit_parts(store.root, opts, "image", 0, [pieces["a"][0], pieces["b"][0]], "enc", 1)
    assert counts["features"] == 4 and sum(counts["errors"].values()) == 0
    _, offset, length = pieces["b"][1]
    written = pa.ipc.open_stream(pa.py_buffer(s3_corpus.cat_file("features/pieces/_parts/image/b.arrows",
                                                                  start=offset, end=offset + length)))
    assert written.read_all().column("row").to_pylist() == [5, 6]  # the second piece: shard 1's rows

    import pyarrow.parquet as pq

    with s3_corpus.open("features/pieces/features/image/shard-00000.parquet", "rb") as fh:
        assert pq.read_table(fh).column("id").to_pylist() == ["x0", "x1", "x2", "x3"]

    s3_corpus.rm_file("features/pieces/_parts/image/a.arrows")  # gone already: not an error
    store.remove_files(["_parts/image/a.arrows", "_parts/image/b.arrows"])
    s3_corpus.invalidate_cache()
    assert not s3_corpus.exists("features/pieces/_parts/image/a.arrows")
    assert not s3_corpus.exists("features/pieces/_parts/image/b.arrows")
