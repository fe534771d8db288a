"""Typed, validated configuration for the embed job.

Parsed once, from YAML and/or CLI flags, before any Ray work. Every field carries a description,
which doubles as the configuration reference (``oneencoder config-reference``).
"""
from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from pipeline.modalities.base import Limit


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names field, value and expectation."""


class StrictModel(BaseModel):
    """Config base: unknown fields are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(StrictModel):
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (e.g. http://127.0.0.1:9000). "
        "Default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL from the environment, else AWS.")
    region: str | None = Field(None, description="S3 region; default: the AWS config/env.")
    anon: bool = Field(False, description="Read S3 without credentials (public buckets).")


def split_modalities(cls: Any, value: Any) -> Any:
    """A modalities field's validator (mode "before"): "image,text" from a flag → ["image", "text"]."""
    if isinstance(value, str):
        from pipeline.modality import Modality

        return [m.value for m in Modality.parse_list(value)]
    return value


def check_hosts(cls: Any, value: list[str]) -> list[str]:
    """An allow-list field's validator: host names (or [IPv6] addresses) with an optional port, lower-cased."""
    bad = [h for h in value if not re.fullmatch(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?", h)]
    if bad:
        raise ValueError(f"allow_hosts takes host names with an optional port (e.g. images.example.com or "
                         f"media.internal:8080), got {bad}")
    return [h.lower() for h in value]


class HttpConfig(StrictModel):
    enabled: bool = Field(True, description="Fetch media named by http(s) URLs in the manifest (a failed fetch is "
                          "that row's read error); false: such values are read errors.")
    allow_hosts: list[str] = Field(default_factory=list, description="Fetch only from these hosts: `host` (the "
                                   "scheme's default port) or `host:port`, exact match; empty = any public host.")
    allow_private_addresses: bool = Field(False, description="Also fetch hosts that resolve to loopback, private or "
                                          "link-local addresses (off: a URL list must not reach internal services).")
    timeout_s: float = Field(60.0, gt=0, description="Time limit of one fetch attempt (connect, headers and body).")
    retries: int = Field(3, ge=0, le=10, description="Retries after a connection error, timeout, HTTP 408/429 or 5xx "
                         "(doubling back-off).")
    backoff_s: float = Field(0.5, ge=0, description="Wait before the first retry.")
    max_redirects: int = Field(5, ge=0, le=20, description="Redirects followed (each target checked like the URL).")

    _hosts = field_validator("allow_hosts")(check_hosts)


# the limits every media input has, whatever its modality (each modality declares its own in its module)
MEDIA_LIMITS = {
    "max_file_bytes": Limit(int, 200 * 2**20, 10 * 2**20, "Largest media file or item (a file read, a data URI's decoded "
                            "payload, a fetched URL), in bytes; larger is an error.", {"ge": 1}),
    "decode_timeout_s": Limit(float, 60.0, 20.0, "Wall-clock limit for one ffmpeg decode; a hung decoder becomes an error."),
}


def limit_fields(serving: bool = False) -> dict[str, Any]:
    """The media limits and those the registered modalities declare (``ModalitySpec.limits``) as pydantic field
    definitions, with their job or serving defaults. Two modalities may share a limit only by declaring the same one."""
    from pipeline.modalities import REGISTRY

    declared: dict[str, Any] = dict(MEDIA_LIMITS)
    for spec in REGISTRY.values():
        for name, limit in spec.limits.items():
            if declared.setdefault(name, limit) is not limit:
                raise TypeError(f"limit {name!r} is declared twice, differently")
    return {name: (limit.kind, Field(limit.serve if serving else limit.job, description=limit.description, **limit.bounds))
            for name, limit in declared.items()}


# the embed job's limits: the media ones, then each modality's own (a new modality's limit is a field here)
LimitsConfig = create_model("LimitsConfig", __base__=StrictModel, __module__=__name__, **limit_fields())
LimitsConfig.__doc__ = "Size, duration and time limits on inputs: the media ones and each registered modality's."


class EncoderConfig(StrictModel):
    model: str | None = Field(None, description="Hugging Face model id or local path; null = the preset's encoder.")
    revision: str | None = Field(None, description="Model revision (branch, tag or commit) for hub ids; null = main.")
    tokens: Annotated[int, Field(ge=1, le=4096)] | Literal["all"] = Field(1, description="K: token vectors kept per "
        "item (adaptive average pooling; 1 = pooled vector), or all = the item's own token sequence, up to max_tokens "
        "(stored padded with zero vectors, its length in the store's `tokens` column; padding is masked).")
    max_tokens: int = Field(256, ge=1, le=4096, description="With tokens: all, the most tokens kept per item (the first "
                            "ones; the store's K); ignored otherwise.")
    dtype: Literal["float16", "float32"] = Field("float16", description="Storage dtype of the embedding column.")
    batch_size: int = Field(16, ge=1, description="Items per encoder forward pass.")
    actors: int | None = Field(None, ge=1, description="Encoder actors (each loads the model once); null = 1, or, "
                               "when the actors also decode (decode.fused), as many as the cluster has CPUs, started "
                               "as free CPUs allow.")
    num_cpus: float | None = Field(None, gt=0, description="Logical CPUs reserved per encoder actor; null = 1, or, "
                                   "when the actors also decode, the cluster's CPUs less one (for reading) shared "
                                   "among them.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per encoder actor (0 = CPU).")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per encoder actor "
                                        "(e.g. {encoder_node: 1} to place encoders on a worker group that has it).")
    concurrent_batches: int | None = Field(None, ge=1, description="Batches each encoder actor works on at once, in "
                                           "threads sharing its one model (one is unpacked or written while "
                                           "another computes); null = 2 on CPU, 1 on GPU or when the actors "
                                           "also decode.")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per batch; null = the node's cores "
                                      "/ concurrent_batches in the embed job (the actor's num_cpus / concurrent_batches when it also decodes), all "
                                      "cores elsewhere, when on CPU.")
    precision: Literal["float32", "float16", "bfloat16"] = Field("float32", description="Compute precision on GPU (CPU always runs float32).")
    num_frames: int | None = Field(None, ge=1, description="Video: frames sampled per clip; null = the model's num_frames.")
    max_text_tokens: int | None = Field(None, ge=1, description="Text: tokenizer truncation length; null = the model's maximum.")

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        """One message for a bad ``tokens`` (not one per member of its union)."""
        ok = value == "all" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096) or (
            isinstance(value, str) and value.isascii() and value.isdigit() and 1 <= int(value) <= 4096)
        if not ok:
            raise ValueError("expected K, an integer from 1 to 4096 (K pooled token vectors per item), or all (each "
                             "item's token sequence, up to max_tokens)")
        return value if value == "all" else int(value)

    @property
    def sequence(self) -> bool:
        """Whether each item keeps its own token sequence (``tokens: all``) rather than K pooled tokens."""
        return self.tokens == "all"

    @property
    def stored_tokens(self) -> int:
        """K of the store's ``embedding`` [K, D]: ``tokens``, or ``max_tokens`` with ``tokens: all``."""
        return self.max_tokens if self.tokens == "all" else self.tokens


