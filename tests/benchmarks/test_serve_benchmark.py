"""`python -m benchmarks.serve` through its real main(): tiny preset, a few requests per level."""
from __future__ import annotations

import json

import pytest

from benchmarks import serve as serve_bench


@pytest.mark.slow
def test_benchmark_serve_main_prints_its_ratios(ray_session, tmp_path, capsys):
    report = tmp_path / "serve.json"
    config = tmp_path / "benchmark_serve.yaml"
    config.write_text(f"preset: tiny\nrequests: 8\nlevels: [4, 1]\nlevel_cap_s: 20\nvideo_clients: 2\nreport: {report}\n")
    assert serve_bench.main(["--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "batching on/off at concurrency 4:" in printed and "in-process p50" in printed
    figures = json.loads(report.read_text())["result"]
    assert figures["levels"] == [1, 4] and figures["preset"] == "tiny"
    floor = figures["floor"]  # the bare two-hop app, measured first at the lowest level
    assert floor["requests"] == 8 and floor["concurrency"] == 1 and 0 < floor["p50_ms"] <= floor["p99_ms"]
    assert floor["dim"] == 256
    assert f"concurrency 1: p50 {floor['p50_ms']:.1f} ms  p99 {floor['p99_ms']:.1f} ms" in printed
    media = figures["floor_media"]  # the same with a pass-through hop where the MediaDecoder stands
    assert media["requests"] == 8 and media["concurrency"] == 1 and 0 < media["p50_ms"] <= media["p99_ms"]
    assert f"(a pass-through replica for the decoder's hop before it): p50 {media['p50_ms']:.1f} ms" in printed
    for modality in ("text", "image"):
        m = figures["modalities"][modality]
        assert set(m["batched"]) == {"1", "4"}, m["batched"]  # every level measured, batching on
        runs = {**{f"on at {c}": s for c, s in m["batched"].items()}, "off at 4": m["unbatched"]}
        for name, s in runs.items():
            assert s["requests"] == 8, (modality, name, s)  # every request sent was answered and counted
            assert 0 < s["p50_ms"] <= s["p99_ms"], (modality, name, s)
            # c threads each wait for their own requests: the run lasts at least 1/c of the summed latencies, of
            # which half are at least p50, so req/s can be at most 2c / p50 (a rate in other units breaks this)
            concurrency = 4 if name.endswith("4") else 1
            assert 0 < s["rps"] <= 2 * concurrency * 1000 / s["p50_ms"], (modality, name, s)
        # the ratio is batched over unbatched req/s at the top level, and the overhead Serve's p50 at 1 minus in-process
        assert abs(m["batching_ratio"] - m["batched"]["4"]["rps"] / m["unbatched"]["rps"]) < 1e-9 * m["batching_ratio"]
        assert m["in_process_p50_ms"] > 0
        assert abs(m["serve_overhead_p50_ms"] - (m["batched"]["1"]["p50_ms"] - m["in_process_p50_ms"])) < 1e-9
        # ours over the floor and the model's own work
        assert 0 < m["in_process_p50_ms"] <= m["in_process_p99_ms"]
        under = media if modality == "image" else floor  # an image goes through the MediaDecoder: three hops
        above = m["batched"]["1"]["p50_ms"] - under["p50_ms"] - m["in_process_p50_ms"]
        assert abs(m["over_floor_p50_ms"] - above) < 1e-9
        above = m["batched"]["1"]["p99_ms"] - under["p99_ms"] - m["in_process_p99_ms"]
        assert abs(m["over_floor_p99_ms"] - above) < 1e-9
        name = "media floor" if modality == "image" else "floor"
        assert f"over the {name} + in-process work: p50 {m['over_floor_p50_ms']:+.1f} ms (target <= 3 ms), " \
               f"p99 {m['over_floor_p99_ms']:+.1f} ms" in printed
        # what is printed is what the report holds
        assert f"batching on/off at concurrency 4: {m['batching_ratio']:.2f}x" in printed
        assert f"in-process p50 {m['in_process_p50_ms']:.1f} ms; Serve p50 at concurrency 1 is " \
               f"{m['serve_overhead_p50_ms']:+.1f} ms over it" in printed
    # media decoded in the encoders, then in the MediaDecoder: capacity, and text beside videos at one rate in both
    mixed = figures["mixed"]
    assert list(mixed["modes"]) == ["encoders", "decoder"] and mixed["video_clients"] == 2
    assert abs(mixed["video_rate"] - mixed["modes"]["encoders"]["capacity_videos_per_s"] / 2) < 1e-9
    for decode, mode in mixed["modes"].items():
        assert mode["capacity_videos_per_s"] > 0 and mode["videos_answered"] >= 1, (decode, mode)
        for run in ("alone", "loaded"):
            assert mode[run]["requests"] == 8 and 0 < mode[run]["p50_ms"] <= mode[run]["p99_ms"], (decode, mode)
        assert abs(mode["p50_ratio"] - mode["loaded"]["p50_ms"] / mode["alone"]["p50_ms"]) < 1e-9
        where = "MediaDecoder" if decode == "decoder" else "encoders"
        assert (f"{where:>12}: {mode['capacity_videos_per_s']:5.1f} videos/s at most (2 clients); text alone p50 "
                f"{mode['alone']['p50_ms']:.1f}") in printed
    ratio = mixed["modes"]["decoder"]["capacity_videos_per_s"] / mixed["modes"]["encoders"]["capacity_videos_per_s"]
    assert f"MediaDecoder / encoders: {ratio:.2f}x the videos/s" in printed
