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
