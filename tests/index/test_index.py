"""The index job: aligned vectors on disk, segments searched by ANN against exact search, resume, refusals."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from pipeline.config import ConfigError
from pipeline.index.config import AnnConfig, IndexConfig
from pipeline.index.segments import IndexMismatchError, VectorIndex
from pipeline.store.features import ERROR_SCHEMA, FeatureStore, embeddings, read_features
from serving.local import prepare

MODALITIES = ("image", "text", "audio")
SHARDS = 4  # the concept store's 480 rows per modality, re-cut into 4 shards of 120


@pytest.fixture(scope="module")
def sharded_store(feature_store, tmp_path_factory):
    """The concept store's image, text and audio features, cut into SHARDS shards per modality; their run records
    name a manifest with a split (every fourth item "test") and a year (2020 + i % 3) per id."""
    root = str(tmp_path_factory.mktemp("sharded"))
    source, store = FeatureStore(feature_store, {}), FeatureStore(root, {})
    manifest = os.path.join(root, "manifest.jsonl")  # what the store's run records name: its metadata columns
    with open(manifest, "w") as fh:
        for i, item in enumerate(read_features(feature_store, "image").column("id").to_pylist()):
            fh.write(json.dumps({"id": item, "split": "test" if i % 4 == 0 else "train", "year": 2020 + i % 3}) + "\n")
    for m in MODALITIES:
        table = read_features(feature_store, m)
        store.start_run(m, dict(source.run_record(m), manifest=manifest), source.encoder_record(m))
        step = table.num_rows // SHARDS
        for shard in range(SHARDS):
            dim = table.schema.field("embedding").type.shape[-1]
            store.commit_shard(m, shard, table.slice(shard * step, step), ERROR_SCHEMA.empty_table(), dim)
    return root


def _index(model: str, features: str, output: str, width: int | None = None, metadata: list[str] | None = None,
           **ann) -> dict:
    from pipeline.index.job import run_index

    return run_index(IndexConfig(model=model, features=features, output=output, width=width, metadata=metadata,
                                 ann=AnnConfig(**ann)))


def _hide(store: str, modality: str, shard: int) -> str:
    """Make shard ``shard`` look uncommitted (its marker moved aside); returns where the marker went."""
    marker = os.path.join(store, "_progress", modality, f"shard-{shard:05d}.json")
    os.rename(marker, marker + ".hidden")
    return marker


@pytest.fixture(scope="module")
def built(ray_session, trained, sharded_store, tmp_path_factory):
    """The sharded store indexed with graphs (forced: the store is below the exact-search threshold), keeping the
    manifest's split and year."""
    out = str(tmp_path_factory.mktemp("index") / "index")
    return out, _index(trained[0], sharded_store, out, metadata=["split", "year"], kind="hnsw", connectivity=8,
                       expansion_add=64, expansion_search=32)


def test_index_writes_the_models_vectors_and_its_graph_finds_what_exact_search_finds(trained, sharded_store, built):
    from pipeline.inference import load_model

    out, record = built
    model = load_model(trained[0])
    for m in MODALITIES:
        # the user's vectors: one Parquet per feature shard, ids in store order, exactly the model's projection
        files = sorted(os.listdir(os.path.join(out, "vectors", m)))
        assert files == [f"shard-{s:05d}.parquet" for s in range(SHARDS)]
        table = pq.read_table(os.path.join(out, "vectors", m))
        features = read_features(sharded_store, m)
        assert table.column_names == ["id", "uri", "vector"]
        assert table.column("id").to_pylist() == features.column("id").to_pylist()
        vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(vectors, model.project(embeddings(features).astype(np.float32), m), atol=1e-5)
        assert record["modalities"][m]["rows"] == features.num_rows

    index = VectorIndex(out)
    assert {m: index.size(m) for m in MODALITIES} == {m: 480 for m in MODALITIES}
    assert all(seg.graph is not None for m in MODALITIES for seg in index.segments[m])
    queries = np.stack(pq.read_table(os.path.join(out, "vectors", "text")).column("vector").to_numpy(
        zero_copy_only=False))[:100]
    found = total = 0
    for q in queries:
        approx = index.search(q, ["image"], 10)
        exact = index.search(q, ["image"], 10, exact=True)
        assert [h.score for h in exact] == sorted((h.score for h in exact), reverse=True)
        found += len({h.id for h in approx} & {h.id for h in exact})
        total += len(exact)
    assert found / total >= 0.95, f"recall@10 of the graph against exact search: {found / total:.3f}"
    # exact search is the brute-force ranking of the stored vectors
    image = np.stack(pq.read_table(os.path.join(out, "vectors", "image")).column("vector").to_numpy(
        zero_copy_only=False))
    ids = pq.read_table(os.path.join(out, "vectors", "image")).column("id").to_pylist()
    best = np.argsort(-(image @ queries[0]), kind="stable")[:10]
    assert [h.id for h in index.search(queries[0], ["image"], 10, exact=True)] == [ids[i] for i in best]


