"""Our commands as written in the docs and manifests, parsed with the real command lines."""
from __future__ import annotations

import importlib
import os
import shlex

from jobs.cli import parse_command_line
from tests.settings import ROOT


def parse_command(command: str) -> str | None:
    """The job ``command`` runs, after parsing it as the program would (argparse exits on a bad flag); None for a
    synopsis such as `oneencoder embed --input MANIFEST [--preset tiny|paper]`."""
    args = shlex.split(command, comments=True)
    if any(a.startswith("[") or a in ("...", "…", "\\") or "|" in a for a in args):
        return None
    for flag, value in zip(args, args[1:]):  # a config the command names is in the repository
        if flag == "--config" and value.endswith((".yaml", ".yml")) and "/" in value and not value.isupper():
            assert os.path.exists(os.path.join(ROOT, value)), f"{command}: {value} does not exist"
    if args[0] == "oneencoder":
        parse_command_line(args[1:])
        return args[1]
    module = importlib.import_module(args[2])
    if hasattr(module, "JOB"):  # a benchmark: its flags come from its config, as a job's
        from jobs.registry import build_parser

        build_parser(module.JOB).parse_args(args[3:])
    else:
        module.build_parser().parse_args(args[3:])
    return args[2]
