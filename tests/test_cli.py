"""The `oneencoder` command and `python -m jobs.embed`, through their real main()."""
from __future__ import annotations

import json
import os

from jobs import embed as embed_job
from pipeline import cli


def test_sample_corpus_writes_a_manifest(tmp_path, capsys):
    corpus = tmp_path / "sample"
    assert cli.main(["sample-corpus", str(corpus), "--n", "3"]) == 0
    manifest = capsys.readouterr().out.strip()
    assert manifest == str(corpus / "manifest.jsonl")
    rows = [json.loads(line) for line in open(manifest)]
    assert [r["id"] for r in rows] == ["s00000", "s00001", "s00002"]
    assert all(os.path.exists(corpus / r[m]) for r in rows for m in ("image", "audio", "video"))


def test_user_errors_exit_2_with_a_message(ray_session, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    assert embed_job.main(["--input", str(manifest), "--output", str(tmp_path / "o")]) == 2
    assert "duplicate id" in capsys.readouterr().err
    manifest.write_text('{"id": "a", "text": "x"}\n')
    assert embed_job.main(["--input", str(manifest), "--output", str(tmp_path / "o"), "--modalities", "video"]) == 2
    assert "modalities: video not in manifest" in capsys.readouterr().err
    assert embed_job.main(["--output", str(tmp_path / "o")]) == 2
    assert "input is missing" in capsys.readouterr().err


def test_config_reference(capsys):
    assert cli.main(["config-reference"]) == 0
    printed = capsys.readouterr().out
    for line in ("[embed] python -m jobs.embed --config FILE", "encoders.<modality>.batch_size (default 16)",
                 "[train] python -m jobs.train --config FILE", "stages[].epochs (default None)", "stages[].new (required)",
                 "[serve] applications[].args", "[benchmark-serve] python -m jobs.benchmark_serve --config FILE",
                 "levels (default [1, 8, 32])"):
        assert line in printed
    assert cli.main(["config-reference", "evaluate"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("[evaluate]") and "model (default None)" in printed and "[embed]" not in printed
