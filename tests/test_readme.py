"""The README's step-by-step commands, run as written (in a scratch folder, on the session's Ray)."""
from __future__ import annotations

import json
import os
import shlex

from pipeline.cli import main

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _steps() -> list[list[str]]:
    """The `oneencoder ...` lines of the README's "Each step also runs on its own" block."""
    text = open(README, encoding="utf-8").read()
    block = text.split("Each step also runs on its own:", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True)[1:] for line in block.splitlines() if line.startswith("oneencoder ")]


def test_readme_steps_run_as_written(ray_session, tmp_path, monkeypatch, capsys):
    steps = _steps()
    assert [s[0] for s in steps] == ["sample-corpus", "embed", "train", "evaluate", "serve"]
    monkeypatch.chdir(tmp_path)
    for argv in steps[:-1]:  # `serve` blocks until Ctrl-C: tests/test_serve.py runs it as its own process
        assert main(argv) == 0, argv
    printed = capsys.readouterr().out
    assert "image          24        24" in printed  # the embed summary the README shows
    summary = json.loads((tmp_path / "out" / "sample" / "summary.json").read_text())
    assert all(m["complete"] for m in summary["modalities"].values())
    metrics = json.loads((tmp_path / "models" / "sample" / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["stages"]] == ["1-image-text", "2-audio-text", "3-video-text"]
    report = json.loads((tmp_path / "models" / "sample" / "eval" / "report.json").read_text())
    assert {"image-text", "audio-text", "text-video"} <= set(report["pairs"])
    assert steps[-1] == ["serve", "--model", "models/sample", "--features", "out/sample"]
