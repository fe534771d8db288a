"""tokens: all end to end: the embed job stores each item's token sequence (padded with zero vectors, its length in
the `tokens` column), the curriculum trains on it with the padding masked, and the served model answers with the
vector of an item's own tokens, whatever the padding."""
from __future__ import annotations

import os

import numpy as np
import pytest
import requests

from tests.media_factory import png_bytes
from tests.serving.test_serve import _config, _data_uri, _in_process

pytestmark = pytest.mark.slow
CAP = 32  # max_tokens: the tiny ViT's 17 tokens and every caption fit, padded


def test_token_sequences_embed_train_and_serve(ray_session, tmp_path):
    from pipeline.embed.config import EmbedConfig
    from pipeline.embed.job import run_embed
    from pipeline.inference import load_model
    from pipeline.store.features import embeddings, read_features
    from pipeline.store.files import read_json
    from pipeline.synthetic.corpus import write_sample_corpus
    from pipeline.train.config import load_train_config
    from pipeline.train.job import run_train
    from serving.local import prepare

    manifest = write_sample_corpus(str(tmp_path / "corpus"), n=24, modalities=("image", "text"), vary=True)
    store = str(tmp_path / "store")
    sequences = {"tokens": "all", "max_tokens": CAP, "dtype": "float32"}
    run_embed(EmbedConfig(input=manifest, output=store, modalities=["image", "text"],
                          encoders={"image": sequences, "text": sequences}))
    text = read_features(store, "text")
    lengths = text.column("tokens").to_numpy()
    values = embeddings(text)
    assert values.shape == (24, CAP, 32) and len(set(lengths)) > 1 and lengths.max() < CAP
    for row, n in zip(values, lengths):  # each caption's tokens, then zero vectors
        assert np.abs(row[:n]).sum(axis=1).all() and not row[n:].any()
    assert set(read_features(store, "image").column("tokens").to_pylist()) == {17}  # 16 patches and the CLS token

    output = str(tmp_path / "model")
    run_train(load_train_config(None, epochs=2, features=store, output=output, stages="image:text"))
    assert read_json(os.path.join(output, "config.json"))["model"]["tokens"] == {"image": CAP, "text": CAP}
    model = load_model(output)
    ids = text.column("id").to_pylist()
    captions = _captions(manifest)
    # padding changes no item's vector: its tokens alone, padded to the cap, padded further
    short = int(np.argmin(lengths))
    alone = model.project(values[short:short + 1, :lengths[short]], "text")
    for padded in (values[short:short + 1], np.pad(values[short:short + 1], ((0, 0), (0, 64), (0, 0)))):
        np.testing.assert_allclose(model.project(padded, "text"), alone, atol=1e-5)
    # a raw caption embedded through the artifact's encoder is the stored sequence projected
    np.testing.assert_allclose(model.embed([captions[ids[short]]], "text")[0], alone[0], atol=1e-4)

    # the search index projects the stored sequences as load_model does (no K mismatch refused)
    from pipeline.artifact import read_artifact
    from pipeline.index.config import IndexConfig
    from pipeline.index.job import run_index
    from pipeline.index.segments import VectorIndex
    from pipeline.store.features import FeatureStore

    assert read_artifact(output).features_mismatch(FeatureStore(store, {}), "text") is None
    run_index(IndexConfig(model=output, features=store, output=str(tmp_path / "index")))
    hits = VectorIndex(str(tmp_path / "index")).search(alone[0], ["text"], 1, exact=True)
    assert hits[0].score > 0.999 and captions[hits[0].id] == captions[ids[short]]  # the caption itself (or its twin)

    config = _config(str(tmp_path), "serve.yaml", {"model": output, "modalities": ["image", "text"]},
                     {"Gateway": {"ray_actor_options": {"num_cpus": 0.1}}, "MediaDecoder": {"ray_actor_options": {"num_cpus": 0.1}},
                      "encoder-text": {"ray_actor_options": {"num_cpus": 0.25}},
                      "encoder-image": {"ray_actor_options": {"num_cpus": 0.25}}})
    app, _ = prepare(config)
    png = png_bytes((40, 30))
    with _in_process(app, "sequences") as url:
        r = requests.post(url + "/v1/embeddings", json={"model": "oneencoder", "input": [
            captions[ids[short]], captions[ids[int(np.argmax(lengths))]], _data_uri("image/png", png)]}, timeout=120)
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
    # served in one batch with a longer caption (more padding in the encoder's batch): the same vector
    np.testing.assert_allclose(got[0], alone[0], atol=1e-4)
    np.testing.assert_allclose(got[2], model.embed([png], "image")[0], atol=1e-4)


def _captions(manifest: str) -> dict[str, str]:
    import json

    with open(manifest, encoding="utf-8") as fh:
        return {row["id"]: row["text"] for row in map(json.loads, fh)}
