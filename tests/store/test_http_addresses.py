"""The private-address guard of pipeline/store/http.py against IPv6 forms that embed an IPv4 address: NAT64,
IPv4-compatible, -mapped and -translated, 6to4 and Teredo. Both users of the module are checked (the embed job's
``fetch`` and the server's remote fetch), and no connection may be attempted for a refused address."""
from __future__ import annotations

import ipaddress
import socket

import pytest

from pipeline.store import http
from pipeline.store.errors import ReadError
from serving.config import RemoteSettings, ServeLimits
from serving.inputs import APIError, Item, fetch as serve_fetch

# each embeds a loopback, link-local (cloud metadata) or private IPv4 address
HIDDEN = [
    "64:ff9b::a9fe:a9fe",                    # NAT64 (well-known prefix) of 169.254.169.254
    "64:ff9b::7f00:1",                       # NAT64 of 127.0.0.1
    "64:ff9b:1::a9fe:a9fe",                  # local-use NAT64 prefix (RFC 8215)
    "::7f00:1",                              # IPv4-compatible 127.0.0.1
    "::a9fe:a9fe",                           # IPv4-compatible 169.254.169.254
    "::ffff:0:7f00:1",                       # IPv4-translated 127.0.0.1
    "::ffff:0:a00:1",                        # IPv4-translated 10.0.0.1
    "::ffff:127.0.0.1",                      # IPv4-mapped (refused before too)
    "2002:7f00:1::1",                        # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::",                      # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1 (inverted in the low 32 bits)
]
PUBLIC = ["2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"]


@pytest.fixture
def connections(monkeypatch):
    """Every connection attempt the fetch makes (none may happen for a refused host); each attempt fails."""
    attempts = []

    def record(address, *args, **kwargs):
        attempts.append(address)
        raise ConnectionRefusedError("test: no connection is made")

    monkeypatch.setattr(socket, "create_connection", record)
    return attempts


def _settings(host: str) -> dict:
    return {"allow_hosts": [f"[{host}]"], "retries": 0, "timeout_s": 2.0}


@pytest.mark.parametrize("address", HIDDEN)
def test_ipv6_forms_embedding_a_private_ipv4_address_are_refused_before_connecting(address, connections):
    assert not http.is_public_address(ipaddress.ip_address(address))
    with pytest.raises(ReadError, match=r"not a public address; such hosts are fetched only with "
                                        r"http.allow_private_addresses"):
        http.fetch(f"http://[{address}]/latest/meta-data/", _settings(address), 1000)
    remote = RemoteSettings(enabled=True, allow_hosts=[f"[{address}]"], timeout_s=2.0)
    with pytest.raises(APIError) as err:
        serve_fetch(Item(0, "image", None, remote_url=f"http://[{address}]/x.png"), remote, ServeLimits())
    assert err.value.code == "host_not_allowed" and "not a public address" in err.value.message, err.value.message
    assert connections == []


def test_a_host_name_resolving_to_such_a_form_is_refused(connections, monkeypatch):
    """The check is on what the name resolves to, not on how the URL spells the host."""
    def resolve(host, port, *args, **kwargs):
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("64:ff9b::a9fe:a9fe", port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(ReadError, match="metadata.example resolves to 64:ff9b::a9fe:a9fe, not a public address"):
        http.fetch("http://metadata.example/", {"retries": 0}, 1000)
    assert connections == []


@pytest.mark.parametrize("address", PUBLIC)
def test_public_ipv6_addresses_still_pass_and_are_connected_to(address, connections):
    assert http.is_public_address(ipaddress.ip_address(address))
    with pytest.raises(ReadError, match="ConnectionRefusedError"):  # past the check: the (recorded) connect fails
        http.fetch(f"http://[{address}]/x.png", _settings(address), 1000)
    assert [ipaddress.ip_address(a[0]) for a in connections] == [ipaddress.ip_address(address)]


def test_allow_private_addresses_lets_them_through(connections):
    address = "64:ff9b::a9fe:a9fe"
    with pytest.raises(ReadError, match="ConnectionRefusedError"):
        http.fetch(f"http://[{address}]/", {**_settings(address), "allow_private_addresses": True}, 1000)
    assert [a[0] for a in connections] == [address]
