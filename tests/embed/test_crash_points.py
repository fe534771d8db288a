"""Exactly once at every crash point of the embed job.

A shard commit stops at each of its steps (after the feature file, after the error file, before the
marker: the job's commit task writes the files, its driver the marker), and the driver during the summary;
then a rerun. Whatever the point: readers see only committed shards and every (id, modality) ends in
exactly one row, in features or in errors.

A stop is a ``Crash`` (tests/crashes.py): on disk the state is what a kill at that instant leaves.
tests/embed/test_resume.py kills real driver processes with SIGINT and SIGKILL; training's stage saves:
tests/train/test_stage_saves.py.
"""
from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from pipeline.embed.config import EmbedConfig
from pipeline.embed.job import run_embed
from pipeline.store.features import FeatureStore, embeddings, read_errors, read_features
from tests.crashes import Crash, crash_on_write

IMAGES = 12


@pytest.fixture
def images(sample_corpus, tmp_path):
    """12 images, one (x03) missing for now: its first attempt is an error row, a later one a feature row."""
    corpus = os.path.dirname(sample_corpus)
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for i in range(IMAGES):
        name = f"{i:05d}.{'png' if i % 2 == 0 else 'jpg'}"
        shutil.copy(os.path.join(corpus, "images", name), folder / name)
        rows.append({"id": f"x{i:02d}", "image": f"images/{name}"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    hidden = folder / "00003.jpg"
    kept = hidden.read_bytes()
    hidden.unlink()
    return str(manifest), lambda: hidden.write_bytes(kept)


def rows_by_id(out: str) -> dict[str, list[str]]:
    """id → where its rows are ("features"/"errors"), as readers see the store."""
    where: dict[str, list[str]] = {}
    for kind, table in (("features", read_features(out, "image")), ("errors", read_errors(out))):
        for i in (table.column("id").to_pylist() if table.num_rows else []):
            where.setdefault(i, []).append(kind)
    return where


def committed_ids(out: str) -> set[str]:
    """Ids in the files of shards that have a marker, read directly."""
    store = FeatureStore(out, {})
    return {i for kind in ("features", "errors") for f in store.committed_files("image", kind)
            for i in pq.read_table(os.path.join(out, f)).column("id").to_pylist()}


def _tables(ids_ok: list[str], ids_bad: list[str]):
    import numpy as np
    import pyarrow as pa

    from pipeline.store.features import ERROR_SCHEMA, features_table

    flat = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4 * len(ids_ok), np.float32)), 4)
    features = features_table(ids_ok, "image", [None] * len(ids_ok), "enc", flat, 1, 4)
    errors = pa.table({"id": ids_bad, "modality": ["image"] * len(ids_bad), "uri": [None] * len(ids_bad),
                       "stage": ["read"] * len(ids_bad), "error": ["missing"] * len(ids_bad)}, schema=ERROR_SCHEMA)
    return features, errors


@pytest.mark.parametrize("when,matches", [
    ("after", lambda t: t.startswith("features/")),                # the feature file, not the error file
    ("after", lambda t: t.startswith("errors/")),                  # both files, not the marker
    ("before", lambda t: t.startswith("_progress/image/shard-")),  # the marker itself
], ids=["after-feature-file", "after-error-file", "before-marker"])
def test_each_commit_step_then_a_redo_split_differently(tmp_path, monkeypatch, when, matches):
    """The crashed attempt had a1 as an error row; the redo decodes it. Never in both, never read unmarked."""
    store = FeatureStore(str(tmp_path), {})
    store.commit_shard("image", 0, *_tables(["a0"], []), 4)  # an earlier, committed shard
    with monkeypatch.context() as patch:
        hit = crash_on_write(patch, FeatureStore, "write_bytes_atomic", when, matches)
        with pytest.raises(Crash):
            store.commit_shard("image", 1, *_tables(["a2"], ["a1"]), 4)
    assert hit
    assert rows_by_id(str(tmp_path)) == {"a0": ["features"]}  # the unmarked shard is invisible
    store.commit_shard("image", 1, *_tables(["a1", "a2"], []), 4)  # the redo: no errors this time
    assert rows_by_id(str(tmp_path)) == {i: ["features"] for i in ("a0", "a1", "a2")}
    assert not os.path.exists(tmp_path / "errors" / "image-shard-00001.parquet")


