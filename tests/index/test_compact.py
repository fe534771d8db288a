"""Compact vectors: renormalised prefixes, int8 and binary encodings, recall per width and precision."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.index.compact import binary, int8, prefix, recall_at_widths, scores


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_prefix_int8_and_binary_encode_what_they_say():
    v = _unit(np.random.default_rng(0).normal(size=(5, 32)))
    p = prefix(v, 8)
    assert p.shape == (5, 8) and np.allclose(np.linalg.norm(p, axis=1), 1)
    assert np.allclose(p * np.linalg.norm(v[:, :8], axis=1, keepdims=True), v[:, :8], atol=1e-6)
    q = int8(v)
    assert q.dtype == np.int8 and np.all(np.abs(q).max(1) == 127) and np.all(np.sign(q) == np.sign(np.rint(v * 127 / np.abs(v).max(1, keepdims=True))))
    b = binary(v)
    assert b.dtype == np.uint8 and b.shape == (5, 4)
    assert np.array_equal(np.unpackbits(b, axis=1).astype(bool), v > 0)  # most significant bit = component 0
    hamming = np.unpackbits(b[:, None] ^ b[None], axis=2).sum(2).astype(int)
    assert np.array_equal(scores(v, v, "binary"), 32 - 2 * hamming)
    with pytest.raises(ValueError, match="multiple of 8"):
        binary(v[:, :12])
    with pytest.raises(ValueError, match="precision 'fp4'"):
        scores(v, v, "fp4")


def test_recall_per_width_and_precision_counts_ties_against_the_partner():
    rng = np.random.default_rng(1)
    a = _unit(rng.normal(size=(200, 64)))
    b = _unit(a + 0.3 * rng.normal(size=(200, 64)) / 8)
    r = recall_at_widths(a, b, [16, 64])
    assert set(r) == {"16", "64"} and r["64"]["float"]["recall@1"] == 1.0
    assert r["16"]["float"]["recall@1"] <= r["64"]["float"]["recall@1"]
    assert r["64"]["int8"]["recall@1"] >= 0.95 and r["64"]["binary"]["recall@10"] >= 0.9
    same = np.ones((3, 8), np.float32) / np.sqrt(8)  # every score tied: no partner is found first
    assert recall_at_widths(same, same, [8])["8"]["float"]["recall@1"] == 0.0


@pytest.mark.slow
def test_a_matryoshka_model_serves_its_prefixes_and_refuses_other_widths(ray_session, feature_store, trained, tmp_path):
    """Stage 1 trained with loss.matryoshka [16, 64]: the artifact lists the widths, its 16-wide prefix retrieves
    better than the same prefix of a model trained without it, and /v1/embeddings cuts vectors there (a
    renormalised prefix, in any encoding) and nowhere else."""
    import requests
    from ray import serve

    from pipeline.artifact import read_artifact
    from pipeline.inference import load_model
    from pipeline.store.pairs import is_validation, load_features
    from pipeline.train.config import load_train_config
    from pipeline.train.job import run_train
    from tests.serving.test_serve import _config, _post, _ServeCommand
    from tests.settings import SMALL_EPOCHS, VAL_FRACTION

    output = str(tmp_path / "model")
    stage = {"new": "image", "anchor": "text", "epochs": SMALL_EPOCHS, "loss": {"matryoshka": [16, 64]}}
    run_train(load_train_config(None, features=feature_store, output=output, stages=[stage], val_fraction=VAL_FRACTION))
    artifact = read_artifact(output)
    assert artifact.widths("image") == artifact.widths("text") == [16, 64, 256]
    assert read_artifact(trained[0]).widths("image") == [256]

    def held_out_recall(model_dir):
        model = load_model(model_dir)
        z = {}
        for m in ("image", "text"):
            feats = load_features(feature_store, m, {})
            ids = sorted(i for i in feats if is_validation(i, VAL_FRACTION))
            z[m] = model.project(np.stack([feats[i] for i in ids]), m)
        return recall_at_widths(z["image"], z["text"], [16])["16"]["float"]["recall@10"]

    assert held_out_recall(output) > held_out_recall(trained[0])

    # an index at the 16-wide prefix: its segments hold the renormalised prefixes, searched with the query's own
    from pipeline.index.config import IndexConfig
    from pipeline.index.job import run_index
    from pipeline.index.segments import VectorIndex

    index = str(tmp_path / "index")
    run_index(IndexConfig(model=output, features=feature_store, output=index, width=16))
    narrow = VectorIndex(index)
    image = narrow.segments["image"][0].vectors
    assert narrow.width == 16 and image.shape == (480, 16)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1, atol=1e-5)
    query = load_model(output).embed(["a red circle"], "text")[0]
    hits = narrow.search(query, ["image"], 5, exact=True)
    ids = narrow.segments["image"][0].ids.column("id").to_pylist()
    assert [h.id for h in hits] == [ids[i] for i in np.argsort(-(image @ prefix(query, 16)), kind="stable")[:5]]
    with pytest.raises(Exception, match="searches 16-wide vectors, not 64"):  # a rerun at another width
        run_index(IndexConfig(model=output, features=feature_store, output=index, width=64))

    path = _config(str(tmp_path), "serve.yaml", {"model": output, "modalities": ["text"], "index": index},
                   {"Gateway": {"ray_actor_options": {"num_cpus": 0.1}}, "encoder-text": {}})
    try:
        with _ServeCommand(["--config", path], {**os.environ, "RAY_ADDRESS": ray_session}, timeout_s=300) as server:
            body = {"model": "oneencoder", "input": ["a red circle"]}
            full = np.array(_post(server.url, body, token=None).json()["data"][0]["embedding"], np.float32)
            cut = _post(server.url, {**body, "dimensions": 64}, token=None).json()["data"][0]["embedding"]
            np.testing.assert_allclose(cut, prefix(full, 64), atol=1e-6)
            bits = _post(server.url, {**body, "dimensions": 16, "encoding_format": "binary"}, token=None).json()
            assert bits["data"][0]["embedding"] == binary(prefix(full, 16)).tolist()
            bad = _post(server.url, {**body, "dimensions": 48}, token=None)
            assert bad.status_code == 400 and "trained for widths 16, 64, 256 only" in bad.json()["error"]["message"]
            found = _post(server.url, {"query": "a red circle", "target_modality": "image", "k": 5, "exact": True},
                          path="/v1/search", token=None).json()["data"]
            assert [h["id"] for h in found] == [h.id for h in hits]
            bad = _post(server.url, {"query": "a red circle", "dimensions": 64}, path="/v1/search", token=None)
            assert bad.status_code == 400 and "searches 16-dimensional vectors" in bad.json()["error"]["message"]
            models = requests.get(server.url + "/v1/models", timeout=30).json()["data"][0]
            assert models["widths"] == {"text": [16, 64, 256]}
            server.stop()
    finally:
        serve.shutdown()


def _segment(folder, vectors, kind="hnsw", **ann):
    """A segment folder over ``vectors`` with an index (an HNSW graph, or IVF-PQ lists) built as the index job
    builds it, opened for search; with the index file's size."""
    import json

    import pyarrow as pa

    from pipeline.index.config import AnnConfig
    from pipeline.index.segments import ANN_FILES, Segment, arrow_file_bytes, build_ann

    params = AnnConfig(kind=kind, **ann).chosen(len(vectors), vectors.shape[1])
    data = build_ann(vectors, params, 1)
    np.save(os.path.join(folder, "vectors.npy"), vectors)
    ids = pa.table({"id": [f"{'a' if i % 2 else 'b'}{i:05d}" for i in range(len(vectors))],
                    "uri": pa.nulls(len(vectors), pa.string())})
    for name, blob in (("ids.arrow", arrow_file_bytes(ids)), (ANN_FILES[kind], data)):
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(blob)
    record = {"rows": len(vectors), "ann": params}
    with open(os.path.join(folder, "segment.json"), "w") as fh:
        json.dump(record, fh)
    return Segment.open(folder, "image", record), len(data)


