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
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None, stage: str = "request"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind
        self.headers = headers or {}
        self.stage = stage  # what refused it (the oneencoder_errors metric): auth, request, embed, search, queue

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# The scan in parse_json_body reads bodies of up to limits.max_request_bytes (32 MiB) before json builds anything,
# in time linear in their length whatever the bytes: each token is matched where the last one ended (never searched
# for, so no byte is tried twice); a string is followed once to its closing quote, and one that never closes ends
# the scan, as does any byte that cannot start a token. Every regex match runs over at most _WINDOW bytes: a match
# holds the GIL (and so the event loop) for milliseconds, however long the run it is part of.
_WINDOW = 2**20
_SEPARATORS = re.compile(rb"[ \t\n\r,:]*+")                      # json's whitespace; commas and colons
_ESCAPED = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)  # string content from a backslash on
_NUMBER = re.compile(rb"-?[0-9][0-9.eE+-]*+")                     # json.loads checks the grammar afterwards
_LITERAL = re.compile(rb"true|false|null|NaN|-?Infinity")
_MAX_NUMBER_CHARS = 1000
_QUOTE, _PAIRS = ord('"'), {ord("]"): ord("["), ord("}"): ord("{")}


def _invalid(message: str) -> APIError:
    return APIError(400, f"request body is not valid JSON: {message}", "invalid_json")


def _run_end(pattern: re.Pattern, body: bytes, pos: int) -> int:
    """Where the run of single-byte ``pattern`` starting at ``pos`` ends, matched a window at a time."""
    while True:
        end = min(pos + _WINDOW, len(body))
        pos = pattern.match(body, pos, end).end()
        if pos < end or end == len(body):
            return pos


def _string_end(body: bytes, pos: int) -> int:
    """Offset of the quote that closes the string whose content starts at ``pos`` (memchr over runs without
    escapes, the regex from a backslash on, a window at a time); 400 if the string never closes."""
    n = len(body)
    while pos < n:
        end = min(pos + _WINDOW, n)
        quote, slash = body.find(b'"', pos, end), body.find(b"\\", pos, end)
        if slash < 0 or 0 <= quote < slash:
            if quote >= 0:
                return quote
            pos = end
            continue
        pos = _ESCAPED.match(body, slash, end).end()  # stops at a quote, at ``end``, or at a backslash at end - 1
        if pos < end and body[pos] == _QUOTE:
            return pos
        if end == n:
            break
    raise _invalid("a string that never closes (no closing '\"')")


def _scan(body: bytes, max_values: int, max_depth: int) -> None:
    """Refuse (400) a body of more than ``max_values`` values (strings, numbers, literals, objects, arrays), nested
    more than ``max_depth`` deep, or that cannot be JSON: a byte no token starts with, an unbalanced bracket, an
    unclosed string, a number of over _MAX_NUMBER_CHARS characters, or NaN/Infinity. Linear; stops at the first fault."""
    pos, values, opened = (3 if body.startswith(b"\xef\xbb\xbf") else 0), 0, []
    while (pos := _run_end(_SEPARATORS, body, pos)) < len(body):
        byte = body[pos]
        if byte in _PAIRS:
            if not opened or opened.pop() != _PAIRS[byte]:
                raise _invalid(f"unbalanced {chr(byte)!r} at offset {pos}")
            pos += 1
            continue
        values += 1
        if values > max_values:
            raise APIError(400, f"request JSON holds more than {max_values} values: expected a few fields and at "
                                "most limits.max_items inputs", "request_too_complex")
        if byte == _QUOTE:
            pos = _string_end(body, pos + 1) + 1
        elif byte in b"[{":
            opened.append(byte)
            if len(opened) > max_depth:
                raise APIError(400, f"request JSON is nested more than {max_depth} levels deep", "invalid_json")
            pos += 1
        elif literal := _LITERAL.match(body, pos, pos + 9):
            if literal.group() not in (b"true", b"false", b"null"):
                raise _not_json(literal.group().decode())
            pos = literal.end()
        elif number := _NUMBER.match(body, pos, pos + _MAX_NUMBER_CHARS + 1):
            if number.end() - pos > _MAX_NUMBER_CHARS:
                raise _invalid(f"a number of more than {_MAX_NUMBER_CHARS} characters at offset {pos}")
            pos = number.end()
        else:
            raise _invalid(f"unexpected byte {body[pos:pos + 1]!r} at offset {pos}: expected a JSON value (UTF-8)")


def _not_json(constant: str) -> APIError:
    return _invalid(f"{constant} is not JSON (JSON has no NaN or Infinity): send finite numbers, or null")


def _refuse_constant(constant: str) -> None:
    """json.loads' ``parse_constant``: Python's json accepts NaN and ±Infinity, which JSON has not."""
    raise _not_json(constant)


def parse_json_body(body: bytes, max_values: int, max_depth: int = 8) -> dict[str, Any]:
    """A request body → its JSON object, refusing (400) bodies of more than ``max_values`` values or
    nested deeper than ``max_depth`` before json builds anything.

    Our requests hold a few fields and at most ``max_items`` strings, so a body of a million tiny
    objects (which would expand about 25x in memory) or one nested a thousand deep (a RecursionError
    in json) is refused by a scan that stops at the first excess. The scan is linear in the body's length
    whatever its bytes, and refuses what is not JSON on sight (see ``_scan``), NaN and Infinity included,
    which json.loads would accept. CPU-bound: call it off the event loop.
    """
    _scan(body, max_values, max_depth)
    try:
        parsed = json.loads(body, parse_constant=_refuse_constant)
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

