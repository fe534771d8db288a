"""Checking deploy/kubernetes/: the KubeRay (ray.io/v1) resources against the fields KubeRay's CRDs define, their pod
templates and the other resources against Kubernetes' own schemas (kubernetes-validate), the Serve config a RayService
carries with Ray's schema and ours, and a RayJob's entrypoint with the job's own command line.

No cluster here: what a KubeRay operator adds on top (its validating webhook, CEL rules) is checked by
``kubectl apply --dry-run=server`` on a cluster running it (docs/deployment.md).
"""
from __future__ import annotations

import os
import shlex
import tempfile
from typing import Any

import yaml

KUBERNETES = "1.33.0"  # the Kubernetes schemas the pod templates are checked against (kubernetes-validate's)
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT = {"type": "integer"}
_OBJ = {"type": "object"}  # a nested Kubernetes type: checked with kubernetes-validate where it is a pod template

# The fields of KubeRay's v1 CRDs (ray.io_rayclusters/rayservices/rayjobs, KubeRay 1.7): every field of each level,
# with its type; an unknown field is refused (the API server would prune or reject it).
_HEAD = {"type": "object", "required": ["template"], "additionalProperties": False, "properties": {
    "template": _OBJ, "rayStartParams": _STR_MAP, "serviceType": {"type": "string"}, "headService": _OBJ,
    "enableIngress": {"type": "boolean"}, "ingressOptions": _OBJ, "resources": _STR_MAP, "labels": _STR_MAP}}
_WORKER = {"type": "object", "required": ["groupName", "minReplicas", "maxReplicas", "template"],
           "additionalProperties": False, "properties": {
               "groupName": {"type": "string"}, "replicas": _INT, "minReplicas": _INT, "maxReplicas": _INT,
               "numOfHosts": _INT, "idleTimeoutSeconds": _INT, "priority": _INT, "rayStartParams": _STR_MAP,
               "template": _OBJ, "scaleStrategy": _OBJ, "suspend": {"type": "boolean"}, "resources": _STR_MAP,
               "labels": _STR_MAP}}
_CLUSTER = {"type": "object", "required": ["headGroupSpec"], "additionalProperties": False, "properties": {
    "headGroupSpec": _HEAD, "workerGroupSpecs": {"type": "array", "items": _WORKER}, "rayVersion": {"type": "string"},
    "enableInTreeAutoscaling": {"type": "boolean"}, "autoscalerOptions": _OBJ, "headServiceAnnotations": _STR_MAP,
    "suspend": {"type": "boolean"}, "managedBy": {"type": "string"}, "upgradeStrategy": _OBJ, "authOptions": _OBJ,
    "gcsFaultToleranceOptions": _OBJ, "historyServerOptions": _OBJ, "networkPolicy": _OBJ, "tlsOptions": _OBJ}}
_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "labels": _STR_MAP}}
SCHEMAS = {
    "RayService": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayService"}, "metadata": _META,
        "spec": {"type": "object", "required": ["rayClusterConfig"], "additionalProperties": False, "properties": {
            "rayClusterConfig": _CLUSTER, "serveConfigV2": {"type": "string"}, "serveService": _OBJ,
            "upgradeStrategy": {"type": "object", "additionalProperties": False, "properties": {
                # no enum in the CRD: the operator accepts these
                "type": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]},
                "clusterUpgradeOptions": _OBJ}},
            "rayClusterDeletionDelaySeconds": {"type": "integer", "minimum": 0},
            "excludeHeadPodFromServeSvc": {"type": "boolean"}, "suspend": {"type": "boolean"},
            "managedBy": {"type": "string"}}}}},
    "RayJob": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"}, "metadata": _META,
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "entrypoint": {"type": "string"}, "runtimeEnvYAML": {"type": "string"},
            "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
            "rayClusterSpec": _CLUSTER, "clusterSelector": _STR_MAP, "shutdownAfterJobFinishes": {"type": "boolean"},
            "ttlSecondsAfterFinished": _INT, "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
            "preRunningDeadlineSeconds": {"type": "integer", "minimum": 1}, "backoffLimit": _INT,
            "submitterPodTemplate": _OBJ, "submitterConfig": _OBJ, "entrypointNumCpus": {"type": "number"},
            "entrypointNumGpus": {"type": "number"}, "entrypointResources": {"type": "string"},
            "jobId": {"type": "string"}, "metadata": _STR_MAP, "suspend": {"type": "boolean"},
            "managedBy": {"type": "string"}, "deletionStrategy": _OBJ}}}},
}


def _kubernetes(resource: dict[str, Any], where: str) -> None:
    """A Kubernetes resource of a built-in kind against that version's schema, unknown fields refused."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(resource, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{where}: {e.message} at {'.'.join(map(str, e.path))}") from None


def pod_templates(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A RayClusterSpec's pod templates by group (``head`` and each worker group's name)."""
    out = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster.get("workerGroupSpecs", []):
        out[group["groupName"]] = group["template"]
    return out


def check_manifest(path: str) -> dict[str, Any]:
    """Check the resource in ``path`` (see the module's docstring); returns it."""
    import jsonschema

    with open(path) as fh:
        resource = yaml.safe_load(fh)
    kind = resource.get("kind")
    if kind not in SCHEMAS:
        _kubernetes(resource, path)
        return resource
    errors = sorted(jsonschema.Draft202012Validator(SCHEMAS[kind]).iter_errors(resource), key=lambda e: list(e.path))
    assert not errors, f"{path}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    cluster = resource["spec"]["rayClusterConfig" if kind == "RayService" else "rayClusterSpec"]
    for group, template in pod_templates(cluster).items():  # each as the built-in PodTemplate kind holds it
        _kubernetes({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}, "template": template},
                    f"{path} ({group} pod template)")
        assert template["spec"]["containers"], f"{path}: {group} has no container"
    if kind == "RayService":
        serve_config(resource)
    else:
        entrypoint_commands(resource)
    return resource


def serve_config(resource: dict[str, Any]) -> dict[str, Any]:
    """A RayService's serveConfigV2, checked as `oneencoder serve --config` checks a Serve config (Ray's schema, then
    the application's args); returns the application."""
    from serving.config import ServeArgs, load_serve_config

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(resource["spec"]["serveConfigV2"])
    try:
        app = load_serve_config(fh.name)
    finally:
        os.unlink(fh.name)
    ServeArgs(**app["args"])  # the model path is on the cluster's volume: its fields are checked, not its files
    return app


def entrypoint_commands(resource: dict[str, Any]) -> list[list[str]]:
    """A RayJob's entrypoint: each `a && b` part parsed by the job's own command line (argparse exits on a bad flag)."""
    from tests.commands import parse_command

    parts = [p.strip() for p in resource["spec"]["entrypoint"].split("&&")]
    for part in parts:
        assert part.startswith("python -m jobs."), f"{part}: not one of our jobs"
        parse_command(part)
    return [shlex.split(p) for p in parts]
