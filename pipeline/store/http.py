"""Fetching media by http(s) URL, guarded: for the server's remote inputs and the embed job's URL manifests.

A URL is anyone's (a request's, a web-scraped corpus's), so every fetch is checked as an attacker would
probe it:
- only http and https with a host; the host and port must pass the caller's allow-list;
- the host is resolved here and refused when it resolves to a loopback, private, link-local (cloud
  metadata), multicast or reserved address, or to an IPv6 form that embeds one (NAT64, IPv4-mapped,
  -compatible or -translated, 6to4, Teredo: ``is_public_address``), unless private addresses are allowed;
  the connection then goes to the checked address (no second lookup an attacker's DNS could answer
  differently), HTTPS verifying the certificate for the host name;
- one deadline bounds connect, headers and body together (a server dribbling bytes is cut off);
- the body is read up to ``max_bytes`` (a larger Content-Length is refused unread) and never
  decompressed (``Accept-Encoding: identity``); redirects are never followed here (``get`` returns
  them; the embed job's ``fetch`` follows a few, checking each target the same way).
Every failure is a ``FetchError``: a ``ReadError`` with an API error code and whether a retry may help.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any, Callable, NamedTuple

from pipeline.store.errors import ReadError

REDIRECTS = (301, 302, 303, 307, 308)
RETRIED = (408, 429)  # and every 5xx


class FetchError(ReadError):
    """A fetch that failed: the reason, an API error code (invalid_url, host_not_allowed, fetch_failed,
    item_too_large) and whether it is worth retrying (connection errors, timeouts)."""

    def __init__(self, reason: str, code: str, transient: bool = False):
        super().__init__(reason)
        self.code, self.transient = code, transient


class Response(NamedTuple):
    status: int
    reason: str
    location: str | None
    body: bytes  # read only for a 200


def host_allowed(allow_hosts: list[str], host: str, port: int, default_port: int) -> bool:
    """Whether ``host`` (lower case, IPv6 without brackets) on ``port`` is on ``allow_hosts`` (``host`` for the
    scheme's ``default_port``, or ``host:port``, exact match)."""
    name = f"[{host}]" if ":" in host else host
    return f"{name}:{port}" in allow_hosts or (port == default_port and name in allow_hosts)


def get(url: str, max_bytes: int, timeout_s: float, allows: Callable[[str, int, int], bool], allow_private: bool,
        setting: str) -> Response:
    """One guarded GET of ``url`` (see the module's rules). ``allows(host, port, default_port)`` is the allow-list;
    ``setting`` prefixes the names of the settings messages point to (``remote``, ``http``). Raises FetchError."""
    parts, host, port = _target(url, allows)
    address = _checked_address(host, port, allow_private, setting)
    conn = (_PinnedHTTPSConnection(host, address, port, timeout_s) if parts.scheme == "https"
            else http.client.HTTPConnection(address, port, timeout=timeout_s))
    deadline = time.monotonic() + timeout_s
    try:
        return _download(conn, parts, deadline, max_bytes)
    except FetchError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:
        if time.monotonic() >= deadline - 0.05:
            raise FetchError(f"took longer than {setting}.timeout_s={timeout_s:g} s", "fetch_failed", True) from None
        raise FetchError(f"{type(e).__name__}: {e}", "fetch_failed", True) from None


def fetch(url: str, settings: dict[str, Any], max_bytes: int) -> bytes:
    """The embed job's fetch: ``get`` under ``settings`` (``HttpConfig`` as a dict), following up to
    ``max_redirects`` redirects (each target checked) and retrying transient failures (connection errors,
    timeouts, 408, 429, 5xx) ``retries`` times with doubling back-off. Raises ReadError naming the URL."""
    hosts = [h.lower() for h in settings.get("allow_hosts") or []]
    allows = (lambda host, port, default: host_allowed(hosts, host, port, default)) if hosts else (lambda *_: True)
    attempts, last = int(settings.get("retries", 3)) + 1, ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(float(settings.get("backoff_s", 0.5)) * 2 ** (attempt - 1))
        try:
            return _follow(url, settings, max_bytes, allows)
        except FetchError as e:
            if not e.transient:
                raise ReadError(f"cannot fetch {url}: {e}") from None
            last = str(e)
    raise ReadError(f"cannot fetch {url}: {last} (after {attempts} attempts)")


def _follow(url: str, settings: dict[str, Any], max_bytes: int, allows: Callable[[str, int, int], bool]) -> bytes:
    current, most = url, int(settings.get("max_redirects", 5))
    for _ in range(most + 1):
        r = get(current, max_bytes, float(settings.get("timeout_s", 60.0)), allows,
                bool(settings.get("allow_private_addresses", False)), "http")
        if r.status in REDIRECTS and r.location:
            current = urllib.parse.urljoin(current, r.location)
            continue
        if r.status in RETRIED or r.status >= 500:
            raise FetchError(f"HTTP {r.status}", "fetch_failed", True)
        if r.status != 200:
            raise FetchError(f"HTTP {r.status} {r.reason}".rstrip(), "fetch_failed")
        if not r.body:
            raise FetchError("empty response (0 bytes)", "fetch_failed")
        return r.body
    raise FetchError(f"more than http.max_redirects={most} redirects", "fetch_failed")


def _target(url: str, allows: Callable[[str, int, int], bool]) -> tuple[urllib.parse.SplitResult, str, int]:
    """(parsed URL, host, port) of an http(s) URL whose host and port ``allows``."""
    try:
        parts = urllib.parse.urlsplit(url)
        default_port = 443 if parts.scheme == "https" else 80
        port = parts.port or default_port
    except ValueError as e:
        raise FetchError(f"malformed URL ({e})", "invalid_url") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise FetchError("expected an http(s) URL with a host name", "invalid_url")
    if not allows(host, port, default_port):
        raise FetchError(f"{host}:{port} is not on the allow-list", "host_not_allowed")
    return parts, host, port


def _checked_address(host: str, port: int, allow_private: bool, setting: str) -> str:
    """The first address ``host`` resolves to that may be fetched: public, unless private ones are allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        busy = isinstance(e, socket.gaierror) and e.errno == socket.EAI_AGAIN  # the resolver, not the name
        raise FetchError(f"cannot resolve {host} ({e})", "fetch_failed", busy) from None
    refused = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if allow_private or is_public_address(ip):
            return str(ip)
        refused.append(str(ip))
    raise FetchError(f"{host} resolves to {', '.join(refused)}, not a public address; such hosts are fetched "
                     f"only with {setting}.allow_private_addresses", "host_not_allowed")


_LOW32 = 0xFFFF_FFFF
# IPv6 forms that carry an IPv4 address: (prefix, the IPv4 address as an int from the IPv6 one as an int, whether
# the IPv6 address must be global too). A carrier (mapped, translated, compatible, NAT64) leads to its IPv4
# address, so that decides; a tunnel (6to4, Teredo) has two ends, so both must be public.
_V4_IN_V6 = (
    (ipaddress.ip_network("::ffff:0:0/96"), lambda n: n & _LOW32, False),     # IPv4-mapped (RFC 4291)
    (ipaddress.ip_network("::ffff:0:0:0/96"), lambda n: n & _LOW32, False),   # IPv4-translated (RFC 2765)
    (ipaddress.ip_network("64:ff9b::/96"), lambda n: n & _LOW32, False),      # NAT64, well-known prefix (RFC 6052)
    (ipaddress.ip_network("::/96"), lambda n: n & _LOW32, False),             # IPv4-compatible (RFC 4291, deprecated)
    (ipaddress.ip_network("2002::/16"), lambda n: (n >> 80) & _LOW32, True),  # 6to4 (RFC 3056): bits 16-47
    (ipaddress.ip_network("2001::/32"), lambda n: ~n & _LOW32, True),         # Teredo (RFC 4380): client, inverted
)
# NAT64 local-use prefix (RFC 8215): where the IPv4 address sits is the operator's choice (/48 to /96), and the
# block is for one network's own use, so no address in it is public
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a fetch may go to ``ip`` without ``allow_private_addresses``: a global unicast address and, for an
    IPv6 form that embeds an IPv4 address (mapped, translated, compatible, NAT64, 6to4, Teredo), an embedded
    IPv4 address that is global unicast too; nothing in 64:ff9b:1::/48 (local-use NAT64)."""
    if ip.version == 6:
        if ip in _LOCAL_NAT64:
            return False
        for network, inner, tunnel in _V4_IN_V6:
            if ip in network:
                return _global(ipaddress.IPv4Address(inner(int(ip)))) and (not tunnel or _global(ip))
    return _global(ip)


def _global(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast


def _download(conn: http.client.HTTPConnection, parts: urllib.parse.SplitResult, deadline: float,
              max_bytes: int) -> Response:
    """GET the URL over ``conn``; for a 200, its body (at most ``max_bytes``), all before ``deadline`` (a server
    that dribbles bytes is cut off there); raises OSError / HTTPException, FetchError for a body too large."""
    timer = None
    try:
        conn.connect()
        sock = conn.sock  # the response may outlive conn.sock; the deadline closes this one
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), _abort, (sock,))
        timer.start()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers={"Host": parts.netloc.rpartition("@")[2], "User-Agent": "oneencoder",
                                           "Accept-Encoding": "identity"})
        response = conn.getresponse()
        if response.status != 200:
            return Response(response.status, response.reason or "", response.getheader("Location"), b"")
        if response.length is not None and response.length > max_bytes:
            raise FetchError(f"{response.length} bytes, over the limit of {max_bytes} bytes per item "
                             "(limits.max_file_bytes)", "item_too_large")
        data = bytearray()
        while len(data) <= max_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline")
            sock.settimeout(left)
            chunk = response.read1(1 << 16)
            if not chunk:
                if response.length:  # the body ended before its Content-Length
                    raise http.client.IncompleteRead(bytes(data), response.length)
                break
            data += chunk
        if len(data) > max_bytes:
            raise FetchError(f"more than the limit of {max_bytes} bytes per item (limits.max_file_bytes)",
                             "item_too_large")
        return Response(200, response.reason or "", None, bytes(data))
    finally:
        if timer is not None:
            timer.cancel()
        conn.close()


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address, with the certificate verified for the host name."""

    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _abort(sock: socket.socket) -> None:
    """Cut a fetch off at its deadline: blocked reads return at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
