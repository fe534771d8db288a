"""Every job entrypoint runs through its real main() (benchmarks on the tiny preset, small sizes)."""
from __future__ import annotations

import json

from jobs import benchmark_embed, benchmark_train
from jobs import train as train_job
from tests.settings import EPOCHS, STAGES, VAL_FRACTION


def test_train_main_resumes_the_finished_run(trained, feature_store, tmp_path, capsys):
    output, result, _ = trained
    config = tmp_path / "train.yaml"
    config.write_text(f"val_fraction: {VAL_FRACTION}\n")
    argv = ["--features", feature_store, "--output", output, "--stages", STAGES, "--epochs", str(EPOCHS), "--config", str(config)]
    assert train_job.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"stage 3-video-text: {EPOCHS} epochs" in printed and f"model artifact: {output}" in printed
    assert train_job.main(["--features", feature_store, "--output", str(tmp_path / "m"), "--stages", "image:smell"]) == 2
    assert "has no features for 'smell'" in capsys.readouterr().err


def test_benchmark_mains_print_their_ratios(ray_session, tmp_path, capsys):
    out = tmp_path / "train.json"
    assert benchmark_train.main(["--preset", "tiny", "--samples", "16", "--batch-size", "8", "--json", str(out)]) == 0
    assert "speed-up per epoch" in capsys.readouterr().out
    assert json.loads(out.read_text())["speedup"] > 0
    assert benchmark_embed.main(["--preset", "tiny", "--images", "32", "--batch-size", "8", "--workdir", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "(b)/(a) = " in printed and "(b)/(c) = " in printed
