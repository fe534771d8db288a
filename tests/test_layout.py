"""The library stays apart from the programs and the benchmarks: nothing in pipeline/ or serving/ imports from jobs/
or benchmarks/, and no program imports a benchmark."""
from __future__ import annotations

import ast
import os

from tests.settings import ROOT


def _imports(path: str, members: bool = False) -> set[str]:
    """The absolute imports of ``path`` (in functions too); with ``members``, ``from a import b`` also gives ``a.b``
    (``from ray import serve`` imports ray.serve)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if members:
                names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_library_module_imports_a_program():
    offenders = []
    for package, apart in (("pipeline", ("jobs", "benchmarks")), ("serving", ("jobs", "benchmarks")),
                           ("jobs", ("benchmarks",))):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    programs = sorted(m for m in _imports(path) if m.split(".")[0] in apart)
                    if programs:
                        offenders.append(f"{os.path.relpath(path, ROOT)}: {', '.join(programs)}")
    assert not offenders, offenders
    assert _imports(os.path.join(ROOT, "jobs", "cli.py")) >= {"jobs.registry"}  # the check sees imports at all


def test_the_tests_mirror_the_library():
    """A module's tests are found by its path: tests/<part>/ for each part of the library (pipeline/<part>/,
    serving/, the programs in jobs/, the benchmarks, and e2e for runs across them), and each test module's name is
    unique, since pytest imports the folders' modules by their base names (no __init__.py)."""
    tests = os.path.join(ROOT, "tests")
    library = {name for name in os.listdir(os.path.join(ROOT, "pipeline"))
               if os.path.isfile(os.path.join(ROOT, "pipeline", name, "__init__.py"))}
    folders = {name for name in os.listdir(tests) if os.path.isdir(os.path.join(tests, name)) and name != "__pycache__"}
    assert folders - library <= {"serving", "jobs", "benchmarks", "e2e"}, sorted(folders - library)
    assert not library - folders, sorted(library - folders)  # each library part has its folder
    names = [name for _, _, files in os.walk(tests) for name in files if name.startswith("test_") and name.endswith(".py")]
    assert len(names) == len(set(names)), sorted(n for n in set(names) if names.count(n) > 1)
    assert not [f for f, _, files in os.walk(tests) if "__init__.py" in files]