@pytest.mark.slow
def test_a_job_stopped_mid_commit_and_mid_summary_then_rerun_keeps_each_item_exactly_once(ray_session, images, tmp_path,
                                                                                           monkeypatch):
    manifest, restore = images
    out = str(tmp_path / "out")
    cfg = EmbedConfig(input=manifest, output=out, shard_size=4, decode={"batch_size": 4},
                      encoders={"image": {"batch_size": 4}})
    steps = [("before", lambda t: t == "_progress/image/shard-00000.json"),  # x03's shard: its files, no marker
             ("before", lambda t: t == "summary.json")]                     # every shard committed, no summary
    for number, (when, matches) in enumerate(steps):
        with monkeypatch.context() as patch:
            hit = crash_on_write(patch, FeatureStore, "write_bytes_atomic", when, matches)
            with pytest.raises(Crash):
                run_embed(cfg)
        assert hit, f"step {number}: the run ended before the crash point"
        seen = rows_by_id(out)
        assert all(len(kinds) == 1 for kinds in seen.values()), (number, seen)
        assert set(seen) == committed_ids(out), number  # readers read committed shards only
        if number == 0:
            assert "x03" not in seen, "the crashed shard's files were read without its marker"
            restore()  # the rerun of x03's shard now decodes it: a feature row, no stale error row
    summary = run_embed(cfg)
    assert summary["modalities"]["image"]["complete"] and summary["modalities"]["image"]["features"] == IMAGES
    assert rows_by_id(out) == {f"x{i:02d}": ["features"] for i in range(IMAGES)}
    assert not [n for _, _, fs in os.walk(out) for n in fs if n.startswith(".tmp-")]


def test_shard_numbers_past_99999_and_temp_files_of_other_modalities(tmp_path):
    store = FeatureStore(str(tmp_path), {})
    assert FeatureStore.shard_index(store.shard_name(123_456) + ".json") == 123_456
    assert FeatureStore.shard_index("image-" + store.shard_name(100_000) + ".parquet") == 100_000
    from pipeline.store.features import ERROR_SCHEMA

    store.commit_shard("text", 100_001, ERROR_SCHEMA.empty_table(), ERROR_SCHEMA.empty_table(), 32)
    assert list(store.committed_shards("text")) == [100_001]
    errors = tmp_path / "errors"
    errors.mkdir()
    (errors / ".tmp-audio-shard-00001.parquet-abc").write_bytes(b"in flight")  # another run's write
    (errors / ".tmp-image-shard-00001.parquet-def").write_bytes(b"left by a killed image run")
    assert store.remove_stale_temp_files("image") == 1
    assert os.listdir(errors) == [".tmp-audio-shard-00001.parquet-abc"]


def test_resume_refuses_settings_that_change_the_rows_and_keeps_the_first_encoder_record(ray_session, sample_corpus,
                                                                                         tmp_path):
    from pipeline.embed.resume import ResumeMismatchError

    out = str(tmp_path / "out")
    base = dict(input=sample_corpus, output=out, modalities=["text"], shard_size=4)
    run_embed(EmbedConfig(**base))
    record = FeatureStore(out, {}).encoder_record("text")
    for change, expected in (({"encoders": {"text": {"max_text_tokens": 8}}}, "max_text_tokens: was None, now 8"),
                             ({"limits": {"max_text_chars": 10}}, "limits.max_text_chars: was 100000, now 10"),
                             ({"encoders": {"text": {"precision": "float16"}}}, "precision: was 'float32', now 'float16'")):
        with pytest.raises(ResumeMismatchError, match=expected):
            run_embed(EmbedConfig(**base, **change))
    # settings that do not change the rows resume, and the run's encoder record stays as it was
    summary = run_embed(EmbedConfig(**base, encoders={"text": {"batch_size": 3, "actors": 1}}))
    assert summary["items_this_run"] == 0
    assert FeatureStore(out, {}).encoder_record("text") == record



def write_part(store, name, tables):
    """A part file of ``tables`` (one piece each) as an encoder actor writes it; each piece's (part, offset, length)."""
    from pipeline.store.parts import pack_pieces

    part = f"{store.parts_dir('image')}/{name}.arrows"
    data, ranges = pack_pieces(tables)
    store.write_bytes_atomic(part, data)
    return [(part, offset, length) for offset, length in ranges]


