"""The embed job on a mixed corpus: every input lands in features or errors, exactly once."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.embed.config import EmbedConfig
from pipeline.embed.job import run_embed
from pipeline.media.ffmpeg import find_ffmpeg
from pipeline.modality import Modality
from pipeline.store.features import embeddings, read_errors, read_features
from pipeline.modalities.depth import depth_map, write_depth
from pipeline.synthetic.draw import concept, draw_shape
from tests.media_factory import jpeg_with_orientation, write_bad_media
from tests.ray_metrics import job_counters

DEPTH_FORMATS = Modality("depth").spec.synthetic.formats

LIMITS = {"max_file_bytes": 200_000, "max_image_pixels": 1_000_000, "max_audio_seconds": 3,
          "max_video_seconds": 10, "max_text_chars": 1000, "decode_timeout_s": 60}


@pytest.fixture(scope="session")
def mixed(session_dir, sample_corpus):
    """Manifest = the 12 good samples + one row per kind of bad input; expected outcome per (id, modality)."""
    folder = os.path.join(session_dir, "mixed")
    bad = write_bad_media(os.path.join(folder, "bad"), find_ffmpeg())
    jpeg_with_orientation(os.path.join(folder, "bad", "rotated.jpg"))
    corpus_dir = os.path.dirname(sample_corpus)
    rows, expected = [], {}
    with open(sample_corpus) as fh:
        for line in fh:
            row = json.loads(line)
            for m in ("image", "audio", "video"):
                row[m] = os.path.join(corpus_dir, row[m])  # absolute paths
            rows.append(row)
            expected.update({(row["id"], m): None for m in ("image", "text", "audio", "video")})

    def add(row_id, modality, value, stage, message):
        rows.append({"id": row_id, modality: value})
        expected[(row_id, modality)] = (stage, message)

    add("img-truncated", "image", bad["truncated_image"], "decode", "corrupt or truncated image")
    add("img-garbage", "image", bad["garbage_image"], "decode", "not an image format")
    add("img-text", "image", bad["text_as_image"], "decode", "not an image format")
    add("img-empty", "image", bad["empty_image"], "read", "empty file (0 bytes)")
    add("img-bomb", "image", bad["bomb_image"], "decode", "over limits.max_image_pixels=1000000")
    add("img-oversized", "image", bad["oversized_image"], "read", "over limits.max_file_bytes=200000")
    add("img-missing", "image", "bad/does-not-exist.png", "read", "file not found")
    add("img-wrong-type", "image", 5, "read", "expected a URI string, got int")
    add("img-ftp", "image", "ftp://example.com/a.png", "read", "unsupported URI scheme 'ftp'")
    add("img-dir", "image", "bad", "read", "not a regular file")
    add("aud-garbage", "audio", bad["garbage_audio"], "decode", "ffmpeg could not decode audio")
    add("aud-empty", "audio", bad["empty_audio"], "read", "empty file (0 bytes)")
    add("aud-long", "audio", bad["long_audio"], "decode", "longer than limits.max_audio_seconds=3")
    add("aud-missing", "audio", "nowhere/x.wav", "read", "file not found")
    unreadable = "ffmpeg could not decode video: Error opening input files: Invalid data found when processing input"
    add("vid-garbage", "video", bad["garbage_video"], "decode", unreadable)
    # the container opens, but holds no video stream to read
    add("vid-audio-only", "video", bad["audio_only_video"], "decode", "no video stream in the file: expected a file with a video stream")
    add("vid-truncated", "video", bad["truncated_video"], "decode", unreadable)  # the mp4's index (moov atom) is cut off
    add("txt-empty", "text", "   ", "decode", "empty text")
    add("txt-long", "text", "word " * 300, "decode", "over limits.max_text_chars=1000")
    add("txt-wrong-type", "text", ["a", "list"], "read", "expected a string, got list")
    for i, fmt in enumerate(DEPTH_FORMATS):  # depth maps: 16-bit PNG, .npy, float TIFF
        name = os.path.join(folder, f"depth-{i}.{fmt}")
        write_depth(name, depth_map(*concept(i)))
        rows.append({"id": f"dep-{fmt}", "depth": name})
        expected[(f"dep-{fmt}", "depth")] = None
    draw_shape("red", "circle").save(os.path.join(folder, "colour.png"))
    add("dep-rgb", "depth", os.path.join(folder, "colour.png"), "decode", "depth map has RGB pixels")
    np.save(os.path.join(folder, "pickled.npy"), np.array([{"x": 1}], dtype=object), allow_pickle=True)
    add("dep-pickle", "depth", os.path.join(folder, "pickled.npy"), "decode", "expected integer or float depths")
    add("dep-empty", "depth", bad["empty_image"], "read", "empty file (0 bytes)")
    rows.append({"id": "img-rotated", "image": "bad/rotated.jpg", "text": "a green square"})
    expected[("img-rotated", "image")] = None
    expected[("img-rotated", "text")] = None
    manifest = os.path.join(folder, "manifest.jsonl")
    with open(manifest, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return manifest, expected


@pytest.fixture(scope="session")
def mixed_run(ray_session, mixed, session_dir, kept_as_built):
    manifest, expected = mixed
    out = os.path.join(session_dir, "mixed-out")
    cfg = EmbedConfig(input=manifest, output=out, shard_size=5, limits=LIMITS,
                      encoders={"image": {"tokens": 2, "dtype": "float32"}, "text": {"tokens": 1}})
    yield from kept_as_built((out, run_embed(cfg), expected, cfg), out)  # read-only for the tests that share it


def all_rows(out):
    rows = []
    for m in ("image", "text", "audio", "video", "depth"):
        t = read_features(out, m)
        rows += [(i, m, None) for i in t.column("id").to_pylist()] if t.num_rows else []
    e = read_errors(out)
    rows += list(zip(e.column("id").to_pylist(), e.column("modality").to_pylist(),
                     zip(e.column("stage").to_pylist(), e.column("error").to_pylist())))
    return rows


def test_every_input_has_exactly_one_row(mixed_run):
    out, _, expected, _ = mixed_run
    keys = [(i, m) for i, m, _ in all_rows(out)]
    assert len(keys) == len(set(keys)), "duplicate rows"
    assert set(keys) == set(expected)


def test_the_job_counts_its_rows_and_errors_in_ray_metrics(mixed_run):
    """The embed job's workers count feature rows and error rows by stage as they write them (on top of what other
    jobs of this Ray session counted, hence at least)."""
    out, _, expected, _ = mixed_run
    wanted: dict[tuple[str, str], float] = {}
    for (_, modality), error in expected.items():
        key = ("ray_oneencoder_job_rows_total", modality) if error is None else \
            ("ray_oneencoder_job_errors_total", f"{modality}/{error[0]}")
        wanted[key] = wanted.get(key, 0) + 1
    got = job_counters("embed", wanted)
    assert all(got.get(k, 0) >= v for k, v in wanted.items()), {k: (got.get(k), v) for k, v in wanted.items()}


def test_bad_inputs_land_in_errors_with_stage_and_message(mixed_run):
    out, _, expected, _ = mixed_run
    got = {(i, m): err for i, m, err in all_rows(out)}
    for key, want in expected.items():
        if want is None:
            assert got[key] is None, f"{key} should have features, got error {got[key]}"
        else:
            stage, message = got[key]
            assert stage == want[0] and message.startswith(f"{key[1]}: ") and want[1] in message, (key, got[key])


def test_feature_contract(mixed_run):
    out, _, _, _ = mixed_run
    image = pq.read_table(os.path.join(out, "features", "image"))  # plain pyarrow, whole folder
    assert image.schema.names == ["id", "modality", "uri", "encoder", "embedding"]
    emb_type = image.schema.field("embedding").type
    assert isinstance(emb_type, pa.FixedShapeTensorType) and emb_type.shape == [2, 32]
    assert emb_type.value_type == pa.float32()
    arr = embeddings(image)
    assert arr.shape == (image.num_rows, 2, 32) and np.isfinite(arr).all()
    assert set(image.column("modality").to_pylist()) == {"image"}
    assert set(image.column("encoder").to_pylist()) == {"oneencoder/tiny-image@v1"}
    assert all(u.endswith((".png", ".jpg")) and os.path.isabs(u) for u in image.column("uri").to_pylist())
    text = read_features(out, "text")
    assert text.schema.field("embedding").type.value_type == pa.float16()
    assert embeddings(text).shape == (text.num_rows, 1, 32) and text.column("uri").null_count == text.num_rows
    df = pd.read_parquet(os.path.join(out, "features", "audio"))
    assert len(df) == 12 and len(df.embedding.iloc[0]) == 32


def test_pipeline_vectors_match_the_encoder_called_directly(mixed_run):
    from pipeline.encoders.frozen import FrozenEncoder, read_input_spec
    from pipeline.encoders.presets import resolve_encoder
    from pipeline.media.decode import DecodeSettings, decode_item
    from pipeline.modality import Modality
    from pipeline.store.sources import storage_options

    out, _, _, cfg = mixed_run
    for modality in (Modality("image"), Modality("text"), Modality("video")):
        table = read_features(out, modality)
        ids = table.column("id").to_pylist()
        row = ids.index("s00003")
        ref, enc = resolve_encoder(cfg, modality), cfg.encoder(modality)
        value = "a yellow circle" if modality == "text" else table.column("uri")[row].as_py()
        settings = DecodeSettings(modality, read_input_spec(ref, enc), cfg.limits, storage_options(cfg.storage), find_ffmpeg())
        direct = FrozenEncoder(ref, enc).embed([decode_item(value, settings)])[0]
        np.testing.assert_allclose(embeddings(table)[row].astype(np.float32), direct, atol=2e-3, rtol=2e-3)


@pytest.mark.slow
def test_fused_actors_give_the_rows_and_vectors_decode_tasks_give(mixed_run, ray_session, tmp_path):
    """The mixed corpus (every modality, ffmpeg's included) as the defaults embed it on CPU (the encoder actors
    decoding: decode.fused null), embedded again with decode tasks (decode.fused false, as on GPU nodes): the same
    feature rows, the same error rows (stage and message) and the same vectors."""
    from pipeline.embed.job import _pool

    out, summary, _, cfg = mixed_run
    assert _pool(cfg, [cfg.encoder(m) for m in summary["modalities"]], 2.0)["fused"]
    tasks_out = str(tmp_path / "tasks")
    tasks = run_embed(cfg.model_copy(update={"output": tasks_out, "decode": cfg.decode.model_copy(
        update={"fused": False})}))
    assert {m: s["items"] for m, s in tasks["modalities"].items()} == \
        {m: s["items"] for m, s in summary["modalities"].items()}
    assert sorted(all_rows(tasks_out), key=str) == sorted(all_rows(out), key=str)
    for m in ("image", "text", "audio", "video", "depth"):
        a, b = read_features(out, m), read_features(tasks_out, m)
        va = dict(zip(a.column("id").to_pylist(), embeddings(a).astype(np.float32)))
        vb = dict(zip(b.column("id").to_pylist(), embeddings(b).astype(np.float32)))
        assert va.keys() == vb.keys()
        for key in va:
            np.testing.assert_allclose(va[key], vb[key], atol=2e-3, rtol=2e-3)


def test_summary_counts_match_the_files(mixed_run):
    out, summary, expected, _ = mixed_run
    with open(os.path.join(out, "summary.json")) as fh:
        on_disk = json.load(fh)
    assert on_disk["modalities"] == summary["modalities"]
    image = summary["modalities"]["image"]
    assert image["items"] == 23 and image["features"] == 13
    assert image["errors"] == {"read": 6, "decode": 4, "encode": 0}
    assert image["tokens"] == 2 and image["dim"] == 32 and image["dtype"] == "float32" and image["complete"]
    assert summary["items_this_run"] == len(expected)


def test_rerun_resumes_to_a_no_op(mixed_run, ray_session, tmp_path):
    import shutil

    out = shutil.copytree(mixed_run[0], str(tmp_path / "out"))  # the rerun rewrites the summary: the shared run stays
    cfg = mixed_run[3].model_copy(update={"output": out})
    before = {p: os.stat(os.path.join(r, p)).st_mtime_ns for r, _, fs in os.walk(out) for p in fs if p.endswith(".parquet")}
    summary = run_embed(cfg)
    after = {p: os.stat(os.path.join(r, p)).st_mtime_ns for r, _, fs in os.walk(out) for p in fs if p.endswith(".parquet")}
    assert summary["items_this_run"] == 0 and before == after


@pytest.fixture(scope="module")
def coco_shaped(session_dir, sample_corpus, tmp_path_factory):
    """COCO's shape: 6 images and 6 audio clips, each named by 4 rows (own ids, shuffled), and an ffmpeg that
    logs every call, so decodes per clip are counted outside our code."""
    folder = tmp_path_factory.mktemp("coco")
    corpus = os.path.dirname(sample_corpus)
    with open(sample_corpus) as fh:
        samples = [json.loads(line) for line in fh][:6]
    rows = [{"id": f"c{s}-{copy}", "image": os.path.join(corpus, sample["image"]),
             "audio": os.path.join(corpus, sample["audio"]), "text": sample["text"]}
            for s, sample in enumerate(samples) for copy in range(4)]
    np.random.default_rng(0).shuffle(rows)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = folder / "ffmpeg-calls.log"
    wrapper = folder / "logging-ffmpeg"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexec {find_ffmpeg()} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(manifest), rows, str(wrapper), calls, [os.path.join(corpus, s["audio"]) for s in samples]


@pytest.mark.slow
def test_each_unique_media_is_decoded_and_encoded_once_and_every_id_gets_its_row(ray_session, coco_shaped, tmp_path):
    manifest, rows, wrapper, calls, clips = coco_shaped
    runs = {}
    for dedupe in (True, False):
        calls.write_text("")
        out = str(tmp_path / f"out-{dedupe}")
        summary = run_embed(EmbedConfig(input=manifest, output=out, ffmpeg=wrapper, dedupe=dedupe, shard_size=5))
        log = calls.read_text()
        runs[dedupe] = out, summary, [log.count(clip) for clip in clips]
    out, summary, per_clip = runs[True]
    for m in ("image", "audio", "text"):
        assert summary["modalities"][m]["items"] == 24 and summary["modalities"][m]["unique"] == 6, m
        assert summary["modalities"][m]["complete"]
        table = read_features(out, m)
        assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)  # one row per id
        vectors = dict(zip(table.column("id").to_pylist(), embeddings(table)))
        for r in rows:  # every id naming a media carries that media's vector
            np.testing.assert_array_equal(vectors[r["id"]], vectors[r["id"].rsplit("-", 1)[0] + "-0"])
    assert read_errors(out).num_rows == 0
    _, undeduped, per_clip_undeduped = runs[False]
    assert undeduped["modalities"]["audio"]["unique"] == 24
    calls_per_decode = per_clip[0]
    assert calls_per_decode >= 1 and per_clip == [calls_per_decode] * 6  # each clip decoded once
    assert per_clip_undeduped == [4 * calls_per_decode] * 6               # without dedupe: once per row
    for m in ("image", "audio", "text"):  # the same vectors either way
        a, b = read_features(out, m), read_features(runs[False][0], m)
        va, vb = dict(zip(a.column("id").to_pylist(), embeddings(a))), dict(zip(b.column("id").to_pylist(), embeddings(b)))
        for key in va:
            np.testing.assert_allclose(va[key].astype(np.float32), vb[key].astype(np.float32), atol=2e-3)


@pytest.mark.slow
def test_media_repeated_across_read_chunks_is_encoded_once_and_resumes(ray_session, coco_shaped, tmp_path,
                                                                      monkeypatch):
    """The COCO shape in read chunks of 5 rows (pieces of ~2 rows) and shards of 5: most repeats of a media are
    in another chunk than its first row. Each image and clip is still decoded and encoded once; every id gets
    the media's vector. Then shards are uncommitted (as a crash leaves them) in both directions: a first row's
    shard redone while its repeats stay committed, and the reverse; the rerun restores the same rows."""
    from pipeline.store import manifest as manifest_module

    monkeypatch.setattr(manifest_module, "PIECE_BYTES", 400)  # the driver's pieces: chunks end at piece ends
    manifest, rows, wrapper, calls, clips = coco_shaped
    calls.write_text("")
    out = str(tmp_path / "out")
    cfg = EmbedConfig(input=manifest, output=out, ffmpeg=wrapper, shard_size=5, chunk_rows=5,
                      modalities=["image", "audio"])
    plan = manifest_module.plan_manifest(manifest, {}, 5, 5, repeats=True)
    assert len(plan.chunks) >= 4 and len(plan.repeats["image"][0]) >= 12  # repeats do span chunks
    summary = run_embed(cfg)
    per_clip = [calls.read_text().count(clip) for clip in clips]
    assert per_clip[0] >= 1 and per_clip == [per_clip[0]] * 6  # each clip decoded once, across chunks
    before = {}
    for m in ("image", "audio"):
        assert summary["modalities"][m]["items"] == 24 and summary["modalities"][m]["unique"] == 6, m
        assert summary["modalities"][m]["complete"]
        table = read_features(out, m)
        assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
        before[m] = dict(zip(table.column("id").to_pylist(), embeddings(table)))
        for r in rows:
            np.testing.assert_array_equal(before[m][r["id"]], before[m][r["id"].rsplit("-", 1)[0] + "-0"])
    assert read_errors(out).num_rows == 0

    for redo in ([0, 1], [3, 4]):  # the first rows' shards, then later shards holding repeats
        for m in ("image", "audio"):
            for shard in redo:
                os.remove(os.path.join(out, "_progress", m, f"shard-{shard:05d}.json"))
        again = run_embed(cfg)
        assert again["items_this_run"] == 2 * sum(min(5, 24 - 5 * s) for s in redo)
        for m in ("image", "audio"):
            assert again["modalities"][m]["complete"] and again["modalities"][m]["items"] == 24
            table = read_features(out, m)
            assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
            for key, vector in zip(table.column("id").to_pylist(), embeddings(table)):
                np.testing.assert_allclose(vector.astype(np.float32), before[m][key].astype(np.float32), atol=2e-3)
    assert read_errors(out).num_rows == 0


def test_an_encoder_call_writes_one_part_however_many_shards_its_rows_fall_in(tmp_path):
    """COCO-shaped rows in one call: 4 captions, each named by rows scattered over 12 shards of 2. The actor writes
    one part file (not one per shard: at corpus scale that was ~260 files of 1-2 rows per call), a record per
    shard with its own byte range; each shard's commit reads only its piece and gets its 2 rows."""
    from pipeline.embed.stages import EncodeActor, decode_work, work_rows
    from pipeline.encoders.frozen import read_input_spec
    from pipeline.encoders.presets import resolve_encoder
    from pipeline.media.decode import DecodeSettings
    from pipeline.modality import Modality
    from pipeline.store.features import FeatureStore
    from pipeline.store.parts import commit_parts

    text, cfg = Modality("text"), EmbedConfig(preset="tiny")
    enc, ref = cfg.encoder(text), resolve_encoder(cfg, text)
    settings = {"text": DecodeSettings(text, read_input_spec(ref, enc), cfg.limits, {}, "")}
    items = pa.table({"row": pa.array(range(24), pa.int64()), "id": [f"t{r}" for r in range(24)],
                      "text": [f"caption {r % 4}" for r in range(24)], "text:error": pa.nulls(24, pa.string())})
    work = work_rows(items, text, str(tmp_path), dedupe=True)
    assert work.num_rows == 4
    actor = EncodeActor({"text": (ref, enc)}, settings, str(tmp_path), {}, shard_size=2)
    (block,) = decode_work(work, settings)  # one block: no block_bytes
    records = actor(block).to_pylist()
    parts = os.listdir(tmp_path / "_parts" / "text")
    assert len(parts) == 1 and {r["part"] for r in records} == {f"_parts/text/{parts[0]}"}
    assert sorted(r["shard"] for r in records) == list(range(12)) and {r["pieces"] for r in records} == {12}
    ranges = sorted((r["offset"], r["length"]) for r in records)
    assert all(a + n == b for (a, n), (b, _) in zip(ranges, ranges[1:]))  # back to back, no overlap
    assert ranges[-1][0] + ranges[-1][1] == os.path.getsize(tmp_path / "_parts" / "text" / parts[0])
    store = FeatureStore(str(tmp_path), {})
    store.start_run("text", {"run": 1}, {})
    for r in records:
        counts = commit_parts(str(tmp_path), {}, "text", r["shard"], [(r["part"], r["offset"], r["length"])],
                              ref.name, enc.tokens)
        assert counts["features"] == 2 and sum(counts["errors"].values()) == 0
        store.write_marker("text", r["shard"], counts)
    table = read_features(str(tmp_path), "text")
    assert table.column("id").to_pylist() == [f"t{r}" for r in range(24)]
    vectors = embeddings(table)
    for r in range(24):
        np.testing.assert_array_equal(vectors[r], vectors[r % 4])
    assert len({vectors[c].tobytes() for c in range(4)}) == 4