def _clustered(n, dim, rng, centers):
    return _unit(centers[rng.integers(len(centers), size=n)] + rng.normal(size=(n, dim)) / np.sqrt(dim))


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_a_compact_graph_is_smaller_and_its_rescored_hits_are_exact_searchs(tmp_path, precision):
    """An int8 or binary graph holds a fraction of the float graph's bytes; its candidates, rescored from the float
    vectors, give cosine scores and the exact top 10 (recall >= 0.95), also under an id prefix. Without rescoring
    more candidates than k, a binary graph's order alone misses many (what the default rescore is for)."""
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(50, 64))
    vectors, queries = _clustered(4000, 64, rng, centers), _clustered(100, 64, rng, centers)
    (tmp_path / "float").mkdir()
    (tmp_path / precision).mkdir()
    _, float_bytes = _segment(str(tmp_path / "float"), vectors)
    seg, compact_bytes = _segment(str(tmp_path / precision), vectors, precision=precision)
    assert seg.precision == precision and seg.rescore == {"int8": 2, "binary": 32}[precision]
    # 3 of float's 4 bytes a dimension saved (int8), or 31 of 32 bits (binary); a few KB of header and ranges
    saved = len(vectors) * 64 * (3 if precision == "int8" else 31 / 8)
    assert compact_bytes < float_bytes - saved + 4096

    found = 0
    for q in queries:
        scores, rows = seg.search(q, 10)
        np.testing.assert_allclose(scores, vectors[rows] @ q, rtol=1e-5, atol=1e-6)  # cosines, best first
        assert list(scores) == sorted(scores, reverse=True)
        exact = np.argsort(-(vectors @ q))[:10]
        found += len(set(rows) & set(exact))
        _, rows = seg.search(q, 10, id_prefix="a")  # a broad prefix: half the rows, through the graph
        assert len(rows) == 10 and all(r % 2 for r in rows)
    assert found / (10 * len(queries)) >= 0.95

    if precision == "binary":
        seg.rescore = 1
        alone = sum(len(set(seg.search(q, 10)[1]) & set(np.argsort(-(vectors @ q))[:10])) for q in queries)
        assert alone < found * 0.9, (alone, found)


