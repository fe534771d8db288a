"""What the embed pipeline costs apart from its encoders: the null encoder that measures it, decode tasks sized by
the bytes they decode, and local reads that skip fsspec."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import LimitsConfig
from pipeline.embed.config import EmbedConfig
from pipeline.embed.job import BLOCKS_PER_TASK, MAX_DECODE_ROWS, ModalityRun, decode_rows, run_embed
from pipeline.embed.resume import ResumeMismatchError
from pipeline.encoders.null import NULL_DIM, null_encoders
from pipeline.encoders.presets import resolve_encoder
from pipeline.media.decode import DecodeSettings
from pipeline.modalities import InputSpec
from pipeline.modality import Modality
from pipeline.store.errors import ReadError
from pipeline.store.sources import read_limited


def test_the_null_encoder_keeps_every_guarantee_and_a_real_run_does_not_resume_its_store(ray_session, tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    rows = []
    for i in range(12):
        Image.new("RGB", (40 + i, 30), (10 * i, 0, 0)).save(images / f"{i}.png")
        rows.append({"id": f"r{i}", "image": f"img/{i}.png"})
    (images / "bad.png").write_bytes(b"\x89PNG not really")
    rows += [{"id": "bad", "image": "img/bad.png"}, {"id": "again", "image": "img/3.png"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cfg = EmbedConfig(input=str(manifest), output=str(out), shard_size=4)
    summary = run_embed(cfg, resolve=null_encoders)
    image = summary["modalities"]["image"]
    assert image["complete"] and image["features"] == 13 and image["errors"]["decode"] == 1 and image["unique"] == 13
    assert image["encoder"].startswith("null:oneencoder/tiny-image@") and image["dim"] == NULL_DIM
    features = pq.read_table(str(out / "features"))
    assert sorted(features.column("id").to_pylist()) == sorted(r["id"] for r in rows if r["id"] != "bad")
    assert np.all(np.stack(features.column("embedding").to_numpy(zero_copy_only=False)) == 1)
    assert pq.read_table(str(out / "errors")).column("id").to_pylist() == ["bad"]
    assert run_embed(cfg, resolve=null_encoders)["items_this_run"] == 0  # resumes (to a no-op) like any run
    with pytest.raises(ResumeMismatchError, match=r"encoder: was 'null:oneencoder/tiny-image@.*now 'oneencoder/tiny-image@"):
        run_embed(cfg)  # the real encoder never resumes into null vectors


def test_only_code_selects_the_null_encoder():
    cfg = EmbedConfig()
    assert not resolve_encoder(cfg, Modality("image")).null
    names = []

    def properties(node):
        if isinstance(node, dict):
            names.extend(node.get("properties", {}))
            for value in node.values():
                properties(value)
        elif isinstance(node, list):
            for value in node:
                properties(value)

    properties(EmbedConfig.model_json_schema())
    assert "encoders" in names and "model" in names  # the walk finds nested settings
    assert not [name for name in names if "null" in name.lower()]  # no setting, at any depth, selects it


def _run(modality: str, spec: InputSpec, limits: LimitsConfig | None = None) -> ModalityRun:
    settings = DecodeSettings(Modality(modality), spec, limits or LimitsConfig(), {}, "")
    return ModalityRun(Modality(modality), None, None, settings, np.ones(1, bool), None)


@pytest.mark.parametrize("modality, spec, largest", [
    ("image", InputSpec(image_hw=(224, 224)), 448 * 448 * 3),  # at most 2x the input side, RGB
    ("depth", InputSpec(image_hw=(224, 224)), 448 * 448 * 4),  # float32
    ("video", InputSpec(image_hw=(224, 224), num_frames=16), 16 * 224 * 224 * 3),
    ("audio", InputSpec(sample_rate=16000), 4 * 16000 * 60),  # max_audio_seconds, float32
])
def test_decode_tasks_hold_eight_blocks_of_the_largest_decoded_items(modality, spec, largest):
    assert decode_rows(EmbedConfig(), _run(modality, spec), items=10**6, cpus=2) == BLOCKS_PER_TASK * (64 << 20) // largest
    assert decode_rows(EmbedConfig(), _run("image", InputSpec(image_hw=(32, 32))), items=10**6, cpus=2) == MAX_DECODE_ROWS


def test_decode_task_size_bounds_follow_the_config_and_the_cluster():
    image = _run("image", InputSpec(image_hw=(32, 32)))
    assert decode_rows(EmbedConfig(), image, items=100, cpus=2) == 13  # a small run still spreads over the cores
    assert decode_rows(EmbedConfig(), image, items=100, cpus=64) == 1
    assert decode_rows(EmbedConfig(decode={"batch_size": 7}), image, items=10**6, cpus=2) == 7
    big = _run("image", InputSpec(image_hw=(224, 224)))
    assert decode_rows(EmbedConfig(decode={"batch_bytes": 1 << 30}), big, items=10**6, cpus=2) == MAX_DECODE_ROWS
    audio = _run("audio", InputSpec(sample_rate=16000), LimitsConfig(max_audio_seconds=3600))
    assert decode_rows(EmbedConfig(), audio, items=10**6, cpus=2) == 2  # hour-long clips: 230 MB each at most
    assert decode_rows(EmbedConfig(), _run("text", InputSpec()), items=10**6, cpus=2) == 1024  # inline_batch_size
    with pytest.raises(ValueError, match="batch_bytes"):
        EmbedConfig(decode={"batch_bytes": 100})


def test_a_local_read_refuses_what_is_no_regular_file_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    with pytest.raises(ReadError, match=rf"not a regular file: {fifo} is a FIFO"):
        read_limited(str(fifo), {}, 1000)
    with pytest.raises(ReadError, match=rf"not a regular file: {tmp_path} is a directory"):
        read_limited(str(tmp_path), {}, 1000)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ReadError, match="empty file"):
        read_limited(str(tmp_path / "empty"), {}, 1000)
    (tmp_path / "big").write_bytes(b"x" * 1001)
    with pytest.raises(ReadError, match=r"file is 1001 bytes, over limits.max_file_bytes=1000"):
        read_limited(f"file://{tmp_path}/big", {}, 1000)
    with pytest.raises(ReadError, match=r"file not found: .*missing"):
        read_limited(str(tmp_path / "missing"), {}, 1000)
    assert read_limited(str(tmp_path / "big"), {}, 2000) == b"x" * 1001


def test_a_decode_task_hands_its_items_on_in_blocks_of_batch_bytes(tmp_path):
    import pyarrow as pa

    from pipeline.embed.stages import WORK_SCHEMA, EncodeActor, decode_work

    paths = []
    for i in range(10):
        Image.new("RGB", (32, 32), (20 * i, 5, 0)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    paths.append(str(tmp_path / "missing.png"))
    n = len(paths)
    work = pa.table({"modality": ["image"] * n, "value": paths, "pre_error": pa.nulls(n, pa.string()),
                     "rows": [[i] for i in range(n)], "ids": [[f"r{i}"] for i in range(n)], "uris": [[p] for p in paths],
                     "data": pa.nulls(n, pa.large_binary()), "linked": [False] * n}, schema=WORK_SCHEMA)
    cfg = EmbedConfig()
    ref = resolve_encoder(cfg, Modality("image"))
    settings = DecodeSettings(Modality("image"), InputSpec(image_hw=(32, 32)), cfg.limits, {}, "")
    blocks = list(decode_work(work, {"image": settings}, block_bytes=3 * 32 * 32 * 3))
    assert [b.num_rows for b in blocks] == [3, 3, 3, 2]  # three decoded images reach the block's bytes
    table = pa.concat_tables(blocks)
    assert table.column("ok").to_pylist() == [True] * 10 + [False]
    assert "file not found" in table.column("error")[10].as_py()
    assert list(decode_work(work, {"image": settings})) [0].num_rows == n  # no limit: one block
    actor = EncodeActor({"image": (ref, cfg.encoder(Modality("image")))}, {"image": settings}, str(tmp_path / "out"),
                        {}, shard_size=4)
    from pipeline.embed.stages import unpack_column

    last = blocks[-1]  # items 9 and 10 (missing)
    decoded = unpack_column(last.column("payload"), last.column("shape"), last.column("dtype"), [0])
    assert decoded[0].shape == (32, 32, 3) and decoded[0][0, 0].tolist() == [180, 5, 0]  # the bytes, as decoded
    held = last.column("payload").chunk(0).buffers()[2]
    assert held.address <= decoded[0].ctypes.data < held.address + held.size  # a view of the block, not a copy
    records = pa.concat_tables([actor(b) for b in blocks])
    assert sorted(records.column("shard").to_pylist()) == [0, 0, 1, 1, 2, 2]  # a piece per shard per call
    assert sum(records.column("pieces").to_pylist()) == 1 + 4 + 4 + 1  # one part per call: its pieces each name it