def test_the_job_counts_the_vectors_it_writes_in_ray_metrics(sharded_store, built):
    """The projection workers count each shard's vectors as they write them (at least: other index runs of this Ray
    session count too)."""
    from tests.ray_metrics import job_counters

    wanted = {("ray_oneencoder_job_rows_total", m): read_features(sharded_store, m).num_rows for m in MODALITIES}
    got = job_counters("index", wanted)
    assert all(got.get(k, 0) >= v for k, v in wanted.items()), {k: (got.get(k), v) for k, v in wanted.items()}


def test_filters_by_modality_and_id_prefix(built):
    index = VectorIndex(built[0])
    q = index.segments["text"][0].vectors[0]
    merged = index.search(q, None, 20)
    assert {h.modality for h in merged} <= set(MODALITIES) and len(merged) == 20
    assert [h.score for h in merged] == sorted((h.score for h in merged), reverse=True)
    # a selective prefix (c0001x: 10 ids) is searched over those rows only, through any modality asked for
    hits = index.search(q, ["image", "audio"], 30, id_prefix="c0001")
    assert len(hits) == 20 and {h.id[:5] for h in hits} == {"c0001"} and {h.modality for h in hits} == {"image", "audio"}
    # a broad prefix (c000: 100 of 480 ids) goes through the graph and still returns k hits that all match
    hits = index.search(q, ["image"], 10, id_prefix="c000")
    assert len(hits) == 10 and all(h.id.startswith("c000") for h in hits)
    assert index.search(q, ["image"], 10, id_prefix="nope") == []


def test_filters_by_the_manifests_metadata_columns(sharded_store, built):
    """where: each hit holds the manifest's values (as text); a selective filter (year 2021 and split test: 40 of
    480) and a broad one (split train: 360) both return the exact top k among the rows that match, and combine
    with id_prefix."""
    index = VectorIndex(built[0])
    ids = index.segments["image"][0].ids
    assert ids.column_names == ["id", "uri", "split", "year"]
    image = np.concatenate([np.asarray(seg.vectors) for seg in index.segments["image"]])
    rows = pa.concat_tables([seg.ids for seg in index.segments["image"]]).to_pylist()
    q = index.segments["text"][0].vectors[3]
    for where, keep in (({"split": ["test"], "year": ["2021"]}, lambda r: r["split"] == "test" and r["year"] == "2021"),
                        ({"split": ["train"]}, lambda r: r["split"] == "train")):
        hits = index.search(q, ["image"], 10, where=where)
        allowed = [n for n, r in enumerate(rows) if keep(r)]
        best = [rows[allowed[j]]["id"] for j in np.argsort(-(image[allowed] @ q), kind="stable")[:10]]
        assert len(hits) == 10 and all(keep(h.metadata) for h in hits)
        assert len({h.id for h in hits} & set(best)) >= 9, (where, [h.id for h in hits], best)
    with open(os.path.join(sharded_store, "manifest.jsonl")) as fh:
        manifest = {r["id"]: r for r in map(json.loads, fh)}
    assert all((r["split"], r["year"]) == (manifest[r["id"]]["split"], str(manifest[r["id"]]["year"])) for r in rows)
    both = index.search(q, ["image", "audio"], 30, id_prefix="c000", where={"year": ["2022", "2020"]})
    assert both and all(h.id.startswith("c000") and h.metadata["year"] in ("2020", "2022") for h in both)
    assert index.search(q, ["image"], 10, where={"split": ["nope"]}) == []