def test_shards_spanning_read_chunks_commit_each_row_once(ray_session, sample_corpus, tmp_path):
    """12 rows in chunks of 5 and shards of 4: shards 1 and 2 get their rows from two read tasks each."""
    out = str(tmp_path / "out")
    summary = run_embed(EmbedConfig(input=sample_corpus, output=out, modalities=["text", "image"], chunk_rows=5,
                                    shard_size=4))
    for m in ("text", "image"):
        assert summary["modalities"][m]["complete"] and summary["modalities"][m]["shards_committed"] == 3
        ids = read_features(out, m).column("id").to_pylist()
        assert sorted(ids) == [f"s{i:05d}" for i in range(12)]
    assert not os.path.exists(os.path.join(out, "_parts", "text")) or not os.listdir(os.path.join(out, "_parts", "text"))


def test_an_encoder_pool_that_leaves_decoding_no_cpu_is_refused_before_it_stalls(ray_session, sample_corpus, tmp_path):
    """Two actors of 0.7 CPU on the session's 2 CPUs leave 0.6: Ray Data's repartition task (1 CPU) would wait
    forever (seen by hand: 10 minutes without progress). The job says so before starting anything."""
    from pipeline.config import ConfigError

    out = str(tmp_path / "out")
    cfg = EmbedConfig(input=sample_corpus, output=out, modalities=["text"],
                      encoders={"text": {"actors": 2, "num_cpus": 0.7}})
    with pytest.raises(ConfigError, match=r"2 actor\(s\) x num_cpus 0.7 hold 1.4 of the cluster's 2 CPUs.*"
                                          r"expected actors x num_cpus <= 1 on this cluster"):
        run_embed(cfg)
    assert not os.path.exists(os.path.join(out, "features"))  # refused before any shard
    fits = run_embed(EmbedConfig(input=sample_corpus, output=out, modalities=["text"],
                                 encoders={"text": {"actors": 2, "num_cpus": 0.5}}))
    assert fits["modalities"]["text"]["complete"]  # 1 CPU for the pool, 1 for the rest: it runs