def _module_names() -> dict[str, str]:
    """Every module of pipeline/ and serving/ by dotted name (a package by its own name) → its file."""
    found = {}
    for package in ("pipeline", "serving"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    dotted = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = os.path.join(folder, name)
    return found


def _runtime_imports(path: str, name: str, modules: dict[str, str]) -> set[str]:
    """The library modules ``name`` imports when it runs: at module level or inside its functions (an import put in a
    function to dodge a cycle is still an edge), not under ``if TYPE_CHECKING`` (annotations only); importing
    ``a.b.c`` imports the packages ``a`` and ``a.b`` too, except those ``name`` itself belongs to."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for child in node.body for n in ast.walk(child)}
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets |= {base} | {f"{base}.{a.name}" for a in node.names}
    edges = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        while target:
            if target != name and not name.startswith(target + "."):
                edges.add(target)
            target = target.rpartition(".")[0]
    return edges


def test_the_library_has_no_import_cycle():
    """No module of pipeline/ or serving/ needs itself through others: each layer can be read, tested and replaced
    without the ones above it."""
    modules = _module_names()
    graph = {name: _runtime_imports(path, name, modules) for name, path in modules.items()}
    assert graph["pipeline.store.sources"] >= {"pipeline.config", "pipeline.store.errors"}  # the check sees imports
    assert "pipeline.store.http" in graph["pipeline.store.sources"]  # ... inside functions too
    assert "pipeline.media.decode" not in graph["pipeline.modalities.base"]  # ... but not annotation-only ones

    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = cycle_from(nxt, path + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = cycle_from(start, [])
            assert cycle is None, " -> ".join(cycle)


def test_every_imported_package_is_declared():
    """What the code imports, pyproject.toml declares: the library (pipeline/, serving/) and the programs (jobs/) in
    the dependencies or the user-facing extras (train, serve, eval: which code may use them is checked below), the
    benchmarks there or in the dev extra (their test servers), so an install never leans on what
    another package happened to bring along."""
    import re
    import sys
    import tomllib
    from importlib.metadata import packages_distributions

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    optional = project["optional-dependencies"]
    extras = names([r for extra in ("train", "serve", "eval") for r in optional[extra]])
    main, dev = names(project["dependencies"]) | extras, names(optional["dev"])
    providers = packages_distributions()
    missing = set()
    for package, allowed in (("pipeline", main), ("serving", main), ("jobs", main), ("benchmarks", main | dev)):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                for module in _imports(path):
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in ("pipeline", "serving", "jobs", "benchmarks", "__future__"):
                        continue
                    dists = {d.lower().replace("_", "-") for d in providers.get(top, [top])}
                    if not dists & allowed:
                        missing.add(f"{os.path.relpath(path, ROOT)}: {top} ({', '.join(sorted(dists))})")
    assert not missing, sorted(missing)
    assert {"torch", "ray", "pillow", "pyyaml"} <= main  # the check reads the declarations at all


# what only an extra brings, and the only places of the code that may import it
EXTRA_ONLY = {"train": (("ray.train", "ray.tune", "tensorboardX"), ("pipeline/train/",)),
              "serve": (("ray.serve", "fastapi", "starlette", "uvicorn"), ("serving/",)),
              "eval": (("matplotlib",), ("pipeline/eval/report.py", "pipeline/eval/examples.py"))}


def test_the_core_install_imports_no_extra():
    """`pip install oneencoder-ray` (no extra) embeds and loads models: only pipeline/train/, serving/ and the
    evaluation report (with its example sheets) import what an extra brings (Ray Train / Tune, Ray Serve, FastAPI, matplotlib), even inside a
    function, and nothing the embed job, `load_model` or the generated corpora run reaches those modules."""
    def extra_only(imported: set[str]) -> list[str]:
        return sorted(f"{m} (the {extra} extra)" for m in imported for extra, (names, _) in EXTRA_ONLY.items()
                      if any(m == x or m.startswith(x + ".") for x in names))

    offenders = []
    for package in ("pipeline", "serving"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
                places = tuple(p for _, ps in EXTRA_ONLY.values() for p in ps)
                if not rel.startswith(places):
                    offenders += [f"{rel}: {m}" for m in extra_only(_imports(path, members=True))]
    assert not offenders, offenders

    modules = _module_names()
    graph = {name: _runtime_imports(path, name, modules) for name, path in modules.items()}
    reached, todo = set(), ["pipeline.embed.job", "pipeline.inference", "pipeline.synthetic.corpus"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += graph[name]
    assert "pipeline.encoders.frozen" in reached and "pipeline.store.parts" in reached  # the walk sees imports
    beyond = sorted(m for m in reached if m.startswith(("pipeline.train", "serving"))
                    or m in ("pipeline.eval.report", "pipeline.eval.examples"))
    assert not beyond, f"the core install's code reaches modules of an extra: {beyond}"


def test_the_extras_the_jobs_check_are_the_ones_pyproject_declares():
    """Each extra a job may need is declared in pyproject.toml, and the modules the job checks for come with it
    (through a dependency's own extra where it is one, e.g. tensorboardX with ray[train])."""
    import importlib.metadata as metadata
    import re
    import tomllib

    from jobs.registry import EXTRAS, JOBS

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        optional = tomllib.load(fh)["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(optional) and {"all", "dev"} <= set(optional)
    assert {e for job in JOBS.values() for e in job.extras} == set(EXTRAS)
    assert JOBS["demo"].extras == ("train", "eval") and JOBS["serve"].extras == ("serve",)
    providers = metadata.packages_distributions()
    norm = lambda name: name.lower().replace("_", "-")  # noqa: E731

    for extra, modules in EXTRAS.items():
        brings = set()
        for requirement in optional[extra]:
            name, _, rest = re.match(r"([\w.-]+)(\[([\w,]+)\])?", requirement).groups()
            brings.add(norm(name))
            for sub in (rest or "").split(","):
                for dep in metadata.requires(name) or []:
                    if sub and re.search(rf"extra == \"{sub}\"", dep):
                        brings.add(norm(re.match(r"[\w.-]+", dep).group(0)))
        for module in modules:
            dists = {norm(d) for d in providers.get(module, [module])}
            assert dists & brings, f"{module} ({dists}) does not come with the {extra} extra: {sorted(brings)}"
