"""Typed settings of the serving application and the Serve config YAML that carries them.

The YAML is a regular Ray Serve config (what ``serve deploy`` reads): ``applications[0].args``
holds the settings below (validated here), ``applications[0].deployments`` holds Serve's own
per-deployment options (replicas, autoscaling, resources, queue limits, batch ``user_config``).
``oneencoder serve --config`` reads the same file and applies those options itself.
"""
from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, field_validator

from pipeline.artifact import is_artifact
from pipeline.config import (ConfigError, LimitsConfig, StorageConfig, StrictModel, check_hosts,
                             format_validation_errors, limit_fields, read_yaml_mapping)
from pipeline.modality import Modality
from pipeline.store.http import host_allowed

APP_NAME = "oneencoder"
GATEWAY, SEARCH, DECODER = "Gateway", "SearchIndex", "MediaDecoder"


def encoder_deployment(modality: str) -> str:
    """Name of the deployment serving ``modality`` (as listed in the Serve config)."""
    return f"encoder-{modality}"


# the embed job's limits (the same fields, read by the same decoders) with a server's tighter defaults, plus a request's
ServeLimits = create_model(
    "ServeLimits", __base__=LimitsConfig, __module__=__name__,
    **limit_fields(serving=True),
    max_items=(int, Field(64, ge=1, description="Inputs per request (the `input` list).")),
    max_request_bytes=(int, Field(32 * 2**20, ge=1, description="Largest request body, in bytes (413 above it).")),
    # what one request may cost: small files can decode to much (a 40 MP lossless WebP of one colour is 38 bytes)
    max_request_pixels=(int, Field(256_000_000, ge=1, description="Decoded pixels (width*height) per request, summed "
                                   "over its images and depth maps from their headers before any is decoded (one whose "
                                   "size is not found counts as max_image_pixels); over it is a 400.")),
    max_request_audio_seconds=(float, Field(300.0, gt=0, description="Audio seconds per request: each of a request's n "
                                            "audio items is decoded up to min(max_audio_seconds, this / n) seconds, so "
                                            "their total never exceeds it; an item longer than its share is a 400.")),
    max_request_video_seconds=(float, Field(300.0, gt=0, description="Video seconds per request: each of a request's n "
                                            "videos may run min(max_video_seconds, this / n) seconds (their length is "
                                            "read from packet timestamps before decoding); a longer one is a 400.")),
    max_k=(int, Field(100, ge=1, description="Largest `k` a search may ask for.")))
ServeLimits.__doc__ = "Request and media limits of the server."
# per-item limits whose request budget is shared out among the items that have them (a length is known only once
# demuxed, so each item gets its share as its limit); pixels are summed from headers instead (max_request_pixels)
SHARED_BUDGETS = {"max_audio_seconds": "max_request_audio_seconds", "max_video_seconds": "max_request_video_seconds"}


class RemoteSettings(StrictModel):
    enabled: bool = Field(False, description="Fetch http(s) URLs given as media inputs; off by default.")
    allow_hosts: list[str] = Field(default_factory=list, description="Hosts that may be fetched: `host` (the scheme's default port) or `host:port`, exact match; required when enabled.")
    allow_private_addresses: bool = Field(False, description="Also fetch hosts that resolve to loopback, private or link-local addresses (off: only public ones).")
    timeout_s: float = Field(10.0, gt=0, description="Time limit of one fetch (connect, headers and body together).")

    _hosts = field_validator("allow_hosts")(check_hosts)

    def allows(self, host: str, port: int, default_port: int) -> bool:
        """Whether ``host`` (lower case, IPv6 without brackets) on ``port`` is on the allow-list; an entry
        without a port allows the URL scheme's ``default_port`` only."""
        return host_allowed(self.allow_hosts, host, port, default_port)


