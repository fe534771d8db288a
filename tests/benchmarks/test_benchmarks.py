"""The benchmarks and the quality sweep run through their real main() (tiny preset, small sizes), write their JSON
result, and refuse a bad config before any work."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import decode as decode_bench
from benchmarks import embed as embed_bench
from benchmarks import index as index_bench
from benchmarks import pipeline as pipeline_bench
from benchmarks import quality_sweep, quality_unseen
from benchmarks import scale as scale_bench
from benchmarks import search as search_bench
from benchmarks import search_quality as search_quality_bench
from benchmarks import serve as serve_bench
from benchmarks import store_layout as store_layout_bench
from benchmarks import train as train_bench


@pytest.mark.slow
def test_benchmark_mains_print_their_ratios(ray_session, tmp_path, capsys):
    out = tmp_path / "train.json"
    config = tmp_path / "benchmark_train.yaml"
    config.write_text(f"preset: tiny\nsamples: 16\nbatch_size: 4\nreport: {out}\n")
    assert train_bench.main(["--config", str(config), "--batch-size", "8"]) == 0
    assert "speed-up per epoch" in capsys.readouterr().out
    figures = json.loads(out.read_text())["result"]
    assert figures["speedup"] > 0 and figures["batch_size"] == 8
    embed = tmp_path / "embed.json"
    assert embed_bench.main(["--preset", "tiny", "--images", "32", "--batch-size", "8", "--workdir", str(tmp_path / "b"),
                                 "--trace-cpu", "--report", str(embed)]) == 0
    printed = capsys.readouterr().out
    assert "(b)/(a) = " in printed and "(b)/(a') = " in printed and "(b)/(c) = " in printed
    assert f"two batches at once in threads of {max(1, (os.cpu_count() or 1) // 2)} torch thread(s)" in printed
    assert "(b) CPU seconds by process" in printed
    windows = json.loads(embed.read_text())["result"]["pipeline_cpu_by_process"]
    assert windows[0]["from_s"] == 0 and windows[-1]["to_s"] > 0  # the job's own processes, under their Ray names
    actor = [name for w in windows for name in w["processes"] if name.startswith("ray::MapWorker(") and "EncodeActor" in name]
    assert actor, windows  # ray::MapWorker(MapBatches(EncodeActor)), or with decode fused in when both reserve the same CPUs
    assert any(w["processes"].get("driver (this process)", 0) > 0 for w in windows)
    scale = tmp_path / "scale.json"
    argv = ["--rows", "96,64", "--shard-size", "16", "--ceiling-items", "64", "--startup-samples", "0",
            "--workdir", str(tmp_path / "s"), "--report", str(scale)]
    assert scale_bench.main(argv) == 0
    assert "x ceiling" in capsys.readouterr().out
    figures = json.loads(scale.read_text())["result"]
    assert [r["rows"] for r in figures["runs"]] == [64, 96] and all(r["complete"] for r in figures["runs"])
    assert figures["runs"][0]["driver_rss_vs_smallest"] == 1 and figures["runs"][1]["driver_peak_rss_mb"] > 50
    assert all(r["bytes_per_item"] > 32 and r["driver_received_bytes"] > 0 for r in figures["runs"])
    argv = ["--modality", "image", "--repeat", "4", "--rows", "64", "--shard-size", "16", "--ceiling-items", "64",
            "--startup-samples", "0", "--workdir", str(tmp_path / "coco"), "--report", str(scale)]
    assert scale_bench.main(argv) == 0  # COCO's shape: each image named by 4 scattered rows
    assert "each named by 4 scattered rows" in capsys.readouterr().out
    run = json.loads(scale.read_text())["result"]["runs"][0]
    assert run["complete"] and run["unique"] == 16  # encoded once per image, every row written


@pytest.mark.slow
def test_benchmark_decode_counts_one_request_per_object_on_the_jobs_path(ray_session, tmp_path, capsys):
    report = tmp_path / "decode.json"
    argv = ["--items", "2", "--seconds", "1", "--formats", "flac,mp4", "--rounds", "1", "--workers", "1",
            "--job-items", "6", "--shard-size", "4", "--plan-shards", "3", "--plan-samples", "8", "--markers", "12", "--marker-latency-ms", "5",
            "--report", str(report)]
    assert decode_bench.main(argv) == 0
    assert "job/naive" in capsys.readouterr().out
    figures = json.loads(report.read_text())["result"]
    assert [f["format"] for f in figures["formats"]] == ["flac", "mp4"]
    for f in figures["formats"]:  # the job: one ranged GET; the naive path: a HEAD (or two) and a GET
        assert f["job_requests_per_item"] == 1 and f["naive_requests_per_item"] > 1, f
        assert f["job_items_per_s"] > 0 and f["job_cpu_s_per_item"] > 0
    job = figures["job"]  # the embed job reads each object once, in one GET, and writes per shard
    assert job["shards"] == 2 and job["requests"]["media GET"] == 6 and job["media_requests_per_item"] == 1
    assert job["requests"]["output PUT"] >= 2 * 3  # each shard's features, errors and marker at least
    plan = figures["plan"]  # headers: every tar read whole; img2dataset's .parquet: the first tar only (the check)
    assert plan["headers"]["tars_read"] == 3 and plan["headers"]["tar_bytes_read"] == 3 * plan["tar_bytes"]
    assert plan["auto"]["sidecars"] and plan["auto"]["tars_read"] == 1 and plan["auto"]["parquet_bytes_per_shard"] > 0
    assert plan["headers"]["rows"] == plan["auto"]["rows"] == 24
    markers = figures["markers"]  # read both ways (and checked equal by the benchmark itself)
    assert markers["markers"] == 12 and markers["one_by_one_s"] > markers["list_s"] > 0


def test_benchmark_configs_are_checked_before_any_work(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("preset: tiny\nsamples: 4\nbatch_size: 8\n")
    assert train_bench.main(["--config", str(config)]) == 2
    assert "samples = 4: expected at least batch_size (8)" in capsys.readouterr().err
    assert embed_bench.main(["--images", "16"]) == 2
    assert "images = 16: expected at least 4 x batch_size (64)" in capsys.readouterr().err
    assert scale_bench.main(["--rows", "20000,10"]) == 2
    assert "rows = [20000, 10]: expected sizes of at least 64" in capsys.readouterr().err
    assert scale_bench.main(["--repeat", "5"]) == 2
    assert "repeat = 5 with modality text: expected repeat 1, or modality image" in capsys.readouterr().err
    assert pipeline_bench.main(["--cases", "jpg96,bmp"]) == 2
    assert "unknown case(s) ['bmp']: expected some of png96, jpg96" in capsys.readouterr().err
    assert decode_bench.main(["--formats", "flac,avi"]) == 2
    assert "formats = ['flac', 'avi']: ['avi'] not among" in capsys.readouterr().err
    assert serve_bench.main(["--levels", "1,x"]) == 2
    assert "expected comma-separated integers, e.g. 1,8,32, got '1,x'" in capsys.readouterr().err
    assert serve_bench.main(["--levels", "1,64", "--requests", "32"]) == 2
    assert "requests = 32: expected at least the largest level (64)" in capsys.readouterr().err
    assert index_bench.main(["--libraries", "annoy"]) == 2
    assert "annoy: expected some of faiss, usearch" in capsys.readouterr().err
    assert search_bench.main(["--sizes", "100000,x"]) == 2
    assert "expected comma-separated integers, e.g. 100000,1000000, got '100000,x'" in capsys.readouterr().err
    assert search_quality_bench.main(["--samples", "10"]) == 2
    assert "samples" in capsys.readouterr().err
    assert index_bench.main(["--precisions", "fp16"]) == 2
    assert "fp16: expected some of int8, binary" in capsys.readouterr().err
    assert store_layout_bench.main(["--scenarios", "text,video"]) == 2
    assert "video: expected some of text, image, audio" in capsys.readouterr().err


def test_benchmark_index_measures_both_libraries_against_exact_search(tmp_path, capsys):
    report = tmp_path / "index.json"
    assert index_bench.main(["--vectors", "3000", "--queries", "30", "--clusters", "50", "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "| faiss HNSW |" in printed
    figures = json.loads(report.read_text())["result"]
    libs = figures["libraries"]
    assert set(libs) == {"faiss", "usearch", "faiss-int8", "faiss-binary", "faiss-ivfpq"}
    for lib in libs.values():  # each raised its ef until the recall target, and timed there
        assert lib["reached"] and lib["recall"] >= 0.95 and lib["p50_ms"] > 0
        assert [c["recall"] >= 0.95 for c in lib["curve"]] == [False] * (len(lib["curve"]) - 1) + [True]
    assert libs["faiss"]["bytes_per_vector"] > 256 * 4 and libs["usearch"]["bytes_per_vector"] > 256 * 4
    # the compact graphs hold a byte (int8) or a bit (binary) a dimension besides the same links
    assert libs["faiss-int8"]["bytes_per_vector"] < libs["faiss"]["bytes_per_vector"] - 256 * 3 + 8
    assert libs["faiss-binary"]["bytes_per_vector"] < libs["faiss"]["bytes_per_vector"] - 256 * 31 / 8 + 8
    assert "| faiss binary HNSW, rescored |" in printed and "| faiss IVF76,PQ32 (index job), rescored |" in printed
    for name in ("faiss-int8", "faiss-binary", "faiss-ivfpq"):  # compact codes raise their rescoring, not ef
        assert [c["rescore"] for c in libs[name]["curve"]] == [1, 2, 4, 8, 16, 32, 64, 128][:len(libs[name]["curve"])]
        assert libs[name]["rescore"] == libs[name]["curve"][-1]["rescore"]
        assert f"| {libs[name]['ef']} / {libs[name]['rescore']}k |" in printed
    # codes and ids a vector, and the coarse centroids and codebooks (76 + 256 of 256 floats) spread over 3,000:
    # the index job's lists for 3,000 vectors (4·√3000 = 219, at most 3000 / 39 = 76)
    assert libs["faiss-ivfpq"]["bytes_per_vector"] < 32 + 8 + (76 + 256) * 256 * 4 / 3000 + 8
    assert set(figures["open"]["seconds"]) == {"300", "3000"} and figures["growth"]["added"] > 0



def test_benchmark_store_layout_reads_both_layouts_back_as_the_same_padded_batch(tmp_path, capsys):
    """Variable-length tokens stored padded (the store's fixed_shape_tensor and a tokens column) and as Parquet lists
    read back, each as the benchmark times it, to the same padded float16 batch and lengths; then the benchmark's
    main() at a few items a scenario."""
    lengths = np.array([3, 1, 5, 5, 2], np.int32)  # CAP 5: two items unpadded
    tokens = store_layout_bench.draw(5, 4, lengths, np.random.default_rng(1))
    assert tokens.shape == (16, 4) and tokens.dtype == np.float16
    padded, listed = tmp_path / "padded.parquet", tmp_path / "list.parquet"
    pq.write_table(store_layout_bench.padded_table(tokens, lengths, 5), padded, compression="zstd")
    pq.write_table(store_layout_bench.list_table(tokens, lengths), listed, compression="zstd")
    schema = pq.read_schema(padded)
    assert schema.field("embedding").type == pa.fixed_shape_tensor(pa.float16(), [5, 4])
    assert schema.field("tokens").type == pa.int32() and schema.field("id").type == pa.string()
    assert pq.read_schema(listed).field("embedding").type == pa.list_(pa.list_(pa.float16(), 4))
    a, la = store_layout_bench.read_padded(str(padded))
    b, lb = store_layout_bench.read_list(str(listed), 5)
    assert a.dtype == b.dtype == np.float16 and a.shape == b.shape == (5, 5, 4)
    assert np.array_equal(a, b) and la.tolist() == lb.tolist() == lengths.tolist()
    assert np.array_equal(a[1, 0], tokens[3]) and not a[1, 1:].any()  # item 1: the token after item 0's 3, then zeros
    assert np.array_equal(a[3], tokens[9:14]) and np.array_equal(a[4, :2], tokens[14:]) and not a[4, 2:].any()
    part, lp = store_layout_bench.list_arrays(pq.read_table(listed).slice(2, 2), 5)  # a slice: offsets not from 0
    assert np.array_equal(part, a[2:4]) and lp.tolist() == [5, 5]

    report = tmp_path / "store_layout.json"
    argv = ["--items", "6", "--reads", "1", "--report", str(report)]
    assert store_layout_bench.main(argv) == 0
    printed = capsys.readouterr().out
    record = json.loads(report.read_text())
    assert record["command"] == "python -m benchmarks.store_layout --items 6 --reads 1"
    r = record["result"]
    assert store_layout_bench.format_store_layout(r) in printed
    assert r["items"] == 6 and list(r["scenarios"]) == ["text", "image", "audio"]
    for name, s in r["scenarios"].items():
        dim, cap = s["dim"], s["cap"]
        assert s["padded_memory_bytes_per_item"] == cap * dim * 2
        assert abs(s["floor_bytes_per_item"] - s["lengths"]["mean"] * dim * 2) < 1e-6
        assert 1 <= s["lengths"]["min"] <= s["lengths"]["mean"] <= s["lengths"]["max"] <= cap
        for x in s["layouts"].values():  # random float16 values barely compress: about the floor, each
            assert 0.85 < x["vs_floor"] < 1.15, (name, x)
            assert 0 < x["read_table_s"] <= x["read_s"] and x["write_s"] > 0
            assert abs(x["read_items_per_s"] - 6 / x["read_s"]) < 1e-6
        p, q = s["layouts"]["padded"], s["layouts"]["list"]
        assert abs(s["ratios"]["size"] - p["bytes_per_item"] / q["bytes_per_item"]) < 1e-9
        assert abs(s["ratios"]["read"] - p["read_s"] / q["read_s"]) < 1e-9
        assert set(s["pooled"]) == {"1", "4"}
        for k, x in s["pooled"].items():
            assert x["raw_bytes_per_item"] == int(k) * dim * 2 and x["bytes_per_item"] > 0.8 * x["raw_bytes_per_item"]
    image, text = r["scenarios"]["image"], r["scenarios"]["text"]
    assert image["lengths"] == {"mean": 197.0, "min": 197, "max": 197}
    assert image["padded_memory_bytes_per_item"] == image["floor_bytes_per_item"]
    assert 0.98 < image["ratios"]["size"] < 1.02  # no padding: the same values either way
    assert text["lengths"]["max"] <= 40 and text["padded_memory_bytes_per_item"] > 1.9 * text["floor_bytes_per_item"]
    assert text["ratios"]["size"] < 1.1  # the zero vectors cost next to nothing on disk
    for s in r["scenarios"].values():
        assert abs(s["ratios"]["dictionary_read"] - s["layouts"]["padded_dictionary"]["read_s"]
                   / s["layouts"]["padded"]["read_s"]) < 1e-9


def test_the_store_writes_vectors_without_a_dictionary(tmp_path):
    """The store's writer keeps dictionaries for the string columns only: float16 vectors dictionary-encoded (pyarrow's
    default) read several times slower (the benchmark's padded_dictionary layout)."""
    from pipeline.store.features import write_parquet

    lengths = np.array([2, 3], np.int32)
    table = store_layout_bench.padded_table(store_layout_bench.draw(2, 4, lengths, np.random.default_rng(0)), lengths, 3)
    write_parquet(table, tmp_path / "store.parquet")
    pq.write_table(table, tmp_path / "default.parquet", compression="zstd")
    encodings = {name: {c.path_in_schema.split(".")[0]: c.encodings for c in
                        (pq.ParquetFile(tmp_path / name).metadata.row_group(0).column(i)
                         for i in range(pq.ParquetFile(tmp_path / name).metadata.num_columns))}
                 for name in ("store.parquet", "default.parquet")}
    assert "RLE_DICTIONARY" not in encodings["store.parquet"]["embedding"]
    assert "RLE_DICTIONARY" in encodings["default.parquet"]["embedding"]
    assert "RLE_DICTIONARY" in encodings["store.parquet"]["id"]
    assert pq.read_table(tmp_path / "store.parquet").equals(pq.read_table(tmp_path / "default.parquet"))


@pytest.mark.slow
def test_benchmark_search_times_start_up_from_the_index_and_both_endpoints(ray_session, tmp_path, capsys):
    report = tmp_path / "search.json"
    argv = ["--sizes", "3000,1000", "--shard-rows", "1000", "--requests", "20", "--repeats", "2", "--report", str(report)]
    assert search_bench.main(argv) == 0
    printed = capsys.readouterr().out
    r = json.loads(report.read_text())["result"]
    assert set(r["sizes"]) == {"1000", "3000"}
    for n, size in r["sizes"].items():
        assert size["segments"] == 1 and 0 < size["in_process_p50_ms"] <= size["in_process_p99_ms"]
        # the default below 20,000 vectors is an exact scan; each other kind was built and started from too
        assert size["kind"] == "exact" and set(size["kinds"]) == {"exact", "hnsw", "ivf_pq"}
        for start in (size["from_index"], size["from_store"], *size["kinds"].values()):  # each answered its query
            assert start["hits"] == 10 and start["seconds"] > 0 and start["open_s"] > 0 and start["query_s"] > 0
        assert size["from_index"]["runs"] == 2 and size["from_store"]["runs"] == 1  # medians of fresh processes
    ratio = r["sizes"]["3000"]["from_index"]["seconds"] / r["sizes"]["1000"]["from_index"]["seconds"]
    assert abs(r["startup_ratio"]["index"] - ratio) < 1e-9
    for kind in ("hnsw", "ivf_pq"):
        expected = r["sizes"]["3000"]["kinds"][kind]["seconds"] / r["sizes"]["1000"]["kinds"][kind]["seconds"]
        assert abs(r["startup_ratio"][kind] - expected) < 1e-9
    http = r["http"]
    assert http["size"] == 1000 and http["search"]["requests"] == http["embeddings"]["requests"] == 20  # + 10 warm-up
    assert abs(http["difference_p50_ms"] - (http["search"]["p50_ms"] - http["embeddings"]["p50_ms"])) < 1e-9
    opened = r["sizes"]["3000"]["from_index"]["open_s"] / r["sizes"]["1000"]["from_index"]["open_s"]
    assert f"Start-up at 3,000 over 1,000 vectors (median of 2 processes): opening the default index x{opened:.2f} " \
           f"(target <= 1.2), with its first query x{ratio:.2f}" in printed
    assert f"{http['difference_p50_ms']:+.1f} ms (target <= 3 ms)" in printed


@pytest.mark.slow
def test_benchmark_search_quality_compares_matryoshka_and_the_merged_rankings(ray_session, tmp_path, capsys):
    report = tmp_path / "search_quality.json"
    assert search_quality_bench.main(["--samples", "96", "--widths", "32", "--gap-items", "400",
                                      "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(report.read_text())["result"]
    assert set(r["compact"]) == {"image-text", "audio-text", "video-text"}
    for pair in r["compact"].values():
        for name in ("plain", "matryoshka"):
            assert set(pair[name]) == {"32", "256"} and set(pair[name]["32"]) == {"float", "int8", "binary"}
    gap = r["merged"]["modality gap"]["text"]
    assert gap["targets"] == ["image", "audio"]
    assert gap["calibrated"]["true_in_top10"] > gap["raw"]["true_in_top10"]  # the known gap, undone
    assert set(r["merged"]["concept store"]) >= {"text"}
    assert "| modality gap (n " in printed and "| image-text (n " in printed
    index = r["index"]  # the store indexed per ann kind; 96 vectors a modality are too few for IVF-PQ's codes
    assert [(k, x["built"]) for k, x in index.items()] == [("exact", "exact"), ("hnsw", "hnsw"), ("ivf_pq", "exact")]
    assert index["exact"]["recall"] == 1.0 and index["hnsw"]["recall"] >= 0.9
    assert all(x["vectors"] == {"image": 96, "audio": 96, "video": 96} and x["queries"] == 96 for x in index.values())
    assert "| ivf_pq (built: exact) | audio 96, image 96, video 96 |" in printed


@pytest.mark.slow
def test_benchmark_pipeline_sets_the_null_encoder_job_beside_the_decoders(ray_session, tmp_path, capsys):
    report = tmp_path / "pipeline.json"
    argv = ["--preset", "tiny", "--cases", "jpg96,audio", "--s3-cases", "png96", "--images", "32", "--s3-images", "16",
            "--clips", "16", "--end-to-end", "48", "--workdir", str(tmp_path / "w"), "--report", str(report)]
    assert pipeline_bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "embed pipeline alone (null encoder), tiny input sizes" in printed
    assert "fused/s" in printed and "tasks/s" in printed and "x pool" in printed
    assert "tiny encoder, 48 256x256 JPEGs: oneencoder embed" in printed
    figures = json.loads(report.read_text())["result"]
    rows = {(r["case"], r["storage"]): r for r in figures["rows"]}
    assert list(rows) == [("jpg96", "local"), ("audio", "local"), ("png96", "s3")]
    assert rows["jpg96", "local"]["decoded_bytes"] == 64 * 64 * 3  # 96 px shrunk to twice the tiny encoder's 32
    assert rows["audio", "local"]["decoded_bytes"] == 4 * 16000 * 10  # 10 s at the encoder's 16 kHz, float32
    for row in rows.values():  # every figure measured, each run complete (the benchmark checks every item embedded)
        assert row["one_core_per_s"] > 0 and row["all_cores_per_s"] > 0 and row["decode_cpu_ms"] > 0
        assert len(row["pool_timings_per_s"]) == 2 and row["items"] in (32, 16)  # timed before and after the jobs
        for arrangement in ("fused", "tasks"):  # both ways the job decodes, each run to the end
            job = row[arrangement]
            assert job["first_commit_s"] > 0 and job["wall_s"] > 0 and job["job_per_s"] > 0
    assert rows["audio", "local"]["target"] == 0.9 and rows["png96", "s3"]["target"] == 0.6
    assert {row["default"] for row in rows.values()} == {"fused"}  # the encoders on CPU: the actors decode
    e2e = figures["end_to_end"]
    assert e2e["items"] == 48 and e2e["job_s"] > 0 and e2e["naive_s"] > 0 and e2e["decode_ms"] > 0 and e2e["encode_ms"] > 0


@pytest.mark.slow
def test_quality_sweep_main_prints_each_run_and_the_ranges(ray_session, tmp_path, capsys):
    report = tmp_path / "sweep.json"
    argv = ["--seeds", "5", "--threads", "1", "--styles", "other", "--epochs", "1", "--baseline-epochs", "1",
            "--samples", "48", "--report", str(report)]
    assert quality_sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert "other seed 5 threads 1 audio->text: progressive" in printed and "other corpus, over 1 runs (min .. max):" in printed
    record = json.loads(report.read_text())
    assert record["command"] == "python -m benchmarks.quality_sweep " + " ".join(argv) and record["machine"]["cores"]
    (run,) = record["result"]
    assert (run["style"], run["seed"], run["threads"]) == ("other", 5, 1)
    assert set(run["pairs"]) == {"image->text", "audio->text", "video->text"}
    with pytest.raises(SystemExit):
        quality_sweep.main(["--seeds", "0,x"])
    assert "--seeds takes comma-separated integers >= 0, got '0,x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality_sweep.main(["--styles", "suite,cartoon"])
    assert "--styles takes comma-separated styles of suite, other, hard, got 'suite,cartoon'" in capsys.readouterr().err


@pytest.mark.slow
def test_quality_unseen_main_compares_the_defaults_with_the_baseline(ray_session, tmp_path, capsys):
    """The unseen-corpus run end to end on a small corpus (one epoch a stage): every direction of the curriculum
    is measured against the baseline on a test corpus embedded through the artifact's own encoders."""
    config = tmp_path / "train.yaml"
    config.write_text("stages:\n" + "".join(f"  - {{new: {m}, anchor: text, epochs: 1}}\n" for m in ("image", "audio", "video")))
    report = tmp_path / "unseen.json"
    argv = ["--train", "48", "--test", "24", "--seeds", "2", "--baseline-epochs", "1", "--config", str(config),
            "--workdir", str(tmp_path / "work"), "--report", str(report)]
    assert quality_unseen.main(argv) == 0
    printed = capsys.readouterr().out
    (run,) = json.loads(report.read_text())["result"]
    assert (run["seed"], run["train"], run["test"]) == (2, 48, 24)
    assert set(run["directions"]) == {"image->text", "text->image", "audio->text", "video->text"}
    for name, d in run["directions"].items():
        assert 0 <= d["progressive"] <= 1 and 0 <= d["baseline"] <= 1 and 0 <= d["p_worse"] <= 1, (name, d)
    assert quality_unseen.format_table(run) in printed  # what is printed is what the result holds