def test_the_encoder_pool_decodes_itself_on_cpu_and_leaves_decoding_to_tasks_on_gpu():
    """decode.fused null: the actors decode when every encoder runs on CPU (no trip through the object store; as
    many actors as the cluster's CPUs, at least one started, sharing what reading leaves, one batch each: threads
    would contend for the GIL while decoding), decode tasks when an encoder has a GPU or decode.resources places
    decoding. With decode tasks, concurrent_batches null: 2 on CPU (one batch computes while another is unpacked
    or written; measured in benchmark_embed), 1 on GPU; the pool takes the largest any modality asks for."""
    from pipeline.config import EncoderConfig
    from pipeline.embed.job import _pool

    fused = _pool(EmbedConfig(), [EncoderConfig()], 8.0)
    assert (fused["fused"], fused["actors"], fused["min_actors"], fused["calls"]) == (True, 8, 1, 1)
    assert fused["num_cpus"] == 0.88 and fused["threads"] == 1  # 7 CPUs beside the read side, shared by 8
    assert _pool(EmbedConfig(), [EncoderConfig()], 2.0)["num_cpus"] == 0.5
    asked = _pool(EmbedConfig(), [EncoderConfig(actors=2, num_cpus=4, concurrent_batches=2)], 16.0)
    assert (asked["actors"], asked["min_actors"], asked["num_cpus"], asked["threads"]) == (2, 2, 4, 2)
    gpu = _pool(EmbedConfig(), [EncoderConfig(), EncoderConfig(num_gpus=1)], 8.0)
    assert (gpu["fused"], gpu["actors"], gpu["num_cpus"], gpu["calls"], gpu["threads"]) == (False, 1, 1.0, 1, None)
    placed = EmbedConfig(decode={"resources": {"decode_node": 0.01}})
    assert not _pool(placed, [EncoderConfig()], 8.0)["fused"]
    tasks = EmbedConfig(decode={"fused": False})
    assert _pool(tasks, [EncoderConfig()], 8.0)["calls"] == 2
    assert _pool(tasks, [EncoderConfig(), EncoderConfig(concurrent_batches=3)], 8.0)["calls"] == 3
    assert _pool(tasks, [EncoderConfig(num_gpus=0.5, concurrent_batches=2)], 8.0)["calls"] == 2
    assert _pool(EmbedConfig(decode={"fused": True}), [EncoderConfig(num_gpus=1)], 8.0)["fused"]  # asked for
    with pytest.raises(ValueError, match="concurrent_batches"):
        EncoderConfig(concurrent_batches=0)



