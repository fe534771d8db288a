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


def test_the_tests_mirror_the_library():
    """A module's tests are found by its path: tests/<part>/ for each part of the library (pipeline/<part>/,
    serving/, the programs in jobs/, and e2e for runs across them), and each test module's name is unique, since
    pytest imports the folders' modules by their base names (no __init__.py)."""
    tests = os.path.join(ROOT, "tests")
    library = {name for name in os.listdir(os.path.join(ROOT, "pipeline"))
               if os.path.isfile(os.path.join(ROOT, "pipeline", name, "__init__.py"))}
    folders = {name for name in os.listdir(tests) if os.path.isdir(os.path.join(tests, name)) and name != "__pycache__"}
    assert folders - library <= {"serving", "jobs", "e2e"}, sorted(folders - library)
    assert not library - folders, sorted(library - folders)  # each library part has its folder
    names = [name for _, _, files in os.walk(tests) for name in files if name.startswith("test_") and name.endswith(".py")]
    assert len(names) == len(set(names)), sorted(n for n in set(names) if names.count(n) > 1)
    assert not [f for f, _, files in os.walk(tests) if "__init__.py" in files]
