"""The `oneencoder` command and `python -m jobs.embed`, through their real main()."""
from __future__ import annotations

import json
import os

from jobs import embed as embed_job
from jobs import cli


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
                 "[serve] applications[].args"):
        assert line in printed
    assert "[benchmark" not in printed  # the benchmarks are not jobs: `python -m benchmarks.<name> --help`
    assert cli.main(["config-reference", "evaluate"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("[evaluate]") and "model (default None)" in printed and "[embed]" not in printed


def test_every_job_s_flags_are_its_config_fields():
    """One registry drives the CLI: a config field is a flag (nested blocks come from --config), with its
    description as help; `python -m jobs.<name>` and `oneencoder <name>` parse the same flags."""
    import typing

    from pydantic import BaseModel

    from jobs.registry import JOBS, build_parser

    for job in JOBS.values():
        parser = build_parser(job)
        flags = {a.dest: a for a in parser._actions}
        for name, field in job.config_class().model_fields.items():
            nested = typing.get_origin(field.annotation) is dict or any(  # a block (lists are comma-separated flags)
                isinstance(t, type) and issubclass(t, BaseModel) for t in (field.annotation, *typing.get_args(field.annotation))
                if typing.get_origin(field.annotation) is not list)
            offered = job.flags is None or name in job.flags
            if offered and not nested and name not in job.defaults:
                assert name in flags, (job.name, name)
                assert (field.description or "").rstrip(".")[:30] in (flags[name].help or ""), (job.name, name)
            elif nested:
                assert name not in flags or name == "tune", (job.name, name)
    embed = build_parser(JOBS["embed"]).parse_args(["--shard-size", "7", "--modalities", "image,depth"])
    assert embed.shard_size == 7 and embed.modalities == "image,depth"
    train = build_parser(JOBS["train"]).parse_args(["--from", "m1", "--val-fraction", "0.3", "--epochs", "2"])
    assert (train.from_model, train.val_fraction, train.epochs, train.tune) == ("m1", 0.3, 2, False)
    assert build_parser(JOBS["tune"]).parse_args([]).tune is True


def test_a_flag_from_a_config_field_is_validated_like_the_config(capsys):
    from jobs import registry

    assert registry.main("embed", ["--input", "m.jsonl", "--output", "o", "--shard-size", "0"]) == 2
    assert "shard_size = 0: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert cli.main(["sample-corpus", "/tmp/x", "--n", "0"]) == 2
    assert "n = 0: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert cli.main(["demo", "--samples", "10"]) == 2
    assert "samples = 10" in capsys.readouterr().err


def test_a_job_whose_extra_is_missing_says_what_to_install(tmp_path, monkeypatch, capsys):
    """The core install embeds; `oneencoder evaluate` without the eval extra (matplotlib) stops before any work with
    the pip command that adds it."""
    from jobs import registry

    monkeypatch.setitem(registry.EXTRAS, "eval", ("matplotlib", "oneencoder_no_such_module"))
    assert cli.main(["evaluate", "--model", str(tmp_path / "m"), "--features", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: the evaluate job needs the eval extra (no module oneencoder_no_such_module): "
                           "pip install 'oneencoder-ray[eval]' (or [all])")
    monkeypatch.setitem(registry.EXTRAS, "train", ("oneencoder_no_such_module",))
    assert cli.main(["demo", "--workdir", str(tmp_path / "d")]) == 2
    assert "needs the train and eval extras (no module oneencoder_no_such_module): pip install 'oneencoder-ray[train,eval]'" in \
        capsys.readouterr().err
    assert not (tmp_path / "d").exists()
