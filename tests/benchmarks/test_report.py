"""docs/benchmarks.md's tables are made from the JSON results, never by hand; each result names its machine."""
from __future__ import annotations

import json
import os

import pytest

from benchmarks import report
from benchmarks.common import finish
from benchmarks.train import BenchmarkTrainConfig, format_train_benchmark

TRAIN = {"samples": 64, "batch_size": 16, "epochs": 1, "embed_once_s": 29.4, "encoders": "vit + bert",
         "epoch_cached_s": 0.173, "epoch_encoders_in_loop_s": 28.2, "speedup": 163.0}


def test_the_benchmarks_page_matches_the_results():
    """`python -m benchmarks.report --check`: every benchmark has a block and each block is what its result makes."""
    assert report.main(["--check"]) == 0
    page = open(report.PAGE, encoding="utf-8").read()
    for name in report.TABLES:
        assert f"<!-- results: {name} -->" in page, name


def test_a_result_becomes_its_table_with_the_machine_and_command(tmp_path, capsys):
    cfg = BenchmarkTrainConfig(batch_size=8, preset="tiny", report=str(tmp_path / "results" / "train.json"))
    assert finish("train", cfg, TRAIN, format_train_benchmark) == 0
    printed = capsys.readouterr().out
    assert "speed-up per epoch: 163x" in printed and "results/train.json" in printed
    record = json.loads((tmp_path / "results" / "train.json").read_text())
    assert record["command"] == "python -m benchmarks.train --batch-size 8 --preset tiny"  # what reruns it
    assert record["format"] == 1 and record["benchmark"] == "train"
    assert record["config"]["batch_size"] == 8 and record["result"] == TRAIN
    assert record["machine"]["cores"] == os.cpu_count() and record["machine"]["python"]

    page = "# B\n\n<!-- results: train -->\nstale\n<!-- /results -->\n\ntext after\n"
    made = report.render(page, str(tmp_path / "results"), every=False)
    assert "stale" not in made and made.endswith("<!-- /results -->\n\ntext after\n")
    assert "Latest run: `python -m benchmarks.train --batch-size 8 --preset tiny` on " in made
    assert f"{os.cpu_count()} cores" in made and format_train_benchmark(TRAIN) in made
    assert report.render(made, str(tmp_path / "results"), every=False) == made  # made once, stable


def test_a_page_without_a_block_or_with_an_unknown_one_is_refused(tmp_path):
    blocks = "".join(f"<!-- results: {n} -->\n<!-- /results -->\n" for n in report.TABLES if n != "serve")
    with pytest.raises(ValueError, match="no results block for serve"):
        report.render(blocks, str(tmp_path))
    unknown = blocks + "<!-- results: serve -->\n<!-- /results -->\n<!-- results: smell -->\n<!-- /results -->\n"
    with pytest.raises(ValueError, match="results block for 'smell': expected one of embed, scale"):
        report.render(unknown, str(tmp_path))
    empty = report.render(blocks + "<!-- results: serve -->\n<!-- /results -->\n", str(tmp_path))
    assert "No result recorded yet: run `python -m benchmarks.serve`" in empty


def test_a_damaged_page_or_an_old_result_is_an_error_not_a_rewrite(tmp_path, monkeypatch, capsys):
    """An unclosed block would swallow the method text after it, and a result from another layout has no table:
    both are one `error:` line (exit 2), and the page is left as it was."""
    blocks = "".join(f"<!-- results: {n} -->\n<!-- /results -->\n" for n in report.TABLES)
    unclosed = blocks.replace("<!-- results: scale -->\n<!-- /results -->\n", "<!-- results: scale -->\nmethod\n")
    with pytest.raises(ValueError, match="not closed"):
        report.render(unclosed, str(tmp_path))
    (tmp_path / "train.json").write_text(json.dumps({"speedup": 163.0}))  # a bare result, as an older version wrote
    with pytest.raises(ValueError, match=r"train.json is not a result of benchmark train in format 1: rerun "
                                         r"`python -m benchmarks.train`"):
        report.render(blocks, str(tmp_path))
    page = tmp_path / "benchmarks.md"
    page.write_text(unclosed)
    monkeypatch.setattr(report, "PAGE", str(page))
    assert report.main(["--check"]) == 2 and report.main([]) == 2
    assert capsys.readouterr().err.count("error: docs/benchmarks.md has a results block that is not closed") == 2
    assert page.read_text() == unclosed


def test_a_result_can_go_to_object_storage(capsys):
    """`--report s3://...` keeps the result of a run submitted to a cluster (here fsspec's in-memory filesystem)."""
    import fsspec

    from benchmarks.common import write_result

    write_result("train", "python -m benchmarks.train", {}, TRAIN, "memory://bench/train.json")
    with fsspec.open("memory://bench/train.json", "r") as fh:
        assert json.load(fh)["result"] == TRAIN
    assert "result written to memory://bench/train.json" in capsys.readouterr().out
