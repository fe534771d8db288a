"""Config: typed, validated once, errors name the field, the bad value and the expectation."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.config import ConfigError, config_reference
from pipeline.embed.config import EmbedConfig, load_embed_config, require_paths
from pipeline.modality import Modality
from tests.settings import ROOT


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_and_overrides(tmp_path):
    cfg = load_embed_config(write(tmp_path, "input: m.jsonl\nencoders:\n  image: {tokens: 4, dtype: float32}\n"),
                            output="out", modalities="image,text")
    assert cfg.input == "m.jsonl" and cfg.output == "out"
    assert cfg.modalities == [Modality("image"), Modality("text")]
    assert cfg.encoder(Modality("image")).tokens == 4 and cfg.encoder(Modality("text")).tokens == 1
    assert cfg.encoder(Modality("image")).dtype == "float32"


@pytest.mark.parametrize("text,expected", [
    ("encoders:\n  image: {tokens: 0}\n", r"encoders\.image\.tokens = 0: Value error, expected K, an integer from 1 to "
                                        r"4096 \(K pooled token vectors per item\), or all \(each item's token sequence"),
    ("encoders:\n  image: {tokens: every}\n", r"encoders\.image\.tokens = 'every': Value error, expected K, an integer"),
    ("encoders:\n  image: {dtype: float64}\n", r"encoders\.image\.dtype = 'float64': Input should be 'float16' or 'float32'"),
    ("encoders:\n  smell: {tokens: 1}\n", r"encoders\.smell\.\[key\] = 'smell'"),
    ("shard_size: many\n", r"shard_size = 'many': Input should be a valid integer"),
    ("limits: {max_file_bytez: 3}\n", r"limits\.max_file_bytez: unknown field"),
    ("preset: huge\n", r"preset = 'huge': Input should be 'tiny' or 'paper'"),
    ("modalities: image,smell\n", r"unknown modality 'smell': expected one of image, text, audio, video"),
])
def test_bad_values_are_named(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_embed_config(write(tmp_path, text))


def test_not_a_mapping_and_not_yaml(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_embed_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_embed_config(write(tmp_path, "a: [unclosed\n"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_embed_config(str(tmp_path / "missing.yaml"))


def test_missing_paths_are_named():
    with pytest.raises(ConfigError, match="input is missing"):
        require_paths(EmbedConfig(output="x"))


def test_reference_lists_every_field_with_a_description():
    lines = config_reference(EmbedConfig)
    assert any(line.startswith("limits.max_image_pixels (default 60000000)") for line in lines)
    assert any(line.startswith("encoders.<modality>.tokens (default 1)") for line in lines)
    assert all(not line.endswith(": None") for line in lines)


def project_yaml_files(root: str = ROOT) -> list[str]:
    """The YAML files the project ships, relative to the checkout: those git tracks. Output written into the
    checkout (a demo or job run from there, a user's own configs) is not the project's to validate."""
    listed = subprocess.run(["git", "-C", root, "ls-files", "-z", "--", "*.yaml", "*.yml"], capture_output=True, text=True)
    assert listed.returncode == 0, f"this test lists the project's YAML files with git: {listed.stderr.strip()}"
    return sorted(f for f in listed.stdout.split("\0") if f)


def test_yaml_files_written_into_the_checkout_are_not_the_projects(tmp_path):
    checkout = str(tmp_path / "checkout")  # a clone of this one: the stray file is not written into the real checkout
    cloned = subprocess.run(["git", "clone", "-q", "--shared", ROOT, checkout], capture_output=True, text=True)
    assert cloned.returncode == 0, cloned.stderr
    with open(os.path.join(checkout, "oneencoder-demo-stray-test.yaml"), "w", encoding="utf-8") as fh:
        fh.write("labels: {}\n")  # what a run inside the checkout could leave
    files = project_yaml_files(checkout)
    assert "oneencoder-demo-stray-test.yaml" not in files and "cluster.yaml" in files


def test_every_yaml_in_the_repo_validates():
    """Job configs with their loaders, the Serve config with Ray's schema + ServeArgs, cluster.yaml with
    Ray's cluster-launcher schema, mkdocs.yml with mkdocs'; each opens with a comment showing the command that uses
    it."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    from benchmarks.embed import BenchmarkEmbedConfig
    from benchmarks.serve import BenchmarkServeConfig
    from benchmarks.train import BenchmarkTrainConfig
    from pipeline.config import load_config
    from pipeline.eval.report import EvaluateConfig
    from pipeline.index.config import IndexConfig
    from pipeline.train.config import load_train_config
    from serving.config import ServeArgs, load_serve_config

    loaders = {"embed": load_embed_config, "train": load_train_config,
               "evaluate": lambda f: load_config(EvaluateConfig, f), "index": lambda f: load_config(IndexConfig, f)}
    benchmark_loaders = {"embed": BenchmarkEmbedConfig, "train": BenchmarkTrainConfig, "serve": BenchmarkServeConfig}
    checked = set()
    for rel in project_yaml_files():
        path = os.path.join(ROOT, rel)
        with open(path) as fh:
            header = fh.read().split("\n\n")[0]
        assert header.startswith("# "), f"{rel} must open with a comment showing its command"
        if rel.startswith("jobs/configs/"):
            name = os.path.basename(path)
            kind = max((k for k in loaders if name.startswith(k + "_")), key=len, default=None)
            assert kind, f"{rel}: job config names start with one of {sorted(loaders)} and _"
            assert f"--config {rel}" in header, f"{rel}: its opening comment must show the command that runs it"
            loaders[kind](path)
        elif rel.startswith("benchmarks/configs/"):
            kind = os.path.basename(path).split("_")[0]
            assert kind in benchmark_loaders, f"{rel}: benchmark config names start with one of {sorted(benchmark_loaders)}"
            assert f"python -m benchmarks.{kind} --config {rel}" in header, f"{rel}: its opening comment must show its command"
            load_config(benchmark_loaders[kind], path)
        elif rel == "serving/serve_config.yaml":
            ServeArgs(**load_serve_config(path)["args"])
        elif rel == "cluster.yaml":
            with open(path) as fh:
                validate_config(prepare_config(yaml.safe_load(fh)))
        elif rel.startswith("deploy/kubernetes/"):
            from tests.kubernetes_manifests import check_manifest

            check_manifest(path)  # KubeRay's fields, Kubernetes' schemas, the Serve config, the entrypoints
        elif rel == "mkdocs.yml":
            from mkdocs.config import load_config as load_mkdocs_config

            load_mkdocs_config(path)  # mkdocs' own schema: an unknown or bad option raises
        else:
            raise AssertionError(f"{rel}: no validator for this YAML; add one here")
        checked.add(rel)
    assert {"cluster.yaml", "serving/serve_config.yaml", "jobs/configs/embed_tiny.yaml", "jobs/configs/train_tiny.yaml",
            "jobs/configs/evaluate_tiny.yaml", "jobs/configs/index_tiny.yaml", "benchmarks/configs/serve_paper.yaml", "mkdocs.yml",
            "deploy/kubernetes/rayservice.yaml", "deploy/kubernetes/rayjob-embed.yaml"} <= checked


def test_cli_bad_config_fails_before_starting_ray(tmp_path):
    path = write(tmp_path, "input: m.jsonl\noutput: out\nencoders:\n  audio: {batch_size: -2}\n")
    proc = subprocess.run([sys.executable, "-m", "jobs.embed", "--config", path], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "encoders.audio.batch_size = -2" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


def test_docs_config_reference_matches_the_code():
    from jobs.registry import config_reference as job_config_reference

    page = open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8").read()
    block = page.split("<!-- config-reference:start -->")[1].split("<!-- config-reference:end -->")[0]
    assert block.strip().strip("`").strip().splitlines() == job_config_reference()


def test_ci_runs_the_readme_commands_in_order():
    """.ci/run runs the README's two commands as lines of its own, demo first, as a new user would."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read().splitlines()
    commands = ['pip install -c constraints.txt -e ".[all]" && oneencoder demo',
                'pip install -c constraints.txt -e ".[dev]" && python -m pytest -q']
    assert all(c in readme for c in commands) and readme.index(commands[0]) < readme.index(commands[1])
    assert all(c in ci for c in commands) and ci.index(commands[0]) < ci.index(commands[1])
