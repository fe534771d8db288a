"""`oneencoder demo`: the README's main command, end to end on the session's local Ray (small sizes)."""
from __future__ import annotations

import json
import os

import pytest

from jobs import embed as embed_job
from jobs.cli import main


@pytest.mark.slow
def test_demo_runs_every_step_and_says_how_to_serve(ray_session, tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "--samples", "24", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    for step in ("[1/4] generating 24 paired samples", "[2/4] embedding", "[3/4] training", "[4/4] evaluating"):
        assert step in out, step
    assert "zero-shot image: accuracy" in out
    assert f"oneencoder serve --model {workdir / 'model'} --features {workdir / 'features'}" in out
    report = json.loads((workdir / "model" / "eval" / "report.json").read_text())
    assert {"image-text", "audio-text", "text-video"} <= set(report["pairs"])
    for pair in report["pairs"]:
        assert pair in out  # the recall table printed every pair
    assert all(os.path.exists(p) for p in report["plots"])
    metrics = json.loads((workdir / "model" / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["stages"]] == ["1-image-text", "2-audio-text", "3-video-text"]
    # the embed step as `python -m jobs.embed`: a rerun on the same output resumes to nothing
    manifest = str(workdir / "corpus" / "manifest.jsonl")
    assert embed_job.main(["--input", manifest, "--output", str(workdir / "features"), "--modalities", "text"]) == 0
    assert "all shards were already committed" in capsys.readouterr().out
    # another size in the same workdir: refused before any work, naming both and the way out
    assert main(["demo", "--workdir", str(workdir), "--samples", "48", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds a demo run with 24 samples and 1 epochs; expected 48 samples and 1 epochs" in err and "--overwrite" in err


def test_demo_workdir_is_resumed_replaced_or_refused(tmp_path):
    import pytest

    from jobs.demo import prepare_workdir
    from pipeline.config import ConfigError

    workdir = str(tmp_path / "w")
    os.makedirs(os.path.join(workdir, "features"))
    with pytest.raises(ConfigError, match=r"holds other output \(features\)"):
        prepare_workdir(workdir, 24, 1)
    (tmp_path / "w" / "demo.json").write_text("{not json")  # a damaged record: still refused, by name
    with pytest.raises(ConfigError, match=r"holds other output \(features\).*--overwrite"):
        prepare_workdir(workdir, 24, 1)
    (tmp_path / "w" / "features" / "kept.txt").write_text("x")
    prepare_workdir(workdir, 24, 1, overwrite=True)
    assert not os.path.exists(os.path.join(workdir, "features"))
    assert json.loads((tmp_path / "w" / "demo.json").read_text()) == {"samples": 24, "epochs": 1}
    os.makedirs(os.path.join(workdir, "corpus"))
    prepare_workdir(workdir, 24, 1)  # same settings: resumes, nothing deleted
    assert os.path.isdir(os.path.join(workdir, "corpus"))


def test_demo_refuses_too_few_samples(capsys):
    assert main(["demo", "--samples", "3"]) == 2
    assert "samples = 3: Input should be greater than or equal to 24" in capsys.readouterr().err


def test_demo_writes_under_the_cache_not_the_current_folder(tmp_path, monkeypatch, capsys):
    """With no --workdir the demo works in $ONEENCODER_CACHE/demo: run from a checkout, it leaves the checkout alone."""
    cache, cwd = tmp_path / "cache", tmp_path / "checkout"
    cwd.mkdir()
    monkeypatch.setenv("ONEENCODER_CACHE", str(cache))
    monkeypatch.chdir(cwd)
    os.makedirs(cache / "demo" / "features")  # another tool's output there: refused by name, before any work
    assert main(["demo", "--samples", "24", "--epochs", "1"]) == 2
    assert f"--workdir {cache / 'demo'} holds other output (features)" in capsys.readouterr().err
    assert os.listdir(cwd) == []


def test_demo_fails_when_a_step_is_incomplete(tmp_path, monkeypatch, capsys):
    """An embed run that leaves a modality's shards missing (a crashed read task, say) ends the demo with exit 1 and
    the way to resume, before training on half the features."""
    import pipeline.embed.job as embed
    import pipeline.embed.resume as resume

    monkeypatch.setattr("pipeline.runtime.init_ray", lambda: None)
    monkeypatch.setattr(embed, "run_embed", lambda cfg: {"modalities": {"image": {"complete": True},
                                                                        "audio": {"complete": False}}})
    monkeypatch.setattr(resume, "format_summary", lambda summary: "(summary)")
    monkeypatch.setattr("pipeline.train.job.run_train", lambda cfg: pytest.fail("trained on incomplete features"))
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--samples", "24", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "error: embedding left audio incomplete" in err and "run the demo again to resume it" in err


@pytest.mark.slow  # a whole demo run (about a minute on 2 cores)
def test_demo_overwrite_replaces_an_earlier_run(ray_session, tmp_path, capsys):
    """`oneencoder demo --overwrite` over a workdir holding another run (other settings; its feature store made
    differently, which a resumed embed would refuse): the old run is deleted and the demo runs through."""
    workdir = tmp_path / "demo"
    progress = workdir / "features" / "_progress" / "text"
    progress.mkdir(parents=True)
    (progress / "run.json").write_text(json.dumps({"format": "another run", "items": 48}))
    (workdir / "model").mkdir()
    (workdir / "model" / "stale.txt").write_text("from the earlier run")
    (workdir / "demo.json").write_text(json.dumps({"samples": 48, "epochs": 1}))
    assert main(["demo", "--workdir", str(workdir), "--samples", "24", "--epochs", "1"]) == 2  # without: refused
    assert "--overwrite" in capsys.readouterr().err
    assert main(["demo", "--workdir", str(workdir), "--samples", "24", "--epochs", "1", "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "[4/4] evaluating" in out and f"oneencoder serve --model {workdir / 'model'}" in out
    assert json.loads((workdir / "demo.json").read_text()) == {"samples": 24, "epochs": 1}
    assert not (workdir / "model" / "stale.txt").exists()
    assert json.loads((progress / "run.json").read_text())["items"] == 24  # this run's store, not the old one
    metrics = json.loads((workdir / "model" / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["stages"]] == ["1-image-text", "2-audio-text", "3-video-text"]
    assert len(list((workdir / "corpus").glob("images/*"))) == 24