def test_the_index_is_calibrated_on_the_models_held_out_ids_as_a_served_store_is(trained, sharded_store, built):
    from pipeline.index.calibration import fit_held_out
    from pipeline.inference import load_model
    from pipeline.store.pairs import is_validation
    from tests.settings import VAL_FRACTION

    out, record = built
    cal = record["calibration"]
    assert set(cal["pairs"]) == {f"{q}->{t}" for q in MODALITIES for t in MODALITIES}
    held = [i for i in read_features(sharded_store, "image").column("id").to_pylist() if is_validation(i, VAL_FRACTION)]
    assert cal["sample"] == {m: len(held) for m in MODALITIES} and cal["pairs"]["text->image"]["n"] == len(held)
    index = VectorIndex(out)
    assert {m: b.shape for m, b in index.calibration.banks.items()} == {m: (len(held) // 2, record["dim"]) for m in MODALITIES}
    # the same maps as a store projected in memory (serving `features`) gets
    model = load_model(trained[0])
    projected = {}
    for m in MODALITIES:
        table = read_features(sharded_store, m)
        projected[m] = (table.column("id").to_pylist(), model.project(embeddings(table).astype(np.float32), m))
    in_memory = fit_held_out(projected, VAL_FRACTION, 0).pairs
    assert in_memory.keys() == index.calibration.pairs.keys()
    for pair, maps in in_memory.items():
        for kind in ("raw", "hubness"):
            np.testing.assert_allclose(maps[kind], index.calibration.pairs[pair][kind], atol=1e-5, err_msg=pair)
    # a text query over image and audio: one list ranked by match; a threshold keeps the likely partners only
    q = projected["text"][1][0]
    hits = index.search(q, ["image", "audio"], 20, query_modality="text")
    assert [h.match for h in hits] == sorted((h.match for h in hits), reverse=True)
    assert all(h.match == pytest.approx(index.calibration.match("text", h.modality, h.score)) for h in hits)


@pytest.mark.slow
def test_a_rerun_projects_only_new_shards_into_a_new_segment(ray_session, trained, sharded_store, built, tmp_path):
    store = str(tmp_path / "store")
    import shutil

    shutil.copytree(sharded_store, store)
    hidden = [_hide(store, m, SHARDS - 1) for m in MODALITIES]
    out = str(tmp_path / "index")
    first = _index(trained[0], store, out)
    assert {m: first["modalities"][m]["rows"] for m in MODALITIES} == {m: 360 for m in MODALITIES}
    stamps = {f: os.stat(os.path.join(out, "vectors", "image", f)).st_mtime_ns
              for f in os.listdir(os.path.join(out, "vectors", "image"))}
    for marker in hidden:  # the embed job committed the last shard since
        os.rename(marker + ".hidden", marker)
    second = _index(trained[0], store, out)
    for m in MODALITIES:
        assert second["modalities"][m]["segments"] == ["segment-00000", "segment-00001"]
        assert second["modalities"][m]["segment_shards"] == [[0, 1, 2], [3]]
        assert second["modalities"][m]["rows"] == 480
    assert {f: os.stat(os.path.join(out, "vectors", "image", f)).st_mtime_ns for f in stamps} == stamps
    # the two segments (exact: below the threshold) searched together rank as one index built at once
    grown, once = VectorIndex(out), VectorIndex(built[0])
    assert all(seg.graph is None for seg in grown.segments["image"])
    for q in once.segments["text"][0].vectors[:20]:
        assert ([h.id for h in grown.search(q, ["image", "audio"], 10)]
                == [h.id for h in once.search(q, ["image", "audio"], 10, exact=True)])
    third = _index(trained[0], store, out)  # nothing new: nothing added
    assert third["modalities"]["image"]["segments"] == ["segment-00000", "segment-00001"]
    # a shard committed again since it was projected (its vectors would be stale), then a store re-embedded with
    # other settings: both refused, naming the files
    marker = os.path.join(store, "_progress", "audio", "shard-00001.json")
    with open(marker) as fh:
        counts = json.load(fh)
    with open(marker, "w") as fh:
        json.dump({**counts, "committed_at": counts["committed_at"] + 1}, fh)
    with pytest.raises(IndexMismatchError, match="shard-00001.parquet was committed again"):
        _index(trained[0], store, out)
    run = os.path.join(store, "_progress", "image", "run.json")
    with open(run) as fh:
        record = json.load(fh)
    with open(run, "w") as fh:
        json.dump({**record, "items": record["items"] + 1}, fh)
    with pytest.raises(IndexMismatchError, match="image vectors come from another embed run"):
        _index(trained[0], store, out)


@pytest.mark.slow
def test_an_index_on_s3_is_written_there_and_searched_from_a_local_copy(ray_session, trained, sharded_store, built,
                                                                       s3_endpoint, tmp_path, monkeypatch):
    """Output on the S3-compatible server: the vectors and segments land there; a reader copies the segments into
    the cache once and ranks as the local index does."""
    import s3fs

    from pipeline.config import StorageConfig
    from pipeline.index.job import run_index
    from pipeline.store.sources import storage_options

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("index")
    storage = StorageConfig(endpoint_url=s3_endpoint)
    run_index(IndexConfig(model=trained[0], features=sharded_store, output="s3://index/v1", storage=storage,
                          modalities=["image", "text"]))
    assert fs.ls("index/v1/vectors/image", detail=False) == [f"index/v1/vectors/image/shard-{s:05d}.parquet"
                                                             for s in range(SHARDS)]
    monkeypatch.setenv("ONEENCODER_CACHE", str(tmp_path / "cache"))
    remote, local = VectorIndex("s3://index/v1", storage_options(storage)), VectorIndex(built[0])
    assert remote.size("image") == 480 and os.listdir(tmp_path / "cache" / "index")
    for q in local.segments["text"][0].vectors[:5]:
        assert ([h.id for h in remote.search(q, ["image"], 10)]
                == [h.id for h in local.search(q, ["image"], 10, exact=True)])


@pytest.mark.slow
@pytest.mark.parametrize("ann, kind, index_type", [
    ({"kind": "hnsw", "connectivity": 8, "precision": "binary"}, ("hnsw", "binary", 32), "IndexBinaryHNSW"),
    ({"kind": "ivf_pq"}, ("ivf_pq", "pq", 32), "IndexIVFPQ")])
def test_an_index_with_compact_codes_finds_what_exact_search_finds(ray_session, trained, sharded_store, tmp_path, ann,
                                                                   kind, index_type):
    """ann.precision binary (a graph of sign bits) or ann.kind ivf_pq through the job: each segment's record says what
    it holds, and the rescored hits are the exact top 10."""
    out = str(tmp_path / "index")
    _index(trained[0], sharded_store, out, **ann)
    index = VectorIndex(out)
    with open(os.path.join(out, "segments", "image", "segment-00000", "segment.json")) as fh:
        record = json.load(fh)["ann"]
    assert (record["kind"], record["precision"], record["rescore"]) == kind
    seg = index.segments["image"][0]
    assert seg.precision == kind[1] and type(seg.graph).__name__ == index_type
    found = 0
    for q in index.segments["text"][0].vectors[:50]:
        approx, exact = index.search(q, ["image"], 10), index.search(q, ["image"], 10, exact=True)
        assert [h.score for h in approx] == sorted((h.score for h in approx), reverse=True)
        found += len({h.id for h in approx} & {h.id for h in exact})
    assert found / 500 >= 0.95


def test_a_run_cuts_its_new_shards_into_segments_of_at_most_segment_rows():
    from pipeline.index.job import _segments_of

    rows = {0: 5, 1: 5, 2: 5, 3: 20, 4: 1}
    assert _segments_of([0, 1, 2, 3, 4], rows, 10) == [[0, 1], [2], [3], [4]]
    assert _segments_of([0, 1, 2, 3, 4], rows, 100) == [[0, 1, 2, 3, 4]]
    assert _segments_of([], rows, 10) == []


def test_the_index_command_names_what_is_missing_before_starting_ray(capsys, monkeypatch):
    import pipeline.runtime
    from jobs.cli import main

    monkeypatch.setattr(pipeline.runtime, "init_ray", lambda dashboard=True: pytest.fail("Ray started"))
    assert main(["index", "--model", "m", "--features", "f"]) == 2
    assert "output is missing: expected the index folder" in capsys.readouterr().err
    assert main(["index", "--model", "/nowhere", "--features", "f", "--output", "o", "--modalities", "smell"]) == 2
    assert "smell" in capsys.readouterr().err
    assert main(["index", "--model", "/nowhere", "--features", "f", "--output", "o"]) == 2
    assert "no model artifact at /nowhere" in capsys.readouterr().err


def _retrained(model_dir: str, dest: str) -> str:
    """A copy of the artifact at ``model_dir`` with one weight changed: another model, the same architecture."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(model_dir, dest)
    weights = load_file(os.path.join(dest, "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + np.float32(0.01)
    save_file(weights, os.path.join(dest, "model.safetensors"))
    return dest


def test_an_index_refuses_another_model_naming_both(trained, sharded_store, built, tmp_path):
    out, other = built[0], _retrained(trained[0], str(tmp_path / "other-model"))
    index = VectorIndex(out)
    index.check_model(trained[0])
    with pytest.raises(IndexMismatchError) as e:
        index.check_model(other)
    assert trained[0] in str(e.value) and other in str(e.value)
    with pytest.raises(IndexMismatchError) as e:  # a rerun into the same folder with another model
        _index(other, sharded_store, out)
    assert trained[0] in str(e.value) and other in str(e.value)
    with pytest.raises(ConfigError) as e:  # and the server refuses it before Ray starts
        prepare(None, model=other, index=out)
    assert trained[0] in str(e.value) and other in str(e.value)
    # a width the model was not trained for (no Matryoshka prefixes): refused naming the widths it has
    with pytest.raises(ConfigError, match=r"width=64: model .*'s \w+ vectors were trained for widths 256 only"):
        _index(trained[0], sharded_store, str(tmp_path / "narrow"), width=64)


def test_the_server_ranks_an_index_as_it_ranks_the_store(trained, sharded_store, built):
    """/v1/search's searcher over the index folder (memory-mapped, in the Gateway) and over the store (projected at
    start-up, the SearchIndex deployment) give the same exact ranking; the graph path agrees on most of it; filters
    reach both."""
    from serving.config import ServeArgs
    from serving.deployments import SearchIndex
    from serving.search import Searcher

    from_index = Searcher(ServeArgs(model=trained[0], index=built[0]))
    from_store = SearchIndex.func_or_class({"model": trained[0], "features": sharded_store})
    def ranking(found):
        return [(h["modality"], h["id"]) for h in found["hits"]]

    queries = VectorIndex(built[0]).segments["text"][0].vectors[:10]
    for q in queries:
        exact = from_index.search(q, "text", ["image", "audio"], 10, exact=True)
        store = from_store.search(q, "text", ["image", "audio"], 10)
        assert ranking(exact) == ranking(store) and exact["ranking"] == store["ranking"] == "match"
        for field in ("score", "match"):
            np.testing.assert_allclose([h[field] for h in exact["hits"]], [h[field] for h in store["hits"]], atol=1e-5)
        approx = from_index.search(q, "text", ["image", "audio"], 10)
        assert len(set(ranking(approx)) & set(ranking(exact))) >= 8
        prefixed = from_store.search(q, "text", None, 5, False, "c0002")
        assert ranking(from_index.search(q, "text", None, 5, True, "c0002")) == ranking(prefixed)
        assert len(prefixed["hits"]) == 5 and all(h["id"].startswith("c0002") for h in prefixed["hits"])
        hubness = from_index.search(q, "text", ["image"], 10, exact=True, hubness=True)
        assert ranking(hubness) == ranking(from_store.search(q, "text", ["image"], 10, hubness=True))


@pytest.mark.slow
def test_serve_with_an_index_searches_it_over_http(ray_session, trained, sharded_store, tmp_path):
    """`oneencoder serve --index DIR`: /v1/search answers from the index folder, opened in the Gateway's replicas (no
    store projected, no SearchIndex deployment), with the id_prefix, exact and where fields."""
    from pipeline.index.config import IndexConfig
    from pipeline.index.job import run_index
    from pipeline.index.segments import VectorIndex
    from pipeline.inference import load_model
    from ray import serve

    from tests.serving.test_serve import _ServeCommand, _config, _post

    index = str(tmp_path / "index")
    run_index(IndexConfig(model=trained[0], features=sharded_store, output=index, modalities=["image", "text"],
                          metadata=["split"]))
    path = _config(str(tmp_path), "index.yaml", {"model": trained[0], "index": index, "modalities": ["text"]},
                   {"Gateway": {"ray_actor_options": {"num_cpus": 0.1}}, "encoder-text": {}})
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    try:
        with _ServeCommand(["--config", path], env, timeout_s=300) as server:
            health = requests.get(server.url + "/health", timeout=30).json()
            # the index is searched in the Gateway's replicas: no SearchIndex deployment, no hop
            assert health["deployments"] == {"encoder-text": "ready"}, health
            assert health["search_index"] == {"served_by": "Gateway", "vectors": {"image": 480, "text": 480}}, health
            body = {"query": "a red circle", "target_modality": ["image", "text"], "k": 10}
            found = _post(server.url, body, path="/v1/search", token=None).json()
            assert "data" in found, found
            hits = found["data"]
            query = load_model(trained[0]).embed(["a red circle"], "text")[0]
            expected = VectorIndex(index).search(query, ["image", "text"], 10, exact=True, query_modality="text")
            assert [(h["modality"], h["id"]) for h in hits] == [(h.modality, h.id) for h in expected]
            assert found["ranking"] == "match" and [h["match"] for h in hits] == pytest.approx([h.match for h in expected])
            sure = _post(server.url, {**body, "min_match": hits[0]["match"]}, path="/v1/search", token=None).json()
            assert sure["data"] and all(h["match"] >= hits[0]["match"] for h in sure["data"])
            exact = _post(server.url, {**body, "exact": True}, path="/v1/search", token=None).json()["data"]
            assert exact == hits
            some = _post(server.url, {**body, "id_prefix": "c0001"}, path="/v1/search", token=None).json()["data"]
            assert len(some) == 10 and all(h["id"].startswith("c0001") for h in some)
            tests = _post(server.url, {**body, "where": {"split": "test"}}, path="/v1/search", token=None).json()
            assert len(tests["data"]) == 10 and {h["metadata"]["split"] for h in tests["data"]} == {"test"}
            bad = _post(server.url, {**body, "where": {"colour": "red"}}, path="/v1/search", token=None)
            assert bad.status_code == 400 and "it keeps split" in bad.json()["error"]["message"]
            bad = _post(server.url, {**body, "id_prefix": 7}, path="/v1/search", token=None)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "id_prefix"
            bad = _post(server.url, {**body, "exact": "yes"}, path="/v1/search", token=None)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "exact"
            server.stop()
    finally:
        serve.shutdown()
