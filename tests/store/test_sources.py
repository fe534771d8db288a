"""Manifests (JSONL, CSV, Parquet) and URI resolution."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import StorageConfig
from pipeline.embed.stages import work_rows
from pipeline.modality import Modality
from pipeline.store.errors import ManifestError
from pipeline.store.manifest import plan_manifest, read_chunk
from pipeline.store.rows import item_mask
from pipeline.store.sources import resolve_uri, storage_options


def read_manifest(path, shard_size=1, chunk_rows=100_000):
    """The plan and every chunk's normalized rows."""
    plan = plan_manifest(path, {}, shard_size, chunk_rows)
    return plan, pa.concat_tables([read_chunk(plan, c, {}) for c in plan.chunks])


def jsonl(tmp_path, rows, name="m.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_csv_parquet_read_the_same(tmp_path):
    rows = [{"id": "a", "image": "x.png", "text": "a red circle"}, {"id": "b", "text": "hi"}]
    m1 = read_manifest(jsonl(tmp_path, rows))
    (tmp_path / "m.csv").write_text("id,image,text\na,x.png,a red circle\nb,,hi\n")
    m2 = read_manifest(str(tmp_path / "m.csv"))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    m3 = read_manifest(str(tmp_path / "m.parquet"))
    for plan, table in (m1, m2, m3):
        assert table.column("id").to_pylist() == ["a", "b"]
        assert table.column("image").to_pylist() == ["x.png", None]
        assert table.column("text").to_pylist() == ["a red circle", "hi"]
        assert plan.base == str(tmp_path)
        assert plan.counts.tolist() == [[1, 1], [0, 1]]  # items per shard (1 row each) of image, text


def test_duplicate_ids_are_named(tmp_path):
    path = jsonl(tmp_path, [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}])
    with pytest.raises(ManifestError, match="1 duplicate id.*'a'"):
        read_manifest(path)


def test_missing_ids_and_columns(tmp_path):
    with pytest.raises(ManifestError, match="row 2: None"):
        read_manifest(jsonl(tmp_path, [{"id": "a", "text": "x"}, {"text": "y"}]))
    with pytest.raises(ManifestError, match="no 'id' column"):
        read_manifest(jsonl(tmp_path, [{"text": "x"}]))
    with pytest.raises(ManifestError, match="no modality column"):
        read_manifest(jsonl(tmp_path, [{"id": "x", "label": 3}]))
    with pytest.raises(ManifestError, match="has no rows"):
        read_manifest(jsonl(tmp_path, []))


def test_non_utf8_and_bad_json_lines_are_located(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n{"id": "c", oops}\n[1]\n')
    with pytest.raises(ManifestError) as info:
        read_manifest(str(path))
    msg = str(info.value)
    assert "3 bad line(s)" in msg
    assert "line 2: not valid UTF-8 (byte 0xe9" in msg
    assert "line 3: not valid JSON" in msg
    assert "line 4: expected a JSON object, got list" in msg
    csv_path = tmp_path / "m.csv"
    csv_path.write_bytes(b"id,text\na,ok\nb,caf\xe9\n")
    with pytest.raises(ManifestError, match=r"not valid UTF-8 \(byte 0xe9 on line 3\)"):
        read_manifest(str(csv_path))


def test_a_line_without_end_is_refused_not_read_whole(tmp_path, monkeypatch):
    import pipeline.store.manifest as manifest

    monkeypatch.setattr(manifest, "PIECE_BYTES", 64)
    monkeypatch.setattr(manifest, "MAX_LINE_BYTES", 256)
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "text": "' + "x" * 1000 + '"}\n')
    with pytest.raises(ManifestError, match="line 2 is longer than 256 bytes: expected one sample per line"):
        read_manifest(str(path))
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("id," + "x" * 300 + "\na,b\n")
    with pytest.raises(ManifestError, match="line 1 is longer than 256 bytes"):
        read_manifest(str(csv_path))
    path.write_text('{"id": "a", "text": "' + "x" * 200 + '"}\n')  # under the limit, over a piece: read
    assert read_manifest(str(path))[1].column("id").to_pylist() == ["a"]


def test_unknown_format_and_missing_manifest(tmp_path):
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestError, match="unknown format"):
        read_manifest(str(tmp_path / "m.txt"))
    with pytest.raises(ManifestError, match="file not found"):
        read_manifest(str(tmp_path / "nope.jsonl"))


