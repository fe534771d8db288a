"""A feature store written by another tool, damaged or tampered with: every reader (training, `train --from`,
evaluation, the search index, the embed job's resume) refuses it with a StoreError (exit 2 from the CLI) naming
the file and what was expected, instead of a raw exception, a NaN in every weight, or a silently skipped modality.

The stores here are written directly (random vectors, no encoder): every check happens before any model runs."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.store.features import ERROR_SCHEMA, FeatureStore, StoreError, features_table, read_features

ROWS, DIMS = 8, {"image": 8, "text": 6}  # rows per shard (2 shards per modality), D per modality


def _table(modality: str, shard: int, values: np.ndarray, encoder: str | None = None) -> pa.Table:
    """Shard ``shard``'s feature rows: ``values`` (ROWS, K, D) float16, ids shared by the modalities."""
    k, dim = values.shape[1:]
    ids = [f"c{shard * ROWS + i:05d}" for i in range(len(values))]
    flat = pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float16).ravel()), k * dim)
    return features_table(ids, modality, [None] * len(ids), encoder or f"enc-{modality}", flat, k, dim)


def _vectors(modality: str, shard: int, k: int = 1, dim: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(shard + 10 * len(modality))
    return rng.normal(size=(ROWS, k, dim or DIMS[modality])).astype(np.float32)


@pytest.fixture
def store(tmp_path) -> str:
    """Two modalities of two committed shards each, as the embed job writes them."""
    root = str(tmp_path / "store")
    fs = FeatureStore(root, {})
    for modality in DIMS:
        fs.start_run(modality, {"items": 2 * ROWS, "encoder": f"enc-{modality}", "tokens": 1, "dtype": "float16"},
                     _encoder_record(modality))
        for shard in range(2):
            fs.commit_shard(modality, shard, _table(modality, shard, _vectors(modality, shard)),
                            ERROR_SCHEMA.empty_table(), DIMS[modality])
    return root


def _shard_path(root: str, modality: str, shard: int) -> str:
    return os.path.join(root, "features", modality, f"shard-{shard:05d}.parquet")


def _marker_path(root: str, modality: str, shard: int) -> str:
    return os.path.join(root, "_progress", modality, f"shard-{shard:05d}.json")


def _with_bad_rows(root: str, modality: str, shard: int, rows: dict[int, float]) -> None:
    values = _vectors(modality, shard)
    for row, value in rows.items():
        values[row, 0, row % values.shape[2]] = value
    pq.write_table(_table(modality, shard, values), _shard_path(root, modality, shard))


def _train(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`oneencoder train ARGV`: exit status and stderr. Ray is not started: the store is refused before any step."""
    from jobs import train as train_job

    monkeypatch.setattr("pipeline.runtime.init_ray", lambda: None)
    status = train_job.main(argv)
    return status, capsys.readouterr().err


# --- 1. non-finite vectors -----------------------------------------------------------------------

def test_a_nan_row_stops_training_naming_the_shard_and_the_id(store, tmp_path, monkeypatch, capsys):
    _with_bad_rows(store, "image", 1, {3: np.nan, 5: np.inf})
    output = str(tmp_path / "model")
    status, err = _train(["--features", store, "--output", output, "--stages", "image:text"], monkeypatch, capsys)
    assert status == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert (f"{_shard_path(store, 'image', 1)}: 2 rows hold non-finite embedding values (NaN or Inf), the first id "
            "'c00011'; expected finite values") in err, err
    assert not os.path.exists(os.path.join(output, "config.json"))


def _encoder_record(modality: str) -> dict:
    """A whole encoder record (pipeline.artifact.EncoderRecord) naming the store's encoder of ``modality``."""
    return {"modality": modality, "name": f"enc-{modality}", "source": f"enc-{modality}", "revision": None,
            "build": None, "encoder": {"tokens": 1, "dtype": "float16"}, "input": {}}


def _base_model(path: str) -> str:
    """A model artifact aligning image only (what `train --from` grows; its weights are never read here)."""
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump({"format": "oneencoder-artifact/1", "model": {"in_dims": {"image": 8}, "tokens": {"image": 1}}}, fh)
    with open(os.path.join(path, "encoders.json"), "w") as fh:
        json.dump({"image": _encoder_record("image")}, fh)
    open(os.path.join(path, "model.safetensors"), "wb").close()
    return path


@pytest.mark.parametrize("damage", ["nan-text-row", "encoder-json-not-json"])
def test_train_from_refuses_a_damaged_store(store, tmp_path, monkeypatch, capsys, damage):
    if damage == "nan-text-row":
        _with_bad_rows(store, "text", 0, {2: -np.inf})
        expected = (f"{_shard_path(store, 'text', 0)}: 1 rows hold non-finite embedding values (NaN or Inf), the first "
                    "id 'c00002'")
    else:
        with open(os.path.join(store, "_progress", "image", "encoder.json"), "w") as fh:
            fh.write('{"name": "enc-image", ')
        expected = f"{os.path.join(store, '_progress', 'image', 'encoder.json')}: not JSON"
    output = str(tmp_path / "grown")
    status, err = _train(["--from", _base_model(str(tmp_path / "base")), "--features", store, "--output", output,
                          "--stages", "text:image"], monkeypatch, capsys)
    assert status == 2 and expected in err, err
    assert not os.path.exists(os.path.join(output, "config.json"))


class _FakeModel:
    """What the search index and evaluation use of a model: its modalities, a projection (the first 4 values) and
    the share of ids training held out (calibration's sample)."""
    modalities, dim, held_out = ["image", "text"], 4, (0.2, 0)

    def project(self, features: np.ndarray, modality: str) -> np.ndarray:
        return features.reshape(len(features), -1)[:, :4].astype(np.float32)


def test_the_search_index_refuses_a_nan_row_at_start_up(store, monkeypatch):
    from serving.config import ServeArgs
    from serving.search import Searcher

    monkeypatch.setattr("pipeline.inference.load_model", lambda *a, **k: _FakeModel())

    def build(args):
        return Searcher(ServeArgs(**args))

    index = build({"model": "unused", "features": store})  # the clean store first: the index is built
    assert {m: sum(len(s) for s in segs) for m, segs in index.segments.items()} == {"image": 2 * ROWS, "text": 2 * ROWS}
    _with_bad_rows(store, "text", 1, {6: np.nan})
    with pytest.raises(StoreError, match=f"{_shard_path(store, 'text', 1)}: 1 rows hold non-finite embedding values "
                                         r"\(NaN or Inf\), the first id 'c00014'"):
        build({"model": "unused", "features": store})


def test_serve_refuses_a_damaged_store_before_ray_starts(store, tmp_path, monkeypatch, capsys):
    """`oneencoder serve --features`: a NaN row is named at once (exit 2), not a search replica failing to start
    while the command waits for /health."""
    from jobs.serve import main

    model = str(tmp_path / "model")
    os.makedirs(model)
    with open(os.path.join(model, "config.json"), "w") as fh:
        json.dump({"format": "oneencoder-artifact/1",
                   "model": {"d": 4, "in_dims": dict(DIMS), "tokens": {m: 1 for m in DIMS}}}, fh)
    with open(os.path.join(model, "encoders.json"), "w") as fh:
        json.dump({m: _encoder_record(m) for m in DIMS}, fh)
    open(os.path.join(model, "model.safetensors"), "wb").close()
    _with_bad_rows(store, "image", 0, {1: np.nan})
    monkeypatch.setattr("pipeline.runtime.init_ray", lambda: pytest.fail("Ray started for a store refused"))
    config = tmp_path / "serve.yaml"
    config.write_text("applications:\n- name: oneencoder\n  import_path: serving.app:build_app\n  args: {}\n")
    assert main(["--model", model, "--features", store, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{_shard_path(store, 'image', 0)}: 1 rows hold non-finite embedding values" in err and "Traceback" not in err


def test_evaluate_refuses_a_damaged_store_rather_than_skipping_the_modality(store, tmp_path, monkeypatch):
    """A ValueError from load_features means "no features of this modality" to evaluation: a damaged store is not
    that, and must not turn into a report without the modality."""
    from pipeline.eval import report

    monkeypatch.setattr(report, "load_model", lambda *a, **k: _FakeModel())
    with open(_marker_path(store, "image", 0), "w") as fh:
        fh.write("garbage")
    with pytest.raises(StoreError, match=f"{_marker_path(store, 'image', 0)}: not JSON"):
        report.evaluate(str(tmp_path / "model"), store, output=str(tmp_path / "eval"))


# --- 2. a tampered store -------------------------------------------------------------------------

def _rewrite_shard(root: str, shard: int, table: pa.Table) -> None:
    pq.write_table(table, _shard_path(root, "image", shard))


def _edit_json(path: str, change) -> None:
    with open(path) as fh:
        obj = json.load(fh)
    with open(path, "w") as fh:
        json.dump(change(obj), fh)


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _other_d(root: str) -> None:  # shard 1 of another D, its marker agreeing with it
    _rewrite_shard(root, 1, _table("image", 1, _vectors("image", 1, dim=16)))
    _edit_json(_marker_path(root, "image", 1), lambda m: {**m, "dim": 16})


TAMPERING = {  # name: (damage, file named, what the message must say was expected)
    "no-embedding-column": (lambda r: _rewrite_shard(r, 1, _table("image", 1, _vectors("image", 1)).drop_columns(
                                ["embedding"])),
                            "features/image/shard-00001.parquet",
                            "column 'embedding' is missing, expected arrow.fixed_shape_tensor of float16 or float32 "
                            "with shape [K, D]"),
    "embedding-as-lists": (lambda r: _rewrite_shard(r, 0, pa.table({
                               "id": [f"c{i:05d}" for i in range(ROWS)], "uri": pa.array([None] * ROWS, pa.string()),
                               "encoder": ["enc-image"] * ROWS, "embedding": [[0.5] * 8] * ROWS})),
                           "features/image/shard-00000.parquet",
                           "column 'embedding' is list<element: double>, expected arrow.fixed_shape_tensor"),
    "id-as-integers": (lambda r: _rewrite_shard(r, 0, _table("image", 0, _vectors("image", 0)).set_column(
                           0, "id", pa.array(range(ROWS), pa.int64()))),
                       "features/image/shard-00000.parquet", "column 'id' is int64, expected string"),
    "other-d-than-the-other-shards": (_other_d, "features/image/shard-00001.parquet",
                                      "D (embedding size) is 16, expected 8 as the first shard read, "),
    "other-d-than-its-marker": (lambda r: _edit_json(_marker_path(r, "image", 1), lambda m: {**m, "dim": 9}),
                                "features/image/shard-00001.parquet",
                                "D (embedding size) is 8, expected 9 as "),
    "other-k-than-the-run-record": (lambda r: _rewrite_shard(r, 0, _table("image", 0, _vectors("image", 0, k=2))),
                                    "features/image/shard-00000.parquet",
                                    "K (tokens per item) is 2, expected 1 as "),
    "marker-not-json": (lambda r: _write(_marker_path(r, "image", 1), "{\"features\": 8,"),
                        "_progress/image/shard-00001.json", "not JSON (JSONDecodeError"),
    "marker-an-array": (lambda r: _write(_marker_path(r, "image", 1), "[8, 0]"),
                        "_progress/image/shard-00001.json", "holds [8, 0], expected a JSON object"),
    "marker-without-counts": (lambda r: _edit_json(_marker_path(r, "image", 1), lambda m: {**m, "features": "all"}),
                              "_progress/image/shard-00001.json",
                              "'features' is \"all\", expected its number of feature rows (an integer >= 0)"),
    "marker-with-other-count": (lambda r: _edit_json(_marker_path(r, "image", 1), lambda m: {**m, "features": 9}),
                                "features/image/shard-00001.parquet", "8 rows, but its marker "),
    "shard-not-parquet": (lambda r: _write(_shard_path(r, "image", 1), "PAR1 but not really"),
                          "features/image/shard-00001.parquet", "not a readable Parquet file ("),
    "shard-file-missing": (lambda r: os.remove(_shard_path(r, "image", 0)),
                           "features/image/shard-00000.parquet", "missing, but its marker "),
    "encoder-json-other-name": (lambda r: _edit_json(os.path.join(r, "_progress", "image", "encoder.json"),
                                                     lambda e: {**e, "name": "google/vit-base-patch16-224@main"}),
                                "features/image/shard-00000.parquet",
                                "encoder is 'enc-image', expected 'google/vit-base-patch16-224@main' as "),
    "encoder-json-other-k": (lambda r: _edit_json(os.path.join(r, "_progress", "image", "encoder.json"),
                                                  lambda e: {**e, "encoder": {**e["encoder"], "tokens": 4}}),
                             "features/image/shard-00000.parquet",
                             "K (tokens per item) is 1, expected 4 as "),
    "encoder-json-other-dim": (lambda r: _edit_json(os.path.join(r, "_progress", "image", "encoder.json"),
                                                    lambda e: {**e, "dim": 768}),
                               "features/image/shard-00000.parquet", "D (embedding size) is 8, expected 768 as "),
    "encoder-json-not-json": (lambda r: _write(os.path.join(r, "_progress", "image", "encoder.json"), "\x00\x01"),
                              "_progress/image/encoder.json", "not JSON"),
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_a_tampered_store_is_refused_by_its_readers_naming_file_and_expectation(store, tmp_path, monkeypatch, capsys,
                                                                                name):
    damage, file, expected = TAMPERING[name]
    damage(store)
    with pytest.raises(StoreError) as err:
        read_features(store, "image")
    message = str(err.value)
    assert os.path.join(store, file) in message and expected in message, message
    # the same through the CLI: one error line, exit 2, no model
    output = str(tmp_path / "model")
    status, stderr = _train(["--features", store, "--output", output, "--stages", "image:text"], monkeypatch, capsys)
    assert status == 2 and stderr.strip().splitlines()[-1] == f"error: {message}", stderr
    assert not os.path.exists(os.path.join(output, "config.json"))


def test_the_source_of_each_claim_is_named(store):
    """A shard that disagrees with a record names the record's file and key, so the user knows which one lies."""
    TAMPERING["encoder-json-other-name"][0](store)
    with pytest.raises(StoreError, match=f"as {os.path.join(store, '_progress', 'image', 'encoder.json')} 'name' says"):
        read_features(store, "image")


def test_a_marker_named_with_other_digits_names_no_shard(store, caplog):
    """``shard-٠٠٠١٢.json`` (Arabic-Indic digits, which ``int()`` takes) is not shard 12's marker: ignored with a
    warning, it can neither make an uncommitted shard look committed (resume would skip it, readers would read a
    file without a marker) nor stand in for a real marker."""
    store_ = FeatureStore(store, {})
    arabic = "shard-" + "".join(chr(0x660 + int(c)) for c in "00012") + ".json"
    marker = json.dumps({"features": ROWS, "errors": {"read": 0, "decode": 0, "encode": 0}, "dim": 8})
    _write(os.path.join(store, "_progress", "image", arabic), marker)
    _write(os.path.join(store, "_progress", "image", "shard-1.json"), marker)  # another spelling of shard 1's name
    with caplog.at_level(logging.WARNING, logger="pipeline.store.features"):
        assert store_.committed_indexes("image") == [0, 1]  # what the embed job's resume skips
        table = read_features(store, "image")
    assert table.num_rows == 2 * ROWS
    assert list(store_.committed_shards("image")) == [0, 1]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert arabic in warned and "shard-1.json" in warned and "not a shard's marker name" in warned, warned


def test_the_embed_job_refuses_to_resume_over_a_run_record_that_is_not_json(ray_session, store, tmp_path, capsys):
    from jobs import embed as embed_job

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"t{i}", "text": f"caption {i}"}) + "\n" for i in range(4)))
    run = os.path.join(store, "_progress", "text", "run.json")
    _write(run, "{'tokens': 1}")  # Python, not JSON
    argv = ["--input", str(manifest), "--output", store, "--preset", "tiny", "--modalities", "text"]
    assert embed_job.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {run}: not JSON (JSONDecodeError"), err[-3:]


def test_an_encoder_record_is_whole_or_named_incomplete(store, tmp_path, capsys):
    """The record a model rebuilds its frozen encoders from (pipeline.artifact.EncoderRecord) round-trips through
    an artifact; an artifact whose record lacks a field is refused naming the file, the modality and the field, and
    training from a store whose encoder.json lacks one says which (not a KeyError at load time)."""
    from jobs.train import main as train_main
    from pipeline.artifact import ArtifactError, EncoderRecord, read_artifact, write_artifact

    record = EncoderRecord.from_json(_encoder_record("image"), "here")
    assert record.name == "enc-image" and record.encoder == {"tokens": 1, "dtype": "float16"}
    model = str(tmp_path / "model")
    write_artifact(model, {"in_dims": {"image": 8}, "tokens": {"image": 1}}, b"", {"image": record}, [], {})
    assert read_artifact(model).encoders == {"image": record}
    with open(os.path.join(model, "encoders.json"), "w") as fh:
        json.dump({"image": {k: v for k, v in _encoder_record("image").items() if k != "source"}}, fh)
    with pytest.raises(ArtifactError, match=f"model artifact {model}: encoders.json 'image': the encoder record "
                                            "has no source"):
        read_artifact(model)

    path = os.path.join(store, "_progress", "text", "encoder.json")
    with open(path) as fh:
        written = json.load(fh)
    assert EncoderRecord.from_json(written, path).modality == "text"
    with open(path, "w") as fh:
        json.dump({k: v for k, v in written.items() if k not in ("input", "build")}, fh)
    status = train_main(["--features", store, "--output", str(tmp_path / "m2"), "--stages", "image:text",
                         "--epochs", "1"])
    err = capsys.readouterr().err
    assert status == 2 and f"feature store {store}: text: the encoder record has no build, input" in err, err


# --- token sequences (tokens: all): zero vectors are padding -----------------------------------------

def _sequences(lengths: list[int], k: int = 5, dim: int = 8) -> np.ndarray:
    """(len(lengths), k, dim) random token vectors, each row's first lengths[i] real and the rest zero."""
    values = np.random.default_rng(len(lengths)).normal(size=(len(lengths), k, dim)).astype(np.float32)
    for row, n in enumerate(lengths):
        values[row, n:] = 0
    return values


def _sequence_store(root: str, values: np.ndarray, tokens: list[int] | None = None, column: bool = True) -> None:
    """One image shard of ``values`` as tokens: all writes it (its `tokens` column replaced by ``tokens`` if given)."""
    fs = FeatureStore(root, {})
    k, dim = values.shape[1:]
    fs.start_run("image", {"items": len(values), "encoder": "enc-image", "tokens": "all", "max_tokens": k,
                           "dtype": "float16"},
                 {**_encoder_record("image"), "encoder": {"tokens": "all", "max_tokens": k, "dtype": "float16"}})
    ids = [f"c{i:05d}" for i in range(len(values))]
    flat = pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float16).ravel()), k * dim)
    table = features_table(ids, "image", [None] * len(ids), "enc-image", flat, k, dim, sequence=True)
    if tokens is not None:
        table = table.set_column(table.schema.get_field_index("tokens"), "tokens", pa.array(tokens, pa.int32()))
    if not column:
        table = table.drop_columns(["tokens"])
    fs.commit_shard("image", 0, table, ERROR_SCHEMA.empty_table(), dim)