def cache_root() -> str:
    """$ONEENCODER_CACHE, else ~/.cache/oneencoder: built models and the demo's work folder live here."""
    return os.environ.get("ONEENCODER_CACHE") or str(Path.home() / ".cache" / "oneencoder")


def format_validation_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<top level>"
        value = e.get("input")
        if not e["loc"]:
            lines.append(f"  {e['msg']}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field (value {value!r}); check the spelling against the configuration reference")
        else:
            lines.append(f"  {field} = {value!r}: {e['msg']}")
    return "\n".join(lines)


def read_yaml_mapping(path: str) -> dict[str, Any]:
    """A YAML file's top-level mapping. Raises ConfigError for unreadable, invalid or non-mapping files."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config {path}: expected a mapping of fields at the top level, got {type(loaded).__name__}")
    return loaded or {}


def load_config(model: type[BaseModel], path: str | None = None, /, **overrides: Any) -> Any:
    """Read a YAML config (optional), apply non-None ``overrides`` (CLI flags), validate once as ``model``.

    Raises ConfigError naming the field, the bad value and what was expected.
    """
    data = read_yaml_mapping(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_errors(e, path or "command line")) from None


def config_from_args(model: type[BaseModel], args: Any) -> Any:
    """``load_config`` with ``args.config`` and, as overrides, every parsed flag named like a field of ``model``."""
    flags = {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
    return load_config(model, getattr(args, "config", None), **flags)


def require_fields(cfg: BaseModel, **expected: str) -> None:
    """Raise ConfigError for the first field of ``expected`` (name -> what it should be) that is unset."""
    for name, what in expected.items():
        if not getattr(cfg, name):
            raise ConfigError(f"invalid config: {name} is missing: expected {what} "
                              f"(set it in the config file or pass --{name.replace('_', '-')})")


def config_reference(model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per field: dotted name, default and description (for docs and --help).

    Nested configs are flattened: ``storage.region``, ``stages[].epochs``, ``encoders.<modality>.tokens``.
    """
    lines = []
    for name, field in model.model_fields.items():
        optional = [a for a in typing.get_args(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if optional and type(None) in typing.get_args(field.annotation):  # e.g. tune: TuneSettings | None
            lines.append(f"{prefix}{name} (default None): {field.description}")
            lines += config_reference(optional[0], f"{prefix}{name}.")
            continue
        nested = _nested_config(field.annotation)
        if nested is not None:
            suffix, inner = nested
            lines += config_reference(inner, f"{prefix}{name}{suffix}.")
            continue
        if field.is_required():
            lines.append(f"{prefix}{name} (required): {field.description}")
            continue
        lines.append(f"{prefix}{name} (default {field.get_default(call_default_factory=True)!r}): {field.description}")
    return lines


def _nested_config(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """('', M) for a field of config type M, ('[]', M) for list[M], ('.<key>', M) for dict[key, M]; else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "", annotation
    args = typing.get_args(annotation)
    inner = args[-1] if args else None
    if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
        return None
    if typing.get_origin(annotation) is list:
        return "[]", inner
    key = args[0].__name__.lower() if isinstance(args[0], type) else "key"
    return f".<{key}>", inner