@pytest.mark.slow
def test_a_stalled_pipeline_fails_after_no_progress_timeout_s_saying_what_to_do(ray_session, sample_corpus, tmp_path,
                                                                              capsys):
    """A decoder that never returns (an ffmpeg that hangs, with its own time limit set longer than the job's) stalls
    the pipeline: the job fails once it has made no progress for ``no_progress_timeout_s``, with one `error:` line
    naming that setting, what was still running and what to do (Ray Data's own text names knobs a user of this job
    does not have), not after decode_timeout_s and not never."""
    import re
    import stat
    import time

    from jobs import embed as embed_job

    release, entered = tmp_path / "release", tmp_path / "entered"  # the hung decoders run on (and exit) once released
    hung = tmp_path / "hung-ffmpeg"
    hung.write_text(f"#!/bin/sh\ntouch {entered}\nwhile [ ! -e {release} ]; do sleep 0.1; done\n"
                    f"exec {find_ffmpeg()} \"$@\"\n")
    hung.chmod(hung.stat().st_mode | stat.S_IEXEC)
    config = tmp_path / "stall.yaml"
    config.write_text(f"ffmpeg: {hung}\nno_progress_timeout_s: 15\nlimits: {{decode_timeout_s: 3600}}\n")
    started = time.monotonic()
    try:
        status = embed_job.main(["--input", sample_corpus, "--output", str(tmp_path / "out"), "--modalities", "audio",
                                 "--config", str(config)])
    finally:
        release.touch()  # no ffmpeg of this test outlives it
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert entered.exists()  # the stall was the hung decoder's
    assert status == 1 and took < 150, (status, took, err)  # not decode_timeout_s (an hour), nor a hang
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]  # (Ray's own log lines go there too)
    assert "Traceback" not in err
    assert line.startswith("error: the pipeline made no progress for no_progress_timeout_s = 15 s"), line
    # the hung ffmpeg runs where the job decodes: in the encoder actors on CPU (decode.fused null)
    assert re.search(r"still running: .*MapBatches\(EncodeActor\): [1-9]\d* active task", line), line
    for advice in ("a rerun resumes", "raise no_progress_timeout_s (--no-progress-timeout-s or the config)",
                   "keep limits.decode_timeout_s below it"):
        assert advice in line, (advice, line)
    assert "ds.context" not in line and "DataContext" not in line  # Ray Data's knobs, not this job's