def test_resolve_uri():
    assert resolve_uri("img/a.png", "/data/set") == "/data/set/img/a.png"
    assert resolve_uri("../b.png", "/data/set") == "/data/b.png"
    assert resolve_uri("/abs/c.png", "/data") == "/abs/c.png"
    assert resolve_uri("img/a.png", "s3://bucket/set") == "s3://bucket/set/img/a.png"
    assert resolve_uri("s3://other/x.wav", "/data") == "s3://other/x.wav"
    with pytest.raises(ValueError, match=r"unsupported URI scheme 'https'.*only with http.enabled: true"):
        resolve_uri("https://example.com/x.png", "/data")
    assert resolve_uri(" https://example.com/x.png", "/data", http=True) == "https://example.com/x.png"
    with pytest.raises(ValueError, match="unsupported URI scheme 'ftp'.*expected a local path, file://, s3://, http"):
        resolve_uri("ftp://example.com/x.png", "/data", http=True)


def test_items_flag_wrong_types_and_keep_every_value(tmp_path):
    path = jsonl(tmp_path, [{"id": 1, "image": 5}, {"id": "b", "image": "http://h/x.png"}, {"id": "c", "image": "ok.png"},
                            {"id": "d", "text": "no image"}, {"id": "e", "image": ""}])
    plan, table = read_manifest(path, shard_size=2)
    image = Modality("image")
    work = work_rows(table.filter(pa.array(item_mask(table, image))), image, plan.base, dedupe=True).to_pylist()
    assert [w["ids"] for w in work] == [["1"], ["b"], ["c"]]
    assert work[0]["pre_error"] == "expected a URI string, got int '5'"
    assert "unsupported URI scheme 'http'" in work[1]["pre_error"]  # http off in this call (the job's http.enabled)
    assert work[2]["pre_error"] is None and work[2]["uris"] == [str(tmp_path / "ok.png")]
    assert [w["rows"] for w in work] == [[0], [1], [2]]
    assert plan.counts.tolist() == [[2, 0], [1, 1], [0, 0]]  # image, text per shard of 2 rows; "e" has no image


def test_storage_options_take_the_endpoint_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert storage_options(StorageConfig())["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9"
    explicit = storage_options(StorageConfig(endpoint_url="http://127.0.0.1:5", region="eu-west-1"))
    assert explicit["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:5", "region_name": "eu-west-1"}


def test_pairs_join_leaves_out_rows_missing_a_modality_and_splits_by_id():
    import numpy as np

    from pipeline.store.pairs import is_validation, join, split

    feats = {"image": {"a": np.zeros((1, 2)), "b": np.ones((1, 2)), "c": np.ones((1, 2))},
             "text": {"b": np.ones((1, 2)), "c": np.zeros((1, 2)), "d": np.ones((1, 2))}}
    ids, arrays = join(feats, ["image", "text"])
    assert ids == ["b", "c"] and arrays["image"].shape == (2, 1, 2)
    with pytest.raises(ValueError, match="no id has features for all of image, audio"):
        join({"image": feats["image"], "audio": {"z": np.zeros((1, 2))}}, ["image", "audio"])
    many = [f"id{i}" for i in range(1000)]
    share = sum(is_validation(i, 0.2) for i in many) / 1000
    assert 0.15 < share < 0.25
    # the split is a function of the id and the seed alone, the same in every process and run: these ids are held out
    assert [i for i in many[:40] if is_validation(i, 0.2)] == ["id13", "id15", "id24", "id36", "id39"]
    assert [i for i in many[:40] if is_validation(i, 0.2, seed=1)] == ["id8", "id12", "id13", "id37"]
    (train_ids, _), (val_ids, _) = split(many, {"x": np.zeros((1000, 1))}, 0.2, seed=0)
    assert not set(train_ids) & set(val_ids) and len(train_ids) + len(val_ids) == 1000
    assert [i for i in val_ids if i in many[:40]] == ["id13", "id15", "id24", "id36", "id39"]
    (_, _), (reversed_val, _) = split(many[::-1], {"x": np.zeros((1000, 1))}, 0.2, seed=0)  # whatever the row order
    assert sorted(reversed_val) == sorted(val_ids)


def test_relative_s3_uris_resolve_like_local_paths():
    from pipeline.store.sources import resolve_uri

    assert resolve_uri("../img/x.png", "s3://bucket/data/set") == "s3://bucket/data/img/x.png"
    assert resolve_uri("../img/x.png", "/data/set") == "/data/img/x.png"
    with pytest.raises(ValueError, match="resolves above the bucket"):
        resolve_uri("../../x.png", "s3://bucket/data")
