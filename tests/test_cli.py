"""The `oneencoder` command and `python -m jobs.embed`, through their real main()."""
from __future__ import annotations

import json

from jobs import embed as embed_job
from pipeline import cli


def test_sample_corpus_then_embed_through_the_cli(ray_session, tmp_path, capsys):
    corpus = tmp_path / "sample"
    assert cli.main(["sample-corpus", str(corpus), "--n", "6"]) == 0
    manifest = capsys.readouterr().out.strip()
    assert manifest == str(corpus / "manifest.jsonl")
    assert len(open(manifest).readlines()) == 6
    out = tmp_path / "out"
    assert cli.main(["embed", "--input", manifest, "--output", str(out), "--modalities", "text"]) == 0
    printed = capsys.readouterr().out
    assert "text" in printed and "summary: " + str(out) + "/summary.json" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modalities"]["text"]["features"] == 6
    # the same job as `python -m jobs.embed`: a rerun resumes to nothing
    assert embed_job.main(["--input", manifest, "--output", str(out), "--modalities", "text"]) == 0
    assert "all shards were already committed" in capsys.readouterr().out


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
    assert "encoders.<modality>.batch_size (default 16)" in capsys.readouterr().out
