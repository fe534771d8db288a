"""Every job entrypoint runs through its real main() (benchmarks on the tiny preset, small sizes)."""
from __future__ import annotations

import json

import pytest

from jobs import benchmark_embed, benchmark_serve, benchmark_train, quality_sweep
from jobs import train as train_job
from tests.settings import EPOCHS, STAGES, VAL_FRACTION


def test_train_main_resumes_the_finished_run(trained, feature_store, tmp_path, capsys):
    output, result, _ = trained
    import yaml

    from pipeline.quality import PINNED

    config = tmp_path / "train.yaml"  # the fixture's curriculum: its stages as the config file, epochs as the flag
    config.write_text(yaml.safe_dump({"val_fraction": VAL_FRACTION,
                                      "stages": [{"new": s.split(":")[0], "anchor": s.split(":")[1], **PINNED}
                                                 for s in STAGES.split(",")]}))
    argv = ["--features", feature_store, "--output", output, "--epochs", str(EPOCHS), "--config", str(config)]
    assert train_job.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"stage 3-video-text: {EPOCHS} epochs" in printed and f"model artifact: {output}" in printed
    assert train_job.main(["--features", feature_store, "--output", str(tmp_path / "m"), "--stages", "image:smell"]) == 2
    assert "has no features for 'smell'" in capsys.readouterr().err


def test_benchmark_mains_print_their_ratios(ray_session, tmp_path, capsys):
    out = tmp_path / "train.json"
    config = tmp_path / "benchmark_train.yaml"
    config.write_text(f"preset: tiny\nsamples: 16\nbatch_size: 4\nreport: {out}\n")
    assert benchmark_train.main(["--config", str(config), "--batch-size", "8"]) == 0
    assert "speed-up per epoch" in capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert figures["speedup"] > 0 and figures["batch_size"] == 8
    assert benchmark_embed.main(["--preset", "tiny", "--images", "32", "--batch-size", "8", "--workdir", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "(b)/(a) = " in printed and "(b)/(c) = " in printed


def test_benchmark_configs_are_checked_before_any_work(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("preset: tiny\nsamples: 4\nbatch_size: 8\n")
    assert benchmark_train.main(["--config", str(config)]) == 2
    assert "samples = 4: expected at least batch_size (8)" in capsys.readouterr().err
    assert benchmark_embed.main(["--images", "16"]) == 2
    assert "images = 16: expected at least 4 x batch_size (64)" in capsys.readouterr().err
    assert benchmark_serve.main(["--levels", "1,x"]) == 2
    assert "expected comma-separated integers, e.g. 1,8,32, got '1,x'" in capsys.readouterr().err
    assert benchmark_serve.main(["--levels", "1,64", "--requests", "32"]) == 2
    assert "requests = 32: expected at least the largest level (64)" in capsys.readouterr().err


def test_quality_sweep_main_prints_each_run_and_the_ranges(ray_session, tmp_path, capsys):
    report = tmp_path / "sweep.json"
    argv = ["--seeds", "5", "--threads", "1", "--epochs", "1", "--samples", "48", "--report", str(report)]
    assert quality_sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert "seed 5 threads 1 audio->text: progressive" in printed and "over 1 runs (min .. max):" in printed
    (run,) = json.loads(report.read_text())
    assert (run["seed"], run["threads"]) == (5, 1) and set(run["pairs"]) == {"image->text", "audio->text", "video->text"}
    with pytest.raises(SystemExit):
        quality_sweep.main(["--seeds", "0,x"])
    assert "--seeds takes comma-separated integers >= 0, got '0,x'" in capsys.readouterr().err
