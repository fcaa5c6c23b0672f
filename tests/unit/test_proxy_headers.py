"""The reverse proxy's header handling (gateway/views/proxy.py): the per-process
memos give the same answers as computing afresh, bounded however many distinct
names and values clients and upstreams send; the client's address, scheme and URL
hints are never forwarded; and X-Forwarded-Proto is read from the same entry (the
nearest trusted proxy's) for the login redirect as for the upstream."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from gateway.core.network import TrustedProxies, parse_networks
from gateway.services import Services
from gateway.views import proxy
from gateway.views.common import public_scheme


def test_header_names_are_spelt_as_before_and_the_memo_stays_bounded() -> None:
    proxy._inbound_name.cache_clear()
    assert proxy._inbound_name("HTTP_X_DOOR_ID") == ("x-door-id", "X-Door-Id")
    assert proxy._inbound_name("HTTP_X_DOOR_ID") == ("x-door-id", "X-Door-Id")
    assert proxy._inbound_name.cache_info().hits == 1
    for i in range(proxy._MEMO_LIMIT + 50):  # hostile: a new name on every request
        assert proxy._inbound_name(f"HTTP_X_JUNK_{i}") == (f"x-junk-{i}", f"X-Junk-{i}")
    assert proxy._inbound_name.cache_info().currsize == proxy._MEMO_LIMIT
    for i in range(proxy._MEMO_LIMIT + 50):  # names never forwarded are bounded too
        assert proxy._inbound_name(f"HTTP_X_FORWARDED_JUNK_{i}") is None
    assert proxy._inbound_name.cache_info().currsize == proxy._MEMO_LIMIT


def _key(name: str) -> str:
    """The WSGI environ key a server makes of a header name."""
    return "HTTP_" + name.upper().replace("-", "_")


@pytest.mark.parametrize("name", sorted(proxy.CLIENT_HINT_HEADERS))
def test_client_hint_headers_are_never_forwarded(name: str) -> None:
    assert proxy._inbound_name(_key(name)) is None
    assert proxy._inbound_name(_key(name.title())) is None


@pytest.mark.parametrize(
    "name",
    [
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Forwarded-Ssl",
        "X-Forwarded-Scheme",
        "X-Forwarded-Path",
        "X-Forwarded-Client-Cert",
        "X-Forwarded-Made-Up-Tomorrow",
        "X-Original-URI",
        "X-Original-Host",
        "X-Original-URL",
        "x_original_whatever",
    ],
)
def test_forwarded_and_original_prefixes_are_never_forwarded(name: str) -> None:
    assert proxy._inbound_name(_key(name)) is None
    # a server that kept the client's spelling in the key: the same answer
    assert proxy._inbound_name("HTTP_" + name) is None


@pytest.mark.parametrize(
    "name", ["Accept", "X-Door-Id", "X-Forwardedness", "X-Originality", "Origin", "Range"]
)
def test_ordinary_headers_pass(name: str) -> None:
    assert proxy._inbound_name(_key(name)) == (name.lower(), name.lower().title())


def test_connection_tokens_as_before_and_bounded() -> None:
    cache = proxy._remembered_tokens
    cache.cache_clear()
    assert proxy._connection_tokens(["keep-alive, X-Secret ", "Upgrade"]) == {
        "keep-alive",
        "x-secret",
        "upgrade",
    }
    assert proxy._connection_tokens([" , ,"]) == frozenset()
    assert proxy._connection_tokens([""]) == frozenset()
    long = ", ".join(f"x-{i}" for i in range(100))  # over 256 characters: never kept
    assert "x-99" in proxy._connection_tokens([long])
    assert cache.cache_info().currsize == 3
    for i in range(proxy._MEMO_LIMIT + 50):
        assert proxy._connection_tokens([f"x-{i}"]) == {f"x-{i}"}
    assert cache.cache_info().currsize == proxy._MEMO_LIMIT


def _services(trusted_hops: int) -> Services:
    """What public_scheme and ProxyApp._forwarded read of the services."""
    stub: Any = SimpleNamespace(
        trusted_proxies=TrustedProxies(parse_networks(["10.0.0.0/8"])),
        settings=SimpleNamespace(proxy=SimpleNamespace(trusted_hops=trusted_hops)),
    )
    return cast(Services, stub)


def _request(remote: str, forwarded_proto: str | None) -> Request:
    headers = [("X-Forwarded-For", "192.0.2.7")]
    if forwarded_proto is not None:
        headers.append(("X-Forwarded-Proto", forwarded_proto))
    builder = EnvironBuilder(
        path="/console/", headers=headers, environ_base={"REMOTE_ADDR": remote}
    )
    return Request(builder.get_environ())


@pytest.mark.parametrize(
    ("remote", "forwarded_proto", "scheme"),
    [
        ("10.1.2.3", "https", "https"),
        ("10.1.2.3", "HTTPS ", "https"),
        # a front proxy that appends: the client's own value first, the proxy's last
        ("10.1.2.3", "https, http", "http"),
        ("10.1.2.3", "http,https", "https"),
        ("10.1.2.3", "https, gopher", "http"),  # the nearest entry is no scheme: own
        ("10.1.2.3", "https, ", "http"),
        ("10.1.2.3", None, "http"),
        ("192.0.2.9", "https", "http"),  # not a trusted proxy: never believed
    ],
)
def test_public_scheme_is_the_nearest_trusted_proxys_entry(
    remote: str, forwarded_proto: str | None, scheme: str
) -> None:
    """public_scheme (login redirects, rd checks) and the reverse proxy's
    _forwarded (X-Forwarded-Proto upstream, Location rewriting, the policy's
    scheme) read the same entry: the last, which the trusted peer wrote."""
    req = _request(remote, forwarded_proto)
    assert public_scheme(_services(trusted_hops=1), req) == scheme
    app = proxy.ProxyApp.__new__(proxy.ProxyApp)
    app.svc = _services(trusted_hops=1)
    assert app._forwarded(req.environ, req).proto == scheme
