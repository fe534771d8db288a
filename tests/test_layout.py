"""The library stays apart from the programs: nothing in pipeline/ or serving/ imports from jobs/."""
from __future__ import annotations

import ast
import os

from tests.settings import ROOT


def _imports(path: str) -> set[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_library_module_imports_a_program():
    offenders = []
    for package in ("pipeline", "serving"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    programs = sorted(m for m in _imports(path) if m == "jobs" or m.startswith("jobs."))
                    if programs:
                        offenders.append(f"{os.path.relpath(path, ROOT)}: {', '.join(programs)}")
    assert not offenders, offenders
    assert _imports(os.path.join(ROOT, "jobs", "cli.py")) >= {"jobs.registry"}  # the check sees imports at all