def test_a_shard_whose_pieces_repeat_rows_commits_each_row_once(tmp_path):
    """A retried actor call writes a second part with rows the first already holds; the commit keeps one copy
    of each row, counts the media encoded once, and reads only its own shard's piece of a part."""
    import numpy as np
    import pyarrow as pa

    from pipeline.store.parts import commit_parts, part_schema

    store = FeatureStore(str(tmp_path), {})
    schema = part_schema(1, 4, "float32")

    def part(rows, first, ok):
        n = len(rows)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(np.array(rows, np.float32), 4)), 4,
                                                mask=pa.array([not o for o in ok]))
        table = pa.Table.from_arrays([pa.array([f"x{r}" for r in rows]), pa.array([f"/m/{r}.png" for r in rows]),
                                      pa.array(rows, pa.int64()), pa.array(first), pa.array(ok),
                                      pa.array(["" if o else "decode" for o in ok]),
                                      pa.array([None if o else "image: corrupt" for o in ok], pa.string()), emb,
                                      pa.array([False] * n)], schema=schema)
        return table

    # each call's part also holds a piece of shard 1 (rows 4-7), which shard 0's commit must not read
    first, _ = write_part(store, "call", [part([0, 1, 2], [True, False, True], [True, True, False]),  # 0, 1: one image
                                          part([4, 5], [True, True], [True, True])])
    retry, _ = write_part(store, "retry", [part([2, 3], [True, True], [False, True]),  # the retry repeats row 2
                                           part([5], [True], [True])])
    counts = commit_parts(str(tmp_path), {}, "image", 0, [first, retry], "enc", 1)
    assert counts == {"features": 3, "errors": {"read": 0, "decode": 1, "encode": 0}, "dim": 4, "unique": 3}
    store.start_run("image", {"run": 1}, {})
    store.write_marker("image", 0, counts)
    assert rows_by_id(str(tmp_path)) == {"x0": ["features"], "x1": ["features"], "x2": ["errors"], "x3": ["features"]}

    size = os.path.getsize(tmp_path / first[0])  # a range past the file's end: the part is not what was recorded
    with pytest.raises(RuntimeError, match=rf"call.arrows holds {size} bytes at offset 0, expected {size + 1}"):
        commit_parts(str(tmp_path), {}, "image", 0, [(first[0], 0, size + 1)], "enc", 1)
    os.remove(tmp_path / retry[0])
    with pytest.raises(RuntimeError, match=r"a part file of the shard is gone .*retry.arrows"):
        commit_parts(str(tmp_path), {}, "image", 0, [first, retry], "enc", 1)


def test_a_shard_with_linked_rows_joins_each_to_the_outcome_its_lead_sent(tmp_path):
    """Rows whose media was first named in another read chunk arrive twice: their id (linked, from their own
    chunk) and their outcome (id null, from the lead's work row; a retry may send it twice). The commit joins
    them; a linked row without its outcome is an error, not a row lost."""
    import numpy as np
    import pyarrow as pa

    from pipeline.store.parts import commit_parts, part_schema

    store = FeatureStore(str(tmp_path), {})
    schema = part_schema(1, 2, "float32")

    def part(name, rows, ids, ok, linked):
        emb = pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(np.array(rows, np.float32), 2)), 2,
                                                mask=pa.array([not o for o in ok]))
        table = pa.Table.from_arrays([
            pa.array(ids, pa.string()), pa.array([f"/m/{r % 2}.png" for r in rows]), pa.array(rows, pa.int64()),
            pa.array([i is not None and not k for i, k in zip(ids, linked)]), pa.array(ok),
            pa.array(["" if o or k else "decode" for o, k in zip(ok, linked)]),
            pa.array([None if o or k else "image: corrupt" for o, k in zip(ok, linked)], pa.string()), emb,
            pa.array(linked)], schema=schema)
        return write_part(store, name, [table])[0]

    ids = part("ids", [0, 1, 2], ["x0", "x1", "x2"], [True, False, False], [False, True, True])
    sent = part("sent", [1, 2], [None, None], [True, False], [False, False])      # row 1: a vector, row 2: an error
    retried = part("retried", [1], [None], [True], [False])
    counts = commit_parts(str(tmp_path), {}, "image", 0, [ids, sent, retried], "enc", 1)
    assert counts == {"features": 2, "errors": {"read": 0, "decode": 1, "encode": 0}, "dim": 2, "unique": 1}
    store.start_run("image", {"run": 1}, {})
    store.write_marker("image", 0, counts)
    features = read_features(str(tmp_path), "image")
    assert features.column("id").to_pylist() == ["x0", "x1"]
    np.testing.assert_array_equal(embeddings(features)[1], [[1.0, 1.0]])  # x1 has the vector its lead sent
    assert read_errors(str(tmp_path)).column("id").to_pylist() == ["x2"]

    lonely = part("lonely", [3], ["x3"], [False], [True])
    with pytest.raises(RuntimeError, match=r"linked rows \[3\] have no outcome"):
        commit_parts(str(tmp_path), {}, "image", 0, [lonely], "enc", 1)