def test_a_sequence_store_keeps_each_item_s_length(tmp_path):
    root = str(tmp_path / "seq")
    _sequence_store(root, _sequences([5, 2, 1, 3]))
    table = read_features(root, "image")
    assert table.column("tokens").to_pylist() == [5, 2, 1, 3]
    assert table.schema.field("tokens").type == pa.int32()


@pytest.mark.parametrize("lengths,tokens,column,expected", [
    ([5, 2, 3], [5, 3, 3], True, "1 rows have zero token vectors other than their padding, the first id 'c00001' "
                                 "(2 non-zero of 5, expected its first 3 non-zero"),
    ([5, 2, 3], None, False, "no 'tokens' column, expected one (int32, each item's token count)"),
])
def test_a_sequence_store_whose_padding_and_lengths_disagree_is_refused(tmp_path, lengths, tokens, column, expected):
    root = str(tmp_path / "seq")
    _sequence_store(root, _sequences(lengths), tokens, column)
    with pytest.raises(StoreError) as err:
        read_features(root, "image")
    assert os.path.join(root, "features/image/shard-00000.parquet") in str(err.value) and expected in str(err.value)


def test_a_zero_token_vector_inside_a_row_is_refused(tmp_path, store):
    """A zero vector is padding: one before a row's last real token (a gap in a sequence) or in a store of K pooled
    tokens would be masked out, so the row is refused, not read with a token lost."""
    gap = _sequences([5, 4])
    gap[1, 1] = 0
    root = str(tmp_path / "gap")
    with pytest.raises(StoreError, match="the first id 'c00001' \\(3 non-zero of 5, expected its first 3"):
        _sequence_store(root, gap)  # the writer counts the non-zero vectors: 3, not a prefix
        read_features(root, "image")
    pooled = _vectors("image", 0, k=2)
    pooled[3, 1] = 0
    fs = FeatureStore(store, {})
    fs.remove_modality("image")
    fs.start_run("image", {"items": ROWS, "encoder": "enc-image", "tokens": 2, "dtype": "float16"},
                 {**_encoder_record("image"), "encoder": {"tokens": 2, "dtype": "float16"}})
    fs.commit_shard("image", 0, _table("image", 0, pooled), ERROR_SCHEMA.empty_table(), DIMS["image"])
    with pytest.raises(StoreError, match="the first id 'c00003' \\(1 non-zero of 2, expected its first 2 non-zero"):
        read_features(store, "image")
