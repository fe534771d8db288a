"""Make docs/benchmarks.md's result tables from the JSON results under benchmarks/results/.

    python -m benchmarks.report            # rewrite the page's generated blocks
    python -m benchmarks.report --check    # exit 1 if the page does not match the results (the suite runs this)

Each benchmark's section of the page holds a block between ``<!-- results: NAME -->`` and ``<!-- /results -->``:
the machine and command of ``benchmarks/results/NAME.json`` and the benchmark's own printed table of it. The
prose around the blocks (the method) is written by hand; the figures never are.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from benchmarks.common import RESULT_FORMAT, RESULTS, describe
from jobs.registry import resolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "benchmarks.md")
# benchmark -> the function printing its table (module:function)
TABLES = {"embed": "benchmarks.embed:format_benchmark", "scale": "benchmarks.scale:format_scale",
          "decode": "benchmarks.decode:format_decode", "pipeline": "benchmarks.pipeline:format_pipeline", "train": "benchmarks.train:format_train_benchmark",
          "serve": "benchmarks.serve:format_serve_benchmark", "index": "benchmarks.index:format_index",
          "search": "benchmarks.search:format_search",
          "search_quality": "benchmarks.search_quality:format_search_quality",
          "quality_unseen": "benchmarks.quality_unseen:format_result",
          "quality_sweep": "benchmarks.quality_sweep:format_result",
          "store_layout": "benchmarks.store_layout:format_store_layout"}
# a block: its opening line, then anything but another opening line, then its closing line
BLOCK = re.compile(r"<!-- results: (?P<name>[a-z_]+) -->\n(?:(?!<!-- results: ).)*?<!-- /results -->", re.S)


def block(name: str, results: str = RESULTS) -> str:
    """The generated block of benchmark ``name``: from its JSON result, or a line saying how to make one."""
    if name not in TABLES:
        raise ValueError(f"docs/benchmarks.md has a results block for {name!r}: expected one of {', '.join(TABLES)}")
    path = os.path.join(results, f"{name}.json")
    lines = [f"<!-- results: {name} -->"]
    if not os.path.exists(path):
        lines += [f"No result recorded yet: run `python -m benchmarks.{name}`, then `python -m benchmarks.report`."]
    else:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
        if not isinstance(record, dict) or record.get("format") != RESULT_FORMAT or record.get("benchmark") != name:
            raise ValueError(f"{path} is not a result of benchmark {name} in format {RESULT_FORMAT}: rerun "
                             f"`python -m benchmarks.{name}`")
        table = resolve(TABLES[name])(record["result"])
        lines += [f"Latest run: `{record['command']}` on {describe(record['machine'])}.", "", "```text", table, "```"]
    return "\n".join(lines + ["<!-- /results -->"])


def render(page: str, results: str = RESULTS, every: bool = True) -> str:
    """``page`` with every generated block replaced by its current content; ValueError if a benchmark has no block
    (with ``every``) or a block names no benchmark."""
    found = [m.group("name") for m in BLOCK.finditer(page)]
    if len(re.findall(r"<!-- results: ", page)) != len(found) or len(set(found)) != len(found):
        raise ValueError("docs/benchmarks.md has a results block that is not closed, or one benchmark's block "
                         "twice: expected '<!-- results: NAME -->' ... '<!-- /results -->' once per benchmark")
    missing = [name for name in TABLES if name not in found] if every else []
    if missing:
        raise ValueError(f"docs/benchmarks.md has no results block for {', '.join(missing)}: expected a line "
                         f"'<!-- results: NAME -->' and one '<!-- /results -->' in each benchmark's section")
    return BLOCK.sub(lambda m: block(m.group("name"), results), page)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the page matches the results")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with open(PAGE, encoding="utf-8") as fh:
        page = fh.read()
    try:
        fresh = render(page)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if fresh != page:
            print("docs/benchmarks.md does not match benchmarks/results/: run `python -m benchmarks.report`",
                  file=sys.stderr)
            return 1
        return 0
    with open(PAGE, "w", encoding="utf-8") as fh:
        fh.write(fresh)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
