"""One registry of jobs, name → config class → run function: the `oneencoder` sub-commands and their flags,
`python -m jobs.<name>`, `oneencoder submit` and `config-reference` all come from it.

A job's flags are its config's scalar fields (``--shard-size`` for ``shard_size``; nested blocks such as
``limits`` or ``encoders`` come from ``--config FILE``), each with the field's description as help, so a
new field is a flag and a documented config key at once. Flags override the YAML. User errors (a bad
config, manifest or artifact; a store made differently, damaged or tampered with) exit 2 with one ``error:``
line, in one place.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing
from typing import Any, Literal

from pydantic import BaseModel


@dataclasses.dataclass(frozen=True)
class Job:
    name: str                                   # the `oneencoder` sub-command and the name `submit` takes
    command: tuple[str, ...]                    # what runs it: `python -m <command...>` (here and on a cluster)
    summary: str                                # one line of help
    config: str                                 # "module:Class" of its config (imported when asked for)
    run: str                                    # "module:function": run(cfg, args) -> exit status
    where: str = ""                             # where its config's fields go (config-reference)
    flags: tuple[str, ...] | None = None        # the config fields offered as flags; None = every scalar field
    names: dict[str, str] = dataclasses.field(default_factory=dict)  # field -> flag when not --field-name
    positional: tuple[str, ...] = ()            # fields given as positional arguments
    extra: str | None = None                    # "module:function" adding flags that are not config fields
    load: str | None = None                     # "module:function"(config class, args) -> config; default YAML + flags
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)  # parser defaults (e.g. tune forces the search)
    submit: bool = True                         # may run on a cluster through `oneencoder submit`
    extras: tuple[str, ...] = ()                # the package extras it needs beyond the core install (see EXTRAS)
    config_help: str = "YAML config; flags override its fields (see `oneencoder config-reference`)"

    def config_class(self) -> type[BaseModel]:
        return resolve(self.config)


# A module each extra of pyproject.toml brings (Ray Train's tensorboardX; Ray Serve's web stack; matplotlib):
# one missing means the extra is not installed, and the job stops before any work saying how to add it.
EXTRAS: dict[str, tuple[str, ...]] = {"train": ("tensorboardX",), "serve": ("fastapi", "uvicorn", "starlette"),
                                      "eval": ("matplotlib",)}

JOBS: dict[str, Job] = {job.name: job for job in (
    Job("embed", ("jobs.embed",), "embed a manifest into a Parquet feature store (Ray Data)",
        "pipeline.embed.config:EmbedConfig", "jobs.embed:run", "python -m jobs.embed --config FILE"),
    Job("train", ("jobs.train",), "train the projection progressively on a feature store (Ray Train)",
        "pipeline.train.config:TrainConfig", "jobs.train:run", "python -m jobs.train --config FILE",
        names={"from_model": "--from"}, extra="jobs.train:add_flags", load="jobs.train:load", extras=("train",)),
    Job("tune", ("jobs.train", "--tune"), "search each stage's training settings (Ray Tune, ASHA) on the cached "
        "features, then train with the best (like train)", "pipeline.train.config:TrainConfig", "jobs.train:run",
        "python -m jobs.train --tune --config FILE (a `tune:` block)", names={"from_model": "--from"},
        extra="jobs.train:add_flags", load="jobs.train:load", defaults={"tune": True}, extras=("train",)),
    Job("evaluate", ("jobs.evaluate",), "retrieval, zero-shot and modality-gap report of a model artifact",
        "pipeline.eval.report:EvaluateConfig", "jobs.evaluate:run", "python -m jobs.evaluate --config FILE",
        extra="jobs.evaluate:add_flags", load="jobs.evaluate:load", extras=("eval",)),
    Job("index", ("jobs.index",), "project a feature store through a model: aligned vectors (Parquet) and ANN "
        "segments for search (Ray Data)", "pipeline.index.config:IndexConfig", "jobs.index:run",
        "python -m jobs.index --config FILE", load="jobs.index:load"),
    Job("serve", ("jobs.serve",), "serve a model artifact over HTTP on Ray Serve (OpenAI-compatible)",
        "serving.config:ServeArgs", "jobs.serve:run", "applications[].args of a Serve config (serving/serve_config.yaml)",
        flags=("model", "features", "index"), extra="jobs.serve:add_flags", load="jobs.serve:load", extras=("serve",),
        config_help="Ray Serve config YAML (default: serving/serve_config.yaml); its applications[0].args hold these "
                    "fields, the flags override them"),
    Job("demo", ("jobs.demo",), "generate a corpus, embed, train 3 stages, evaluate (offline, local Ray, a few minutes)",
        "jobs.demo:DemoConfig", "jobs.demo:run", "oneencoder demo (flags)", submit=False, extras=("train", "eval")),
    Job("dataset", ("jobs.dataset",), "turn a dataset as it ships (COCO, Flickr30k, MSR-VTT, Clotho, ESC-50, CIFAR, "
        "a class folder) into a manifest and its groups or labels", "pipeline.datasets:DatasetConfig",
        "jobs.dataset:run", "oneencoder dataset NAME (flags)", positional=("name",)),
    Job("sample-corpus", ("jobs.corpus",), "write a small generated paired corpus and its manifest",
        "jobs.corpus:SampleCorpusConfig", "jobs.corpus:run", "oneencoder sample-corpus (flags)", positional=("dest",),
        submit=False),
)}


def resolve(ref: str) -> Any:
    """The object a "module:name" reference names (imported when asked for)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser(job: Job, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """``job``'s command line: its config fields as flags, ``--config``, ``--verbose`` and its extra flags."""
    p = parser or argparse.ArgumentParser(prog=f"python -m {' '.join(job.command)}", description=job.summary)
    model = job.config_class()
    for name, field in model.model_fields.items():
        if job.flags is not None and name not in job.flags:
            continue
        kind = _flag_kind(field.annotation)
        if kind is None:
            continue  # a nested block: from --config only
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        help_text = (field.description or "").rstrip(".") + (
            f" (default {default})" if isinstance(default, (bool, int, float, str)) else "")
        if name in job.positional:
            p.add_argument(name, help=help_text, **({} if kind.get("action") else kind))
            continue
        flag = job.names.get(name, "--" + name.replace("_", "-"))
        p.add_argument(flag, dest=name, default=None, help=help_text.replace("%", "%%"), **kind)
    p.add_argument("--config", help=job.config_help)
    p.add_argument("--verbose", action="store_true", help="debug logging")
    if job.extra:
        resolve(job.extra)(p)
    p.set_defaults(**job.defaults)
    return p


def _flag_kind(annotation: Any) -> dict[str, Any] | None:
    """argparse options for a field of type ``annotation``; None for a nested block (YAML only)."""
    inner = [a for a in typing.get_args(annotation) if a is not type(None)]
    if type(None) in typing.get_args(annotation) and len(inner) == 1:  # X | None
        annotation = inner[0]
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return {"action": "store_true"}
    if annotation in (int, float):
        return {"type": annotation}
    if origin is Literal:
        return {"choices": list(typing.get_args(annotation))}
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return None
    return {"type": str}  # strings, and lists given comma-separated (each config's validators split them)


def load_config(job: Job, args: argparse.Namespace) -> BaseModel:
    """The job's config: its YAML (``--config``), then every flag given, validated once. Raises ConfigError."""
    if job.load:
        return resolve(job.load)(job.config_class(), args)
    from pipeline.config import config_from_args

    return config_from_args(job.config_class(), args)


def execute(job: Job, args: argparse.Namespace) -> int:
    """Validate ``job``'s config from ``args`` and run it; a user error is one `error:` line and exit status 2, a run
    that stopped with work left to do (a rerun resumes it) one `error:` line and exit status 1."""
    from pipeline.runtime import setup_logging

    setup_logging(getattr(args, "verbose", False))
    missing = missing_extras(job)
    if missing:
        print(f"error: the {job.name} job needs the {' and '.join(missing)} extra{'s' * (len(missing) > 1)} "
              f"(no module {', '.join(dict.fromkeys(m for ms in missing.values() for m in ms))}): "
              f"pip install 'oneencoder-ray[{','.join(missing)}]' (or [all])", file=sys.stderr)
        return 2
    try:
        return int(resolve(job.run)(load_config(job, args), args))
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except incomplete_runs() as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def missing_extras(job: Job) -> dict[str, list[str]]:
    """The extras ``job`` needs that are not installed, each with the modules of it that are absent."""
    import importlib.util

    absent = {extra: [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None] for extra in job.extras}
    return {extra: modules for extra, modules in absent.items() if modules}


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the user's input is wrong (exit 2, no traceback); anything else is a bug (a traceback)."""
    from pipeline.artifact import ArtifactError
    from pipeline.config import ConfigError
    from pipeline.embed.resume import ResumeMismatchError
    from pipeline.embed.waiting import ClusterBusyError
    from pipeline.index.segments import IndexMismatchError
    from pipeline.store.errors import ManifestError
    from pipeline.store.features import StoreError

    return (ConfigError, ManifestError, ResumeMismatchError, ArtifactError, StoreError, ClusterBusyError,
            IndexMismatchError)


def incomplete_runs() -> tuple[type[BaseException], ...]:
    """Errors that stop a run with its finished work kept, for a rerun to resume (exit 1, no traceback)."""
    from jobs.demo import DemoIncomplete
    from pipeline.embed.job import PipelineStalledError

    return PipelineStalledError, DemoIncomplete


def main(name: str, argv: list[str] | None = None) -> int:
    """`python -m jobs.<name>`: parse ``argv`` with the job's flags and run it."""
    job = JOBS[name]
    return execute(job, build_parser(job).parse_args(argv))


def config_reference(name: str | None = None) -> list[str]:
    """Every field of ``name``'s config (default: of every job with its own config), one section per job."""
    from pipeline.config import config_reference as fields

    lines: list[str] = []
    for job in [JOBS[name]] if name else [j for j in JOBS.values() if j.name != "tune"]:
        if lines:
            lines.append("")
        lines += [f"[{job.name}] {job.where}", *fields(job.config_class())]
    return lines
