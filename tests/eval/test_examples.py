"""The retrieval-examples sheet: queries and their nearest items, drawn from the media they were embedded from."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa

from pipeline.eval.examples import HOP, N_FFT, pick, preview, spectrogram
from pipeline.store.features import ERROR_SCHEMA, FeatureStore, read_features
from pipeline.store.pairs import is_validation


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_pick_ranks_every_target_and_marks_the_partner():
    rng = np.random.default_rng(0)
    ids = [f"x{i:03d}" for i in range(60)]
    za = _unit(rng.normal(size=(60, 16)))
    zb = _unit(za + rng.normal(size=(60, 16)) * 0.8)
    projected = {"image": (ids, za), "text": (ids[::-1], zb[::-1])}  # row order differs per modality
    examples = pick(projected, held_out=(0.2, 0), queries=4, top=5)
    assert set(examples) == {"image->text", "text->image"}
    rows = examples["image->text"]
    assert [r["query"] for r in rows] == [r["query"] for r in examples["text->image"]]
    held = [i for i in ids if is_validation(i, 0.2, 0)]
    assert len(held) >= 4 and all(r["query"] in held for r in rows)  # held-out ids first
    for r in rows:
        q = za[ids.index(r["query"])]
        scores = zb @ q
        order = np.argsort(-scores, kind="stable")
        assert [h["id"] for h in r["hits"]] == [ids[j] for j in order[:5]]
        np.testing.assert_allclose([h["score"] for h in r["hits"]], scores[order[:5]], rtol=1e-5)
        assert [h["partner"] for h in r["hits"]] == [ids[j] == r["query"] for j in order[:5]]
        assert r["partner_rank"] == list(order).index(ids.index(r["query"])) + 1


def test_previews_show_a_spectrogram_a_middle_frame_and_a_depth_map():
    sr = 16000
    t = np.arange(sr) / sr
    kind, spec = preview("audio", np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    assert kind == "map" and spec.shape == (N_FFT // 2 + 1, (sr - N_FFT) // HOP + 1)
    assert abs(spec.mean(axis=1).argmax() * sr / N_FFT - 1000) <= sr / N_FFT  # the tone's row is the loudest
    assert spectrogram(np.zeros(10)).shape == (N_FFT // 2 + 1, 1)  # shorter than a window: padded
    frames = np.stack([np.full((8, 8, 3), i, np.uint8) for i in range(5)])
    kind, frame = preview("video", frames)
    assert kind == "image" and frame.shape == (8, 8, 3) and frame.max() == 2
    kind, depth = preview("depth", np.ones((1, 6, 4), np.float32).reshape(6, 4, 1))
    assert kind == "map" and depth.shape == (6, 4)
    assert preview("text", "a red circle") == ("text", "a red circle")


def test_evaluate_draws_the_corpus_media_in_the_examples_sheet(trained, feature_store, sample_corpus, tmp_path):
    """A store whose rows name the sample corpus' files (the concept store's features under the corpus' ids):
    the sheet decodes each image with the model's settings, shows audio as a spectrogram and text from the
    manifest; an item whose file is gone is drawn as the reason."""
    from pipeline.eval.examples import MediaSource
    from pipeline.eval.report import evaluate
    from pipeline.inference import load_model
    from pipeline.media.decode import decode_item

    with open(sample_corpus) as fh:
        rows = [json.loads(line) for line in fh]
    base = os.path.dirname(sample_corpus)
    source, root = FeatureStore(feature_store, {}), str(tmp_path / "store")
    store = FeatureStore(root, {})
    for m in ("image", "text", "audio"):
        table = read_features(feature_store, m).slice(0, len(rows))
        uris = [None if m == "text" else os.path.join(base, r[m]) for r in rows]
        if m == "image":
            uris[-1] = os.path.join(base, "gone.png")
        table = table.set_column(0, "id", pa.array([r["id"] for r in rows]))
        table = table.set_column(table.column_names.index("uri"), "uri", pa.array(uris, pa.string()))
        run = dict(source.run_record(m), manifest=sample_corpus)
        store.start_run(m, run, source.encoder_record(m))
        store.commit_shard(m, 0, table, ERROR_SCHEMA.empty_table(), table.schema.field("embedding").type.shape[-1])

    report = evaluate(trained[0], root, output=str(tmp_path / "eval"))
    examples = report["examples"]
    assert set(examples) == {"audio->image", "image->audio", "audio->text", "text->audio", "image->text",
                             "text->image"}
    kinds = {"image": "image", "audio": "map", "text": "text"}
    for direction, queries in examples.items():
        q, t = direction.split("->")
        assert len(queries) == 3
        for row in queries:
            gone = lambda m, i: m == "image" and i == rows[-1]["id"]  # noqa: E731
            assert row["shown"] == ("missing" if gone(q, row["query"]) else kinds[q])
            assert [h["shown"] for h in row["hits"]] == ["missing" if gone(t, h["id"]) else kinds[t]
                                                         for h in row["hits"]]
            assert [h["score"] for h in row["hits"]] == sorted((h["score"] for h in row["hits"]), reverse=True)
            assert [h["partner"] for h in row["hits"]] == [h["id"] == row["query"] for h in row["hits"]]
            if row["partner_rank"] <= 5:
                assert row["hits"][row["partner_rank"] - 1]["partner"]
    sheets = [p for p in report["plots"] if "/examples/" in p]
    assert sorted(os.path.basename(p) for p in sheets) == ["audio-image.png", "audio-text.png", "image-text.png"]
    for path in sheets:
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "eval" / "report.json") as fh:
        assert json.load(fh)["examples"] == examples

    # what the cells hold: the decoded image, the manifest's text, the reason a file is missing
    model = load_model(trained[0])
    media = MediaSource(model, root)
    kind, image = media.get("image", rows[0]["id"], set())
    assert kind == "image" and np.array_equal(image, decode_item(os.path.join(base, rows[0]["image"]),
                                                                 model.decode_settings("image")))
    assert media.get("text", rows[1]["id"], {rows[1]["id"]}) == ("text", rows[1]["text"])
    kind, why = media.get("image", rows[-1]["id"], set())
    assert kind == "missing" and "gone.png" in why