class ServeArgs(StrictModel):
    model: str | None = Field(None, description="Model artifact folder written by `oneencoder train` (required).")
    model_name: str = Field("oneencoder", min_length=1, description="Model id clients pass as `model` and /v1/models lists: the default version.")
    versions: dict[str, str] = Field(default_factory=dict, description="More model artifacts served at once, by the id a request names as `model`, e.g. {oneencoder-v1: models/v1, oneencoder-v2: models/v2}; `model` is the default (`model_name`), and may be listed here too under a stable id. Switching the default is a change of `model` (serve deploy): replicas are replaced with no downtime.")
    modalities: list[Modality] | None = Field(None, description="Modalities to serve (each gets an encoder deployment); null = all of the model's.")
    features: str | None = Field(None, description="Feature store (local or s3://) projected and searched exactly for /v1/search at start-up (small stores); null = no search unless `index`.")
    index: str | None = Field(None, description="Index folder written by `oneencoder index` (local, or s3:// copied to the cache once), memory-mapped for /v1/search instead of projecting a store; null = `features`, or no search.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="S3 access for the feature store or index.")
    limits: ServeLimits = Field(default_factory=ServeLimits, description="Request and media limits.")
    remote: RemoteSettings = Field(default_factory=RemoteSettings, description="Fetching remote media URLs.")
    api_key_env: str | None = Field(None, description="Environment variable holding the bearer token clients must send; null = no auth.")
    torch_threads: int = Field(1, ge=1, description="Torch threads per encoder replica.")
    decode: Literal["decoder", "encoders"] = Field("decoder", description="Where media items are decoded (ffmpeg, Pillow): `decoder`, in the MediaDecoder deployment (CPU, scaled on its own), which hands the encoders arrays to batch, so an encoder replica (a GPU's) never waits on a decode; `encoders`, inside each encoder replica (one deployment fewer; remove MediaDecoder from the deployments). Text is never decoded apart.")


class BatchSettings(StrictModel):
    """An encoder deployment's ``user_config``: retunable at runtime without restarting replicas."""

    max_batch_size: int = Field(16, ge=1, description="Most inputs encoded together.")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="Longest wait for a batch to fill.")


def parse_args(args: dict[str, Any] | None, source: str = "serve args") -> ServeArgs:
    """Validate the application args; the error names each bad field and what was expected."""
    try:
        parsed = ServeArgs(**(args or {}))
    except ValidationError as e:
        raise ConfigError(format_validation_errors(e, source)) from None
    if not parsed.model:
        raise ConfigError(f"{source}: `model` is required: the model artifact folder written by `oneencoder train`")
    if not is_artifact(parsed.model):
        raise ConfigError(f"{source}: model={parsed.model!r} is not a model artifact (no config.json); "
                          "expected the folder written by `oneencoder train`")
    for version, path in parsed.versions.items():
        if not version.strip() or len(version) > 128:
            raise ConfigError(f"{source}: versions: {version!r} is not a model id (1 to 128 characters)")
        if version == parsed.model_name and os.path.realpath(path) != os.path.realpath(parsed.model):
            raise ConfigError(f"{source}: versions.{version} = {path!r}, but {version!r} is model_name, the default "
                              f"version ({parsed.model!r}): give this version another id")
        if not is_artifact(path):
            raise ConfigError(f"{source}: versions.{version} = {path!r} is not a model artifact (no config.json); "
                              "expected a folder written by `oneencoder train`")
    if parsed.features and parsed.index:
        raise ConfigError(f"{source}: give `features` (a store projected at start-up) or `index` (an index folder from "
                          f"`oneencoder index`), not both: features={parsed.features!r}, index={parsed.index!r}")
    if parsed.remote.enabled and not parsed.remote.allow_hosts:
        raise ConfigError(f"{source}: remote.enabled is true but remote.allow_hosts is empty; list the hosts that may be fetched")
    if parsed.api_key_env and not os.environ.get(parsed.api_key_env):
        raise ConfigError(f"{source}: api_key_env={parsed.api_key_env!r} but that environment variable is not set "
                          "(set it to the bearer token, or set api_key_env to null to serve without auth)")
    return parsed


def load_serve_config(path: str) -> dict[str, Any]:
    """Read a Serve config YAML, check it with Ray's own schema, and return its single application."""
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema

    raw = read_yaml_mapping(path)
    try:
        schema = ServeDeploySchema(**raw)
    except Exception as e:  # pydantic v1/v2 errors from Ray's schema
        raise ConfigError(f"{path}: not a valid Ray Serve config: {e}") from None
    apps = [a for a in raw.get("applications", []) if a.get("import_path") == "serving.app:build_app"]
    if len(apps) != 1:
        raise ConfigError(f"{path}: expected exactly one application with import_path serving.app:build_app, "
                          f"found {len(apps)}")
    app = dict(apps[0])
    known = set(DeploymentSchema.model_fields)
    for deployment in app.get("deployments") or []:  # Ray's schema lets an unknown option through, unused
        unknown = sorted(set(deployment) - known)
        if unknown:
            raise ConfigError(f"{path}: deployment {deployment.get('name')!r} has the option {unknown[0]!r}, which Ray "
                              f"Serve does not have; expected some of {', '.join(sorted(known - {'name'}))}")
    app.setdefault("args", {})
    app["http_options"] = schema.http_options.model_dump() if hasattr(schema.http_options, "model_dump") else dict(raw.get("http_options") or {})
    return app


def batch_settings(user_config: dict[str, Any] | None, deployment: str) -> BatchSettings:
    try:
        return BatchSettings(**(user_config or {}))
    except ValidationError as e:
        raise ConfigError(format_validation_errors(e, f"{deployment} user_config")) from None