def test_a_record_for_a_shard_already_handed_to_the_committer_is_ignored(ray_session, tmp_path):
    """A retried actor call resends a part of a shard the driver has already handed to the committer: the record
    must not reopen the shard (it would wait forever for rows that never come and end the run incomplete)."""
    import numpy as np

    from pipeline.embed.committer import Committer
    from pipeline.embed.job import ModalityRun
    from pipeline.embed.stages import media_links
    from pipeline.modality import Modality
    from pipeline.store.manifest import plan_manifest

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"t{i}", "text": f"caption {i}"}) + "\n" for i in range(6)))
    plan = plan_manifest(str(manifest), {}, shard_size=4)  # shard 0: rows 0-3, shard 1: rows 4-5
    text = Modality("text")
    todo = np.array([False, True])  # shard 0 handed over already
    run = ModalityRun(text, None, None, None, todo, media_links(plan, text, todo))
    committer = Committer(plan, [run], FeatureStore(str(tmp_path / "out"), {}), {})
    try:
        bits = np.packbits(np.array([1, 1, 1, 1], bool)).tobytes()
        late = {"modality": "text", "shard": 0, "bits": bits, "vbits": bytes(1), "part": "_parts/text/late.arrows",
                "offset": 0, "length": 10, "pieces": 2}
        committer._add(late)
        assert committer.pending == {} and committer.in_flight == {} and not run.todo[0]
        assert committer.live == {0: ["_parts/text/late.arrows", 1]}  # its other piece is still to come
        half = np.packbits(np.array([1, 0, 0, 0], bool)).tobytes()  # shard 1 holds 2 rows: 1 of them arrived
        committer._add({**late, "shard": 1, "bits": half, "offset": 10})
        assert list(committer.pending) == [("text", 1)] and committer.in_flight == {} and run.todo[1]
        assert committer.pending[("text", 1)][2].tolist() == [0, 10, 10]  # part 0, offset, length
    finally:
        import ray

        ray.kill(committer.actor)


def test_a_shard_is_marked_as_soon_as_its_commit_returns_not_when_the_next_batch_comes(ray_session, tmp_path):
    """The pipeline may go quiet between batches (slow decoding, the last batches in flight): a committed shard's
    marker must not wait for the next batch, or a crash then would redo it (seen: a resume test whose input
    waited on markers stalled four minutes)."""
    import time

    import numpy as np
    import pyarrow as pa

    from pipeline.config import EncoderConfig
    from pipeline.embed.committer import Committer
    from pipeline.embed.job import ModalityRun
    from pipeline.embed.stages import RECORD_SCHEMA, media_links
    from pipeline.encoders.presets import resolve_encoder
    from pipeline.modality import Modality
    from pipeline.store.manifest import plan_manifest
    from pipeline.store.parts import pack_pieces, part_schema

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"t{i}", "text": f"caption {i}"}) + "\n" for i in range(4)))
    plan = plan_manifest(str(manifest), {}, shard_size=4)
    text = Modality("text")
    store = FeatureStore(str(tmp_path / "out"), {})
    part = f"{store.parts_dir(text)}/p.arrows"
    data, [(offset, length)] = pack_pieces([pa.Table.from_pydict(
        {"id": [f"t{i}" for i in range(4)], "uri": [None] * 4, "row": list(range(4)), "first": [True] * 4,
         "ok": [True] * 4, "stage": [None] * 4, "error": [None] * 4,
         "embedding": [[float(i)] * 2 for i in range(4)], "linked": [False] * 4}, schema=part_schema(1, 2, "float32"))])
    store.write_bytes_atomic(part, data)
    todo = np.array([True])
    run = ModalityRun(text, resolve_encoder(EmbedConfig(preset="tiny"), text), EncoderConfig(), None, todo,
                       media_links(plan, text, todo))
    committer = Committer(plan, [run], store, {})
    marker = os.path.join(store.root, "_progress", "text", "shard-00000.json")
    seen = {}

    class QuietPipeline:  # one batch completing shard 0, then nothing until the marker shows (or 60 s pass)
        def iter_batches(self, **_):
            bits = np.packbits(np.ones(4, bool)).tobytes()
            yield pa.Table.from_pylist([{"modality": "text", "shard": 0, "part": part, "offset": offset,
                                         "length": length, "pieces": 1, "bits": bits, "vbits": bytes(1)}], RECORD_SCHEMA)
            start = time.time()
            while not os.path.exists(marker) and time.time() - start < 60:
                time.sleep(0.05)
            seen["marked_while_waiting"] = os.path.exists(marker)
            while os.path.exists(os.path.join(store.root, part)) and time.time() - start < 60:
                time.sleep(0.05)  # its only piece is in a marked shard: the part goes now, not at the run's end
            seen["part_gone_while_waiting"] = not os.path.exists(os.path.join(store.root, part))

    committer.consume(QuietPipeline())
    assert seen["marked_while_waiting"] and seen["part_gone_while_waiting"]
    assert committer.done == {"text": 1} and committer.items == 4
    assert sorted(read_features(store.root, text).column("id").to_pylist()) == ["t0", "t1", "t2", "t3"]
