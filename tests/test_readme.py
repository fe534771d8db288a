"""Every `oneencoder ...` and `python -m jobs....` command in the README parses with the real command line.

What each command does is tested where its job is (embed, train, evaluate, serve, demo, submit, the
benchmarks, through their real main()); this catches README lines that drift from the flags.
"""
from __future__ import annotations

import importlib
import os
import shlex

from jobs.cli import parse_command_line
from tests.settings import ROOT

README = os.path.join(ROOT, "README.md")


def _readme_commands() -> list[str]:
    """Our commands in the README's bash blocks: continuation lines joined, `a && b` split, and the
    command after `--` of a `ray job submit` line."""
    text = open(README, encoding="utf-8").read()
    commands = []
    for block in text.split("```bash\n")[1:]:
        for line in block.split("```", 1)[0].replace("\\\n", " ").splitlines():
            for part in line.split(" && "):
                part = part.strip()
                if part.startswith("ray job submit") and " -- " in part:
                    part = part.split(" -- ", 1)[1].strip()
                if part.startswith(("oneencoder ", "python -m jobs.")):
                    commands.append(part)
    return commands


def test_every_readme_command_parses():
    parsed = []
    for command in _readme_commands():
        args = shlex.split(command, comments=True)
        if any(a.startswith("[") or a in ("...", "…", "\\") or "|" in a for a in args):
            continue  # a synopsis such as `oneencoder embed --input MANIFEST [--preset tiny|paper]`
        if args[0] == "oneencoder":
            parse_command_line(args[1:])  # argparse exits (the test fails) on an unknown or bad flag
        else:
            importlib.import_module(args[2]).build_parser().parse_args(args[3:])
        parsed.append(args[1] if args[0] == "oneencoder" else args[2])
    for expected in ("demo", "sample-corpus", "embed", "train", "evaluate", "serve", "submit",
                     "jobs.embed", "jobs.benchmark_embed", "jobs.benchmark_train", "jobs.serve"):
        assert expected in parsed, f"the README no longer shows a runnable `{expected}` command"
