"""Request inputs → (modality, payload) items, and OpenAI-style API errors.

A plain string is text. ``data:<mime>;base64,<payload>`` is image/audio/video (or text/plain) by
MIME type. An ``http(s)://`` string is fetched as media only when the request names a media
``modality`` and the host is on the allow-list; remote fetching is off unless configured.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from serving.config import RemoteSettings, ServeLimits

MEDIA = ("image", "audio", "video")


class APIError(Exception):
    """An error answered as ``{"error": {message, type, param, code}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


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
    """One input string → an Item; a remote URL is returned unfetched (``remote_url`` set)."""
    if raw.startswith("data:"):
        modality, payload = _data_uri(index, raw, limits)
        if forced and forced != modality:
            raise item_error(index, f"data URI holds {modality} but the request's modality is {forced!r}", "modality_mismatch")
    elif forced and forced != "text":
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
    if modality == "text":
        if isinstance(payload, bytes):
            try:
                payload = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise item_error(index, "text/plain data URI is not UTF-8") from None
        if not payload.strip():
            raise item_error(index, "empty text: expected a non-empty string")
        if len(payload) > limits.max_text_chars:
            raise item_error(index, f"text has {len(payload)} characters, over the limit of {limits.max_text_chars}",
                             "item_too_large")
    return Item(index, modality, payload)


def _data_uri(index: int, raw: str, limits: ServeLimits) -> tuple[str, bytes]:
    head, sep, payload = raw.partition(",")
    if not sep:
        raise item_error(index, "malformed data URI: expected data:<mime>;base64,<payload>", "invalid_data_uri")
    params = head[len("data:"):].split(";")
    mime = params[0].strip().lower()
    if "base64" not in [p.strip().lower() for p in params[1:]]:
        raise item_error(index, "data URI must be base64-encoded (data:<mime>;base64,<payload>)", "invalid_data_uri")
    major = mime.split("/", 1)[0]
    if major in MEDIA:
        modality = major
    elif mime == "text/plain":
        modality = "text"
    else:
        raise item_error(index, f"unsupported MIME type {mime or '(none)'!r}: expected image/*, audio/*, video/* "
                                "or text/plain", "unsupported_mime")
    if len(payload) * 3 // 4 > limits.max_item_bytes + 3:
        raise item_error(index, f"payload of about {len(payload) * 3 // 4} bytes is over the limit of "
                                f"{limits.max_item_bytes} bytes per item", "item_too_large")
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise item_error(index, f"invalid base64 payload ({e})", "invalid_base64") from None
    if not data:
        raise item_error(index, "empty payload", "invalid_input")
    if len(data) > limits.max_item_bytes:
        raise item_error(index, f"payload of {len(data)} bytes is over the limit of {limits.max_item_bytes} bytes per item",
                         "item_too_large")
    return modality, data


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - redirects are refused
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


def fetch(item: Item, remote: RemoteSettings, limits: ServeLimits) -> Item:
    """Download an allow-listed URL (no redirects, size-limited); blocking — run it in a thread."""
    url, i = item.remote_url, item.index
    if not remote.enabled:
        raise item_error(i, "remote URLs are not fetched by this server (remote.enabled is false); "
                            "send the media inline as a data: URI", "remote_disabled")
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or host not in remote.allow_hosts:
        raise item_error(i, f"host {host or url!r} is not on the allow-list ({', '.join(remote.allow_hosts)})",
                         "host_not_allowed")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=remote.timeout_s) as response:
            data = response.read(limits.max_item_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise item_error(i, f"could not fetch {url}: {getattr(e, 'reason', e)}", "fetch_failed") from None
    if len(data) > limits.max_item_bytes:
        raise item_error(i, f"{url} is over the limit of {limits.max_item_bytes} bytes per item", "item_too_large")
    if not data:
        raise item_error(i, f"{url} returned an empty body", "fetch_failed")
    return Item(i, item.modality, data)
