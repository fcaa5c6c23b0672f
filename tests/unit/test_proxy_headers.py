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


# -- what the browser receives ------------------------------------------------------


def _app(cookie_name: str = "sso_gw") -> proxy.ProxyApp:
    svc: Any = SimpleNamespace(settings=SimpleNamespace(cookie=SimpleNamespace(name=cookie_name)))
    return proxy.ProxyApp(None, cast(Any, None), cast(Services, svc), cast(Any, None),
                          cast(Any, None), websockets=False)  # fmt: skip


@pytest.mark.parametrize(
    "set_cookie",
    [
        # (the plain spellings, "sso_gw=x", "__Host-sso_gw_csrf=x; Path=/", were
        # dropped before; tests/integration/test_proxy.py covers them)
        # the prefixes in any case (RFC 6265bis compares them case-insensitively)
        "__HOST-sso_gw=x; Path=/; Secure",
        "__secure-sso_gw_csrf=x; Secure",
        # name-less cookies (6265bis 5.6: the pair ends at the first ';'; without
        # '=' the name is empty and all of it is the value; with '=' first, the
        # name is empty too): a browser sends one back as its bare value, so
        # "=sso_gw=X" arrives as "Cookie: sso_gw=X"
        "=sso_gw=X",
        "=sso_gw=X; Path=/admin",
        " =sso_gw=X",
        "sso_gw; Path=/",
        "sso_gw ;Path=/",
        "=__Host-sso_gw=X; Path=/; Secure",
        "=sso_gw_csrf=X",
        # every other name-less cookie too: nothing an upstream needs
        "=x",
        "x",
        "x; Path=/",
        "JSESSIONID; x=sso_gw",
        "=",
        "",
        "; sso_gw=x",
    ],
)
def test_an_upstream_never_sets_the_gateways_cookies_or_name_less_ones(set_cookie: str) -> None:
    assert _app()._sets_own_cookie(set_cookie)
    answer = _app()._answer_headers(
        [("Set-Cookie", set_cookie), ("Set-Cookie", "lang=en")],
        _plain_upstream(),
        "https://gw.example",
        personal=False,
        status=200,
    )
    assert answer == [("Set-Cookie", "lang=en")]


@pytest.mark.parametrize(
    "set_cookie",
    [
        "JSESSIONID=abc; Path=/",
        "JSESSIONID=sso_gw=x",  # a value that looks like ours: the name is the device's
        "x=sso_gw; Path=/",
        "lang=en; Path=/; sso_gw=x",  # an unknown attribute, not a cookie
        "sso_gwx=1",
        "my_sso_gw=1",
        "PHPSESSID=; Max-Age=0",  # an empty value, with a name
    ],
)
def test_the_upstreams_own_cookies_pass(set_cookie: str) -> None:
    assert not _app()._sets_own_cookie(set_cookie)


def _plain_upstream() -> Any:
    """What _answer_headers reads of an Upstream (no bridge, locations as sent)."""
    return SimpleNamespace(credentials=None, public_location=lambda value, origin: value)


LAST_MODIFIED = ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        (["public, max-age=3600"], "max-age=3600, private"),
        ([], "private"),  # heuristic freshness (Last-Modified): private for shared caches
        (["public"], "private"),
        ([""], "private"),
        (["max-age=60"], "max-age=60, private"),
        (["Private, max-age=5"], "max-age=5, private"),
        (["no-store"], "no-store, private"),
        (["no-cache, no-store, must-revalidate"], "no-cache, no-store, must-revalidate, private"),
        (["S-MaxAge=600, Public, Proxy-Revalidate, max-age=5"], "max-age=5, private"),
        (["s-maxage = 600, max-age=5"], "max-age=5, private"),
        # private with field names keeps the rest shareable: replaced by the whole
        (['private="Set-Cookie", max-age=60'], "max-age=60, private"),
        # a quoted ',' does not end a directive
        (['no-cache="Set-Cookie, X-Door", public'], 'no-cache="Set-Cookie, X-Door", private'),
        (
            ["max-age=31536000, immutable, stale-while-revalidate=30, stale-if-error=60"],
            "max-age=31536000, immutable, stale-while-revalidate=30, stale-if-error=60, private",
        ),
        # several fields are one list (RFC 9110 5.3): one field goes out
        (["public", "max-age=10", "s-maxage=20"], "max-age=10, private"),
    ],
)
def test_a_persons_answer_is_private_for_shared_caches(sent: list[str], received: str) -> None:
    headers = [("Content-Type", "text/html"), LAST_MODIFIED]
    headers += [("Cache-Control", value) for value in sent]
    answer = _app()._answer_headers(
        headers, _plain_upstream(), "https://gw.example", personal=True, status=200
    )
    assert answer == [("Content-Type", "text/html"), LAST_MODIFIED, ("Cache-Control", received)]


