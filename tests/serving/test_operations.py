"""What operators read: the metrics table in docs/operations.md and the Grafana dashboard name the metrics the code
records, with their kinds and labels."""
from __future__ import annotations

import json
import os
import re

from pipeline.metrics import JOBS
from serving.metrics import SERVER
from tests.settings import ROOT

DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "oneencoder.json")
OPERATIONS = os.path.join(ROOT, "docs", "operations.md")
RECORDED = {**SERVER, **JOBS}


def _exported(name: str) -> str:
    """The name the Ray agent exports a metric under (counters get _total)."""
    return f"ray_{name}_total" if RECORDED[name][0] == "counter" else f"ray_{name}"


def _family(sample: str) -> str:
    """A sample or series name as PromQL uses it → the recorded metric's name."""
    base = re.sub(r"_(bucket|sum|count|total)$", "", sample)
    return base.removeprefix("ray_")


def test_the_docs_table_lists_every_metric_with_its_kind_and_labels():
    text = open(OPERATIONS, encoding="utf-8").read()
    rows = {m.group(1): (m.group(2), m.group(3)) for m in
            re.finditer(r"^\| `(ray_oneencoder_\w+)` \| (counter|histogram) \|\s*([\w, ]*?)\s*\|", text, re.MULTILINE)}
    assert set(rows) == {_exported(n) for n in RECORDED}, set(rows) ^ {_exported(n) for n in RECORDED}
    for name, (kind, _, tags) in RECORDED.items():
        assert rows[_exported(name)] == (kind, ", ".join(tags)), name
    used = set(re.findall(r"\bray_oneencoder_\w+", text))  # the example queries too
    assert {_family(u) for u in used} <= set(RECORDED), {_family(u) for u in used} - set(RECORDED)


def test_the_grafana_dashboard_queries_only_metrics_that_exist():
    dashboard = json.load(open(DASHBOARD, encoding="utf-8"))
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 10
    queried = set()
    for panel in panels:
        assert panel["targets"] and panel["datasource"]["type"] == "prometheus", panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bray_oneencoder_\w+", target["expr"]))
            assert names or "ray_serve_" in target["expr"], target["expr"]
            for sample in names:
                family = _family(sample)
                assert family in RECORDED, sample
                kind = RECORDED[family][0]
                assert (sample.endswith("_total") if kind == "counter" else
                        sample.endswith(("_bucket", "_sum", "_count"))), (sample, kind)
                queried.add(family)
            labels = set(re.findall(r"by \(([\w, ]+)\)", target["expr"]))
            for group in labels:  # every label a panel groups by is one the metric has (le: a histogram's buckets)
                for label in (x.strip() for x in group.split(",")):
                    assert label == "le" or any(label in RECORDED[_family(s)][2] for s in names) or not names, \
                        (label, target["expr"])
    assert queried == set(RECORDED), set(RECORDED) - queried  # a panel for every metric
