"""Metadata columns from the manifest: read for a segment's ids, kept as text, filtered by /v1/search's `where`."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError
from pipeline.index.metadata import check_columns, read_metadata, where_mask
from serving.app import _where
from serving.inputs import APIError

ROWS = [{"id": " a1 ", "split": "test", "year": 2024, "ok": True},
        {"id": "a2", "split": "train", "year": 2023},
        {"id": 7, "split": "train", "year": 2024, "ok": False}]


def _manifests(folder) -> dict[str, str]:
    jsonl = folder / "m.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    csv = folder / "m.csv"
    csv.write_text("id,split,year,ok\n a1 ,test,2024,true\na2,train,2023,\n7,train,2024,false\n")
    parquet = folder / "m.parquet"
    pq.write_table(pa.table({"id": ["a1", "a2", "7"], "split": ["test", "train", "train"], "year": [2024, 2023, 2024],
                             "ok": [True, None, False]}), parquet)
    return {"jsonl": str(jsonl), "csv": str(csv), "parquet": str(parquet)}


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_metadata_is_read_for_the_asked_ids_as_text(tmp_path, kind):
    uri = _manifests(tmp_path)[kind]
    table = read_metadata(uri, ["split", "year", "ok"], pa.array(["7", "a1", "gone"]), {})
    rows = table.to_pylist()
    assert rows[:2] == [{"split": "train", "year": "2024", "ok": "false"}, {"split": "test", "year": "2024", "ok": "true"}]
    assert rows[2] == {"split": None, "year": None, "ok": None}  # an id the manifest lacks: nothing matches it
    assert read_metadata(uri, ["ok"], pa.array(["a2"]), {}).column("ok").to_pylist() == [None]  # no value: null


def test_columns_are_checked_against_the_manifest_before_any_work(tmp_path):
    uris = _manifests(tmp_path)
    for uri in uris.values():
        check_columns(uri, ["split", "year"], {})
        with pytest.raises(ConfigError, match="has no column 'colour' .*its columns: id, split, year, ok"):
            check_columns(uri, ["split", "colour"], {})
    with pytest.raises(ConfigError, match="'id' is always kept"):
        check_columns(uris["csv"], ["id"], {})
    with pytest.raises(ConfigError, match="webdataset"):
        check_columns(str(tmp_path / "shard-{000..009}.tar"), ["split"], {})


def test_where_keeps_rows_holding_one_of_the_values_of_every_column():
    ids = pa.table({"id": ["a", "b", "c", "d"], "uri": pa.nulls(4, pa.string()),
                    "split": ["test", "train", None, "test"], "year": ["2024", "2024", "2024", "2023"]})
    assert where_mask(ids, {}) is None
    assert where_mask(ids, {"split": ["test"]}).tolist() == [True, False, False, True]
    assert where_mask(ids, {"split": ["test", "train"], "year": ["2024"]}).tolist() == [True, True, False, False]
    assert where_mask(ids, {"colour": ["red"]}).tolist() == [False] * 4  # a column the segment lacks: no row


def test_the_requests_where_is_checked_and_compared_as_text():
    assert _where(None, ["split"]) is None
    assert _where({"split": "test", "year": [2024, "2023"], "ok": True}, ["split", "year", "ok"]) == {
        "split": ["test"], "year": ["2024", "2023"], "ok": ["true"]}
    bad = [({"split": "x"}, [], "keeps no metadata columns"), ("split=x", ["split"], "expected an object"),
           ({}, ["split"], "expected an object"), ({"colour": "red"}, ["split"], "it keeps split"),
           ({"split": []}, ["split"], "a list of 1 to 100"), ({"split": {"a": 1}}, ["split"], "a string, number"),
           ({"split": [None]}, ["split"], "a string, number"), ({"split": list(map(str, range(101)))}, ["split"], "1 to 100"),
           ({"split": "x" * 257}, ["split"], "at most 256")]
    for where, columns, message in bad:
        with pytest.raises(APIError) as e:
            _where(where, columns)
        assert e.value.status == 400 and e.value.param == "where" and message in e.value.message, (where, e.value.message)
    assert np.array_equal(where_mask(pa.table({"id": ["a"], "k": ["1"]}), _where({"k": 1}, ["k"])), [True])


def test_a_segment_keeps_its_last_filters_rows_and_answers_them_alike():
    """The rows a filter keeps are computed once per segment (reading every id) and reused: the same filter, in any
    column order, answers from the kept rows; the oldest of more than MASKS_KEPT filters is dropped."""
    from pipeline.index.segments import MASKS_KEPT, Segment

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    ids = pa.table({"id": [f"{'ab'[i % 2]}{i:03d}" for i in range(40)], "uri": pa.nulls(40, pa.string()),
                    "split": ["test" if i % 4 == 0 else "train" for i in range(40)],
                    "year": [str(2020 + i % 3) for i in range(40)]})
    seg = Segment("image", "s", vectors, ids)
    q = vectors[0]
    first = seg.search(q, 5, where={"split": ["train"], "year": ["2021", "2022"]}, id_prefix="b")
    assert len(seg._masks) == 1
    again = seg.search(q, 5, where={"year": ["2021", "2022"], "split": ["train"]}, id_prefix="b")
    assert len(seg._masks) == 1 and [list(a) for a in first] == [list(b) for b in again]
    kept = [i for i in range(40) if i % 2 and i % 4 and i % 3 in (1, 2)]
    assert sorted(first[1]) == sorted(sorted(kept, key=lambda i: -(vectors[i] @ q))[:5])
    for i in range(MASKS_KEPT):
        seg.search(q, 5, id_prefix=f"a{i:02d}")
    assert len(seg._masks) == MASKS_KEPT and ("b", (("split", ("train",)), ("year", ("2021", "2022")))) not in seg._masks
    assert seg.search(q, 5)[1].tolist() == np.argsort(-(vectors @ q))[:5].tolist() and len(seg._masks) == MASKS_KEPT
