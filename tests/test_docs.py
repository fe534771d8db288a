"""The README and the docs site: every `oneencoder ...`, `python -m jobs....` and `python -m benchmarks....` command in
them parses with the real command line, the site builds with no broken link or anchor, and the README stays a front page.

What each command does is tested where its job is (embed, train, evaluate, serve, demo, submit, the
benchmarks, through their real main()); this catches lines that drift from the flags.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

from tests.commands import parse_command
from tests.settings import ROOT

README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _commands(path: str) -> list[str]:
    """Our commands in a page's bash blocks: continuation lines joined, `a && b` split, and the
    command after `--` of a `ray job submit` line."""
    text = open(path, encoding="utf-8").read()
    commands = []
    for block in text.split("```bash\n")[1:]:
        for line in block.split("```", 1)[0].replace("\\\n", " ").splitlines():
            for part in line.split(" && "):
                part = part.strip()
                if part.startswith("ray job submit") and " -- " in part:
                    part = part.split(" -- ", 1)[1].strip()
                if part.startswith(("oneencoder ", "python -m jobs.", "python -m benchmarks.")):
                    commands.append(part)
    return commands


def test_every_command_in_the_readme_and_the_docs_parses():
    parsed = {os.path.relpath(path, ROOT): [parse_command(c) for c in _commands(path)] for path in PAGES}
    front = set(parsed["README.md"])
    for expected in ("demo", "sample-corpus", "embed", "train", "evaluate", "index", "serve", "submit"):
        assert expected in front, f"the README no longer shows a runnable `{expected}` command"
    everywhere = {job for jobs in parsed.values() for job in jobs}
    for expected in ("jobs.embed", "jobs.index", "jobs.serve", "benchmarks.embed", "benchmarks.index", "benchmarks.scale", "benchmarks.decode",
                     "benchmarks.train", "benchmarks.serve", "benchmarks.quality_sweep", "benchmarks.quality_unseen"):
        assert expected in everywhere, f"the docs no longer show a runnable `{expected}` command"


def test_the_readme_is_a_front_page():
    """What the project is and how to run it, linking into docs/: short, and no history (dated runs, issue numbers,
    commit hashes, "before this change" belong in the changelog)."""
    text = open(README, encoding="utf-8").read()
    assert len(text.splitlines()) <= 250
    assert "oneencoder demo" in text.split("\n## ", 3)[2], "the demo command is in the README's first sections"
    history = [m.group(0) for m in re.finditer(r"\b20\d\d-\d\d-\d\d\b|\bissue \d+|\b[0-9a-f]{7,40}\b|before this change",
                                                text, re.IGNORECASE) if not m.group(0).isdigit()]
    assert not history, history
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", text))
    pages = {os.path.basename(p) for p in PAGES[1:]} - {"index.md"}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def test_the_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a link to a missing page or anchor, or a page left out of the navigation, fails."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "data" / "index.html").exists()