def test_ivf_pq_lists_are_memory_mapped_small_and_their_rescored_hits_are_exact_searchs(tmp_path):
    """ann.kind ivf_pq: the segment's lists are mapped from disk, not read (a replica's start-up does not grow with
    them); the index holds about code_bytes + an 8-byte id a vector; its candidates, rescored from the float vectors,
    are cosines and the exact top 10 (recall >= 0.95), also under a broad id prefix; a filter that leaves fewer than
    k rows in the lists a query visits still returns k hits (the rows are scanned instead)."""
    import faiss

    rng = np.random.default_rng(2)
    centers = rng.normal(size=(50, 64))
    vectors, queries = _clustered(6000, 64, rng, centers), _clustered(100, 64, rng, centers)
    seg, size = _segment(str(tmp_path), vectors, kind="ivf_pq")
    assert (seg.precision, seg.rescore, seg.graph.nprobe) == ("pq", 32, 32)
    assert type(faiss.downcast_InvertedLists(seg.graph.invlists)).__name__ == "OnDiskInvertedLists"
    lists = seg.graph.nlist  # 4·√6000 = 309 lists, at most 6000 / 39 = 153 (trained on 39 or more vectors each)
    assert lists == 153
    assert size < len(vectors) * (8 + 8) + lists * 64 * 4 + 256 * 64 * 4 + 4096  # codes, ids, centroids, code books

    found = 0
    for q in queries:
        scores, rows = seg.search(q, 10)
        np.testing.assert_allclose(scores, vectors[rows] @ q, rtol=1e-5, atol=1e-6)
        assert list(scores) == sorted(scores, reverse=True)
        found += len(set(rows) & set(np.argsort(-(vectors @ q))[:10]))
        _, rows = seg.search(q, 10, id_prefix="a")
        assert len(rows) == 10 and all(r % 2 for r in rows)
    assert found / (10 * len(queries)) >= 0.95

    # refused: code bytes that do not divide the width, a graph's precision asked of IVF lists
    from pipeline.index.config import AnnConfig

    with pytest.raises(ValueError, match=r"ann.code_bytes=7: must divide the searched width 64"):
        AnnConfig(kind="ivf_pq", code_bytes=7).chosen(6000, 64)
    with pytest.raises(ValueError, match="precision='int8' sets what an HNSW graph holds, but kind='ivf_pq'"):
        AnnConfig(kind="ivf_pq", precision="int8")

    # one list visited: it holds fewer than 50 rows of the prefix, so the segment's rows are scanned for them
    seg.graph.nprobe = 1
    q = queries[0]
    scores, rows = seg.search(q, 50, id_prefix="a")
    assert list(rows) == [r for r in np.argsort(-(vectors @ q)) if r % 2][:50]
