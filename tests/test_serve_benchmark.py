"""`python -m jobs.benchmark_serve` through its real main(): tiny preset, a few requests per level."""
from __future__ import annotations

import json

from jobs import benchmark_serve


def test_benchmark_serve_main_prints_its_ratios(ray_session, tmp_path, capsys):
    report = tmp_path / "serve.json"
    config = tmp_path / "benchmark_serve.yaml"
    config.write_text(f"preset: tiny\nrequests: 8\nlevels: [4, 1]\nlevel_cap_s: 20\nreport: {report}\n")
    assert benchmark_serve.main(["--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "batching on/off at concurrency 4:" in printed and "in-process p50" in printed
    figures = json.loads(report.read_text())
    assert figures["levels"] == [1, 4]
    for modality in ("text", "image"):
        m = figures["modalities"][modality]
        assert m["batched"]["1"]["requests"] == 8 and m["unbatched"]["requests"] == 8
        assert m["batching_ratio"] > 0 and m["in_process_p50_ms"] > 0
