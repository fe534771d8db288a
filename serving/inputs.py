"""Request inputs → (modality, payload) items, and OpenAI-style API errors.

A plain string is text. ``data:<mime>;base64,<payload>`` is media, routed by MIME type through the
modality registry (image/*, audio/*, video/*, text/plain); a request that names its ``modality``
(e.g. ``depth``, whose PNGs look like any PNG) gets that modality, if it accepts the MIME type. An
``http(s)://`` string is fetched as media only when the request names a media ``modality`` and the
host is on the allow-list; remote fetching is off unless configured.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from typing import Any

from pipeline import modalities as registry
from pipeline.store.http import FetchError, get
from serving.config import RemoteSettings, ServeLimits


class APIError(Exception):
    """An error answered as ``{"error": {message, type, param, code}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# a JSON value as the scan in parse_json_body sees it: a whole string, a bracket, a number or a literal
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|-?[0-9][0-9.eE+-]*|true|false|null')


def parse_json_body(body: bytes, max_values: int, max_depth: int = 8) -> dict[str, Any]:
    """A request body → its JSON object, refusing (400) bodies of more than ``max_values`` values or
    nested deeper than ``max_depth`` before json builds anything.

    Our requests hold a few fields and at most ``max_items`` strings, so a body of a million tiny
    objects (which would expand about 25x in memory) or one nested a thousand deep (a RecursionError
    in json) is refused by a scan that stops at the first excess. CPU-bound: call it off the event loop.
    """
    depth = values = 0
    for match in _JSON_TOKEN.finditer(body):
        first = match.group()[:1]
        if first in b"]}":
            depth -= 1
            continue
        values += 1
        if values > max_values:
            raise APIError(400, f"request JSON holds more than {max_values} values: expected a few fields and at "
                                "most limits.max_items inputs", "request_too_complex")
        if first in b"[{":
            depth += 1
            if depth > max_depth:
                raise APIError(400, f"request JSON is nested more than {max_depth} levels deep", "invalid_json")
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise APIError(400, f"request body is not valid JSON ({type(e).__name__}: {str(e)[:200]})", "invalid_json") from None
    if not isinstance(parsed, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(parsed).__name__}", "invalid_json")
    return parsed


def item_error(index: int, reason: str, code: str = "invalid_input") -> APIError:
    return APIError(400, f"input[{index}]: {reason}", code, param=f"input[{index}]")


@dataclasses.dataclass
class Item:
    index: int
    modality: str
    value: Any                 # str for text; bytes for media
    remote_url: str | None = None


def input_list(body: dict[str, Any], limits: ServeLimits, field: str = "input") -> list[str]:
    """The request's ``input`` as a list of strings (a single string is a list of one)."""
    if field not in body:
        raise APIError(400, f"missing required field {field!r}: a string or a list of strings", "missing_field", field)
    value = body[field]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise APIError(400, f"{field!r} must be a non-empty string or list of strings, got {type(value).__name__}"
                       + (" (empty list)" if value == [] else ""), "invalid_input", field)
    if len(value) > limits.max_items:
        raise APIError(400, f"{field!r} has {len(value)} items, over the limit of {limits.max_items} per request",
                       "too_many_items", field)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise item_error(i, f"expected a string (text, data: URI or URL), got {type(item).__name__}; "
                                "token arrays are not supported")
    return value


def resolve(index: int, raw: str, forced: str | None, modalities: list[str], limits: ServeLimits) -> Item:
    """One input string → an Item; a remote URL is returned unfetched (``remote_url`` set).

    With ``forced`` = "text" every string is text as written, even one that starts with ``data:``.
    """
    if forced is not None and forced not in modalities:
        raise APIError(400, f"modality {forced!r} is not served: expected one of {', '.join(modalities)}",
                       "unsupported_modality", "modality")
    inline = forced is not None and registry.get(forced).inline
    if raw.startswith("data:") and not inline:
        modality, payload = _data_uri(index, raw, forced, limits)
    elif forced and not inline:
        if not raw.lower().startswith(("http://", "https://")):
            raise item_error(index, f"modality {forced!r} needs a data:<mime>;base64,... URI "
                                    "(or an http(s) URL where remote fetching is enabled), got a plain string")
        modality, payload = forced, None
    else:
        modality, payload = forced or "text", raw
    if modality not in modalities:
        raise item_error(index, f"this model has no {modality!r} encoder (it serves {', '.join(modalities)})",
                         "unsupported_modality")
    if payload is None:
        return Item(index, modality, None, remote_url=raw)
    if registry.get(modality).inline:
        if isinstance(payload, bytes):
            try:
                payload = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise item_error(index, f"{modality} data URI is not UTF-8") from None
        if not payload.strip():
            raise item_error(index, "empty text: expected a non-empty string")
        if len(payload) > limits.max_text_chars:
            raise item_error(index, f"text has {len(payload)} characters, over the limit of {limits.max_text_chars}",
                             "item_too_large")
    return Item(index, modality, payload)


def _modality_of(index: int, mime: str, forced: str | None) -> str:
    """The modality a data: URI of type ``mime`` holds: the request's own (if it takes that type), else the
    one the registry routes the type to."""
    if forced:
        if not registry.get(forced).accepts_mime(mime):
            raise item_error(index, f"data URI holds {mime} but the request's modality {forced!r} takes "
                                    f"{', '.join(registry.get(forced).mime_types)}", "modality_mismatch")
        return forced
    spec = registry.for_mime(mime)
    if spec is None:
        routed = [t for m in registry.REGISTRY.values() if m.routes_mime for t in m.mime_types]
        named = [f"{m.name} ({', '.join(m.mime_types)})" for m in registry.REGISTRY.values() if not m.routes_mime]
        raise item_error(index, f"unsupported MIME type {mime or '(none)'!r}: expected {', '.join(routed)}"
                                + (f", or name the modality: {'; '.join(named)}" if named else ""), "unsupported_mime")
    return spec.name


def _data_uri(index: int, raw: str, forced: str | None, limits: ServeLimits) -> tuple[str, bytes]:
    """(modality, decoded payload) of a ``data:<mime>;base64,<payload>`` input; the type is checked first."""
    head, sep, payload = raw.partition(",")
    if not sep:
        raise item_error(index, "malformed data URI: expected data:<mime>;base64,<payload>", "invalid_data_uri")
    params = head[len("data:"):].split(";")
    mime = params[0].strip().lower()
    if "base64" not in [p.strip().lower() for p in params[1:]]:
        raise item_error(index, "data URI must be base64-encoded (data:<mime>;base64,<payload>)", "invalid_data_uri")
    modality = _modality_of(index, mime, forced)
    if len(payload) * 3 // 4 > limits.max_file_bytes + 3:
        raise item_error(index, f"payload of about {len(payload) * 3 // 4} bytes is over the limit of "
                                f"{limits.max_file_bytes} bytes per item", "item_too_large")
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise item_error(index, f"invalid base64 payload ({e})", "invalid_base64") from None
    if not data:
        raise item_error(index, "empty payload", "invalid_input")
    if len(data) > limits.max_file_bytes:
        raise item_error(index, f"payload of {len(data)} bytes is over the limit of {limits.max_file_bytes} bytes per item",
                         "item_too_large")
    return modality, data


def fetch(item: Item, remote: RemoteSettings, limits: ServeLimits) -> Item:
    """Download an allow-listed URL: no redirects, size-limited, one deadline for the whole fetch.

    The host and port must be on ``remote.allow_hosts``; the rest is ``pipeline.store.http.get``: the host
    must resolve to a public address (unless ``remote.allow_private_addresses``) and the connection goes to
    the address that was checked. Every failure is a 400 naming the item. Blocking: run it in a thread.
    """
    url, i = item.remote_url, item.index
    if not remote.enabled:
        raise item_error(i, "remote URLs are not fetched by this server (remote.enabled is false); "
                            "send the media inline as a data: URI", "remote_disabled")
    try:
        response = get(url, limits.max_file_bytes, remote.timeout_s, remote.allows, remote.allow_private_addresses,
                       "remote")
    except FetchError as e:
        allow = f" ({', '.join(remote.allow_hosts)})" if "allow-list" in str(e) else ""
        raise item_error(i, f"could not fetch {url}: {e}{allow}", e.code) from None
    if response.status != 200:
        raise item_error(i, f"could not fetch {url}: answered HTTP {response.status} (redirects are not followed)",
                         "fetch_failed")
    if not response.body:
        raise item_error(i, f"{url} returned an empty body", "fetch_failed")
    return Item(i, item.modality, response.body)