def test_shared_cache_only_headers_are_dropped_from_a_persons_answer() -> None:
    """Headers by which a CDN or reverse proxy in front of the gateway would
    cache an answer whatever its Cache-Control says."""
    targeted = [
        ("CDN-Cache-Control", "max-age=600"),  # RFC 9213
        ("Cloudflare-CDN-Cache-Control", "max-age=600"),
        ("Surrogate-Control", "max-age=600"),  # Fastly, Varnish, Akamai
        ("Edge-Control", "cache-maxage=600"),  # Akamai
        ("X-Accel-Expires", "600"),  # nginx's proxy_cache
    ]
    headers = [("Content-Type", "image/jpeg"), *targeted, ("cache-control", "max-age=5")]
    answer = _app()._answer_headers(
        headers, _plain_upstream(), "https://gw.example", personal=True, status=200
    )
    assert answer == [("Content-Type", "image/jpeg"), ("Cache-Control", "max-age=5, private")]
    # on a public route every one of them is the device's business
    answer = _app()._answer_headers(
        headers, _plain_upstream(), "https://gw.example", personal=False, status=200
    )
    assert answer == headers


def test_public_answers_are_left_as_the_device_sent_them() -> None:
    headers = [("Cache-Control", "public, s-maxage=600"), LAST_MODIFIED]
    answer = _app()._answer_headers(
        headers, _plain_upstream(), "https://gw.example", personal=False, status=200
    )
    assert answer == headers
    answer = _app()._answer_headers(
        [LAST_MODIFIED], _plain_upstream(), "https://gw.example", personal=False, status=200
    )
    assert answer == [LAST_MODIFIED]


def test_a_304_without_cache_control_keeps_the_stored_answers() -> None:
    """A 304 updates the browser's stored answer with the headers it carries
    (RFC 9111 4.3.4): a 'private' added to one without Cache-Control would
    replace the stored 'max-age=3600, private' and end the browser's caching.
    The stored answer went out private already; a 304 alone is stored by no
    cache."""
    answer = _app()._answer_headers(
        [("ETag", '"v1"')], _plain_upstream(), "https://gw.example", personal=True, status=304
    )
    assert answer == [("ETag", '"v1"')]
    answer = _app()._answer_headers(
        [("ETag", '"v1"'), ("Cache-Control", "public, max-age=3600")],
        _plain_upstream(),
        "https://gw.example",
        personal=True,
        status=304,
    )
    assert answer == [("ETag", '"v1"'), ("Cache-Control", "max-age=3600, private")]


def test_cache_control_memo_stays_bounded() -> None:
    cache = proxy._remembered_directives
    cache.cache_clear()
    for i in range(proxy._MEMO_LIMIT + 50):  # hostile: a new value on every answer
        assert proxy._shareable_removed(f"public, max-age={i}") == (f"max-age={i}",)
    assert cache.cache_info().currsize == proxy._MEMO_LIMIT
    long = "max-age=1, " + ", ".join(f"x-{i}" for i in range(100))  # never kept
    assert proxy._shareable_removed(long)[0] == "max-age=1"
    assert cache.cache_info().currsize == proxy._MEMO_LIMIT


@pytest.mark.parametrize("personal", [True, False])
@pytest.mark.parametrize(
    "name",
    [
        "X-Accel-Redirect",  # nginx would follow it to an internal location of its own
        "x-accel-redirect",
        "X-Accel-Buffering",
        "X-Accel-Limit-Rate",
        "X-Sendfile",  # Apache mod_xsendfile, lighttpd
        "X-LIGHTTPD-send-file",
    ],
)
def test_an_upstream_never_gives_orders_to_a_web_server_in_front(name: str, personal: bool) -> None:
    """A compromised device answering X-Accel-Redirect: /.sso/auth (or any
    internal location) would have nginx in front serve that instead."""
    answer = _app()._answer_headers(
        [("Content-Type", "text/plain"), (name, "/internal/secret")],
        _plain_upstream(),
        "https://gw.example",
        personal=personal,
        status=200,
    )
    assert [n for n, _ in answer if n.lower() not in ("content-type", "cache-control")] == []


def test_a_zero_content_length_is_no_body() -> None:
    """A GET that says Content-Length: 0 carries no body: nothing for a device
    to misread, so its upstream connection may be pooled (a body on a GET ends
    its connection; see upstream_client)."""
    import io

    from gateway.views.proxy import _request_body

    body, length = _request_body({"wsgi.input": io.BytesIO(b""), "CONTENT_LENGTH": "0"})
    assert (body, length) == (None, 0)
    body, length = _request_body({"wsgi.input": io.BytesIO(b"abc"), "CONTENT_LENGTH": "3"})
    assert length == 3 and body is not None and b"".join(body) == b"abc"
