"""Reverse-proxy mode end to end: the real gateway under gunicorn (one gevent
worker) in front of a real upstream server (tests/integration/proxy_upstream.py).

Covers: login redirect vs 401 JSON, 403 page naming the tier, identity headers
and the signed assertion, every spelling of a spoofed identity header, the
path-normalisation corpus judged on exactly what the upstream receives, 404 for
unknown hosts, prefix stripping and Location rewriting (never into another host),
hop-by-hop and forwarding headers, the gateway's cookies kept from the upstream
(both ways, name-less Set-Cookies too), a person's answers private for shared
caches, TRACE/TRACK refused before any device sees them,
streaming (chunked, MJPEG, Server-Sent Events) without buffering, hundreds of MB up and down with a
flat worker RSS, 502/504 pages with audit lines, the action audit, and logout
expiring the upstream's cookies.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway.assertion import verify
from gateway.views.proxy import REPLAY_LIMIT
from tests.integration.conftest import (
    ALICE,
    JWT_AUDIENCE,
    JWT_ISSUER,
    GatewayProcess,
    SeenRequest,
    form_fields,
    http_client,
    start_gateway,
    submit_login,
)
from tests.integration.pki import make_pki
from tests.integration.proxy_upstream import DeviceLogin, ProxyUpstream
from tests.peers import free_port

IDENTITY = {
    "X-Auth-Request-User": "alice",
    "X-Auth-Request-Email": "alice@example.test",
    "X-Auth-Request-Groups": "Intercom-Operators,UC-Users",
    "X-Auth-Request-Tier": "operator",
    "X-Auth-Request-Extension": "4711",
    "X-Auth-Request-Department": "Security",
}

# every spelling a client might try: any case, '_' for '-'
SPOOFED: tuple[tuple[str, str], ...] = (
    ("X-Auth-Request-User", "admin"),
    ("X-AUTH-REQUEST-USER", "admin"),
    ("x-auth-request-user", "admin"),
    ("X_Auth_Request_User", "admin"),
    ("x_auth-request_user", "admin"),
    ("x-auth-request-tier", "admin"),
    ("X_AUTH_REQUEST_TIER", "admin"),
    ("X-Auth-Request-Groups", "Intercom-Admins"),
    ("X-Auth-Request-Email", "admin@example.test"),
    ("X-Auth-Request-Jwt", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."),
    ("x_auth_request_jwt", "forged"),
    ("X-Auth-Request-Extension", "0000"),
    ("x_auth_request_department", "IT"),
)

# address, scheme, host and URL hints a client might send to mislead the upstream, in
# the spellings it might try (any case, '_' for '-'): none may arrive (the gateway
# writes X-Forwarded-For/-Proto/-Host itself)
CLIENT_HINTS: tuple[tuple[str, str], ...] = (
    ("X-Client-IP", "10.20.30.5"),
    ("x-client-ip", "10.20.30.5"),
    ("X_CLIENT_IP", "10.20.30.5"),
    ("Client-IP", "10.20.30.5"),
    ("True-Client-IP", "10.20.30.5"),
    ("true_client_ip", "10.20.30.5"),
    ("X-Real-IP", "10.20.30.5"),
    ("X-REAL-IP", "10.20.30.5"),
    ("X-Cluster-Client-IP", "10.20.30.5"),
    ("X-ProxyUser-Ip", "10.20.30.5"),
    ("Proxy-Client-IP", "10.20.30.5"),
    ("WL-Proxy-Client-IP", "10.20.30.5"),
    ("CF-Connecting-IP", "10.20.30.5"),
    ("Fastly-Client-IP", "10.20.30.5"),
    ("X-Remote-IP", "10.20.30.5"),
    ("X-Remote-Addr", "10.20.30.5"),
    ("X-Originating-IP", "10.20.30.5"),
    ("Forwarded", "for=10.20.30.5;proto=https;host=admin.example"),
    ("Forwarded-For", "10.20.30.5"),
    ("X-Forwarded", "for=10.20.30.5"),
    ("X-Original-URI", "/admin/"),
    ("x-original-uri", "/admin/"),
    ("X_Original_URI", "/admin/"),
    ("X-Original-URL", "https://admin.example/admin/"),
    ("X-Original-Host", "admin.example"),
    ("X-Original-Method", "DELETE"),
    ("X-Forwarded-Path", "/admin/"),
    ("X-Forwarded-Uri", "/admin/"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Server", "admin.example"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Scheme", "https"),
    ("x_forwarded_scheme", "https"),
    ("X-Forwarded-Ssl", "on"),
    ("X-FORWARDED-SSL", "on"),
    ("X-Forwarded-Protocol", "https"),
    ("X-Forwarded-Client-Cert", "Hash=0;Subject=CN=admin"),
    ("X-Forwarded-Anything", "a name made up after this list was written"),
    ("X-Host", "admin.example"),
    ("X-HTTP-Host-Override", "admin.example"),
    ("Front-End-Https", "on"),
    ("front_end_https", "on"),
    ("X-Url-Scheme", "https"),
    ("X-Scheme", "https"),
    ("X-ARR-SSL", "on"),
    ("X-Rewrite-URL", "/admin/"),
    # a client certificate the client vouches for itself
    ("X-SSL-Client-Cert", "-----BEGIN CERTIFICATE-----"),
    ("SSL-Client-Cert", "-----BEGIN CERTIFICATE-----"),
    ("X-SSL-Client-Verify", "SUCCESS"),
    ("X-SSL-Client-S-DN", "CN=admin"),
    ("X-Client-Cert", "-----BEGIN CERTIFICATE-----"),
    ("X-Client-Verify", "SUCCESS"),
    ("X-ARR-ClientCert", "MIIB"),
)
# the client's own versions of the three the gateway writes, spelt oddly too
CLIENT_FORWARDING: tuple[tuple[str, str], ...] = (
    ("x-forwarded-for", "10.20.30.5"),
    ("X_FORWARDED_FOR", "10.20.30.6"),
    ("X-FORWARDED-PROTO", "https"),
    ("x_forwarded_proto", "https"),
    ("x-forwarded-host", "admin.example"),
    ("X_Forwarded_Host", "admin.example"),
)

MB = 1024 * 1024

# what an old door panel's embedded web server answers: bare-LF line ends and a
# folded header value, closing after each answer
OLD_FIRMWARE_ANSWER = (
    b"HTTP/1.0 200 OK\nServer: door-panel/2.1\nX-Door-State: locked,\n  armed\n"
    b"Content-Type: text/html\nContent-Length: 17\n\n<p>door panel</p>"
)


class OldFirmwareDevice:
    """A device that answers every request with OLD_FIRMWARE_ANSWER and records
    the request heads it got."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.heads: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with sock:
                sock.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
                        data += chunk
                    self.heads.append(data.partition(b"\r\n\r\n")[0])
                    sock.sendall(OLD_FIRMWARE_ANSWER)
                except OSError:
                    pass

    def stop(self) -> None:
        self.listener.close()


@dataclass
class Stack:
    gateway: GatewayProcess
    upstream: ProxyUpstream
    client: requests.Session  # signed in as alice (operator)
    basic: ProxyUpstream  # devices with one local admin account
    digest: ProxyUpstream
    old_firmware: OldFirmwareDevice

    def url(self, path: str) -> str:
        return self.gateway.url + path


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    upstream = ProxyUpstream()
    upstream.start()
    request.addfinalizer(upstream.stop)
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki.server_cert, pki.server_key)
    tls.verify_mode = ssl.CERT_REQUIRED  # a device that wants the gateway's certificate
    tls.load_verify_locations(pki.ca)
    device = ProxyUpstream(tls)
    device.start()
    request.addfinalizer(device.stop)
    client_tls = {"client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
    secret = tmp_path_factory.mktemp("secrets") / "door-admin-password"
    secret.write_text("Door-Admin-Pw-17\n", encoding="utf-8")
    basic = ProxyUpstream(login=DeviceLogin("basic", "admin", "Door-Admin-Pw-17"))
    digest = ProxyUpstream(login=DeviceLogin("digest", "admin", "Door-Admin-Pw-17"))
    for device_server in (basic, digest):
        device_server.start()
        request.addfinalizer(device_server.stop)
    bridged = {"username": "admin", "password": {"file": str(secret)}}
    old_firmware = OldFirmwareDevice()
    request.addfinalizer(old_firmware.stop)
    dead_port = free_port()  # nobody listens here
    hosts = ["127.0.0.1", "localhost"]
    settings: dict[str, Any] = {
        "proxy": {
            "upstreams": [
                {
                    "name": "intercom",
                    "match": {"hosts": hosts},
                    "url": upstream.url,
                    "read_timeout": 1.0,
                    "logout_cookies": ["JSESSIONID"],
                },
                {
                    "name": "pbx",
                    "match": {"hosts": hosts, "path_prefix": "/pbx", "strip_prefix": True},
                    "url": upstream.url + "/base",
                    "logout_cookies": ["PBXSESSION"],
                },
                {
                    "name": "pbx-keep",  # a base path, the prefix not stripped
                    "match": {"hosts": hosts, "path_prefix": "/pbxkeep"},
                    "url": upstream.url + "/base",
                },
                {
                    "name": "records",
                    "match": {"hosts": hosts, "path_prefix": "/records"},
                    "url": device.url,
                    "ca_bundle": str(pki.ca),
                    **client_tls,
                },
                {
                    "name": "records-without-cert",
                    "match": {"hosts": hosts, "path_prefix": "/records-nocert"},
                    "url": device.url,
                    "ca_bundle": str(pki.ca),
                },
                {
                    "name": "records-other-ca",
                    "match": {"hosts": hosts, "path_prefix": "/records-otherca"},
                    "url": device.url,
                    "ca_bundle": str(pki.other_ca),
                    **client_tls,
                },
                {
                    "name": "door-basic",
                    "match": {"hosts": hosts, "path_prefix": "/doorbasic"},
                    "url": basic.url,
                    "device_login": {"scheme": "basic", **bridged},
                },
                {
                    "name": "door-digest",
                    "match": {"hosts": hosts, "path_prefix": "/doordigest"},
                    "url": digest.url,
                    "device_login": {"scheme": "digest", **bridged},
                },
                {
                    "name": "door-digest-ws",  # its own bridge: no challenge known yet
                    "match": {"hosts": hosts, "path_prefix": "/doorws"},
                    "url": digest.url,
                    "device_login": {"scheme": "digest", **bridged},
                },
                {
                    "name": "door-digest-upload",  # its own bridge: no challenge known yet
                    "match": {"hosts": hosts, "path_prefix": "/doorupload"},
                    "url": digest.url,
                    "device_login": {"scheme": "digest", **bridged},
                },
                {
                    "name": "door-digest-public",  # the lobby page of the same device
                    "match": {"hosts": hosts, "path_prefix": "/public/door"},
                    "url": digest.url,
                    "device_login": {"scheme": "digest", **bridged},
                },
                {
                    "name": "door-wrong-password",
                    "match": {"hosts": hosts, "path_prefix": "/doorwrong"},
                    "url": digest.url,
                    "device_login": {
                        "scheme": "digest",
                        "username": "admin",
                        "password": "not-the-password",
                    },
                },
                {
                    "name": "panel-strict",
                    "match": {"hosts": hosts, "path_prefix": "/panel-strict"},
                    "url": old_firmware.url,
                },
                {
                    "name": "panel",
                    "match": {"hosts": hosts, "path_prefix": "/panel"},
                    "url": old_firmware.url,
                    "legacy_http": True,
                },
                {
                    "name": "door-log",
                    "match": {"hosts": hosts, "path_prefix": "/doorlog"},
                    "url": f"http://127.0.0.1:{dead_port}",
                    "connect_timeout": 1.0,
                },
            ]
        }
    }
    gateway = start_gateway(request, tmp_path_factory.mktemp("proxy"), settings=settings, workers=1)
    client = http_client()
    request.addfinalizer(client.close)  # before the gateway stops: no idle keep-alive left
    answer = submit_login(client, gateway.url, ALICE)
    assert answer.status_code == 303, answer.text
    return Stack(gateway, upstream, client, basic, digest, old_firmware)


@pytest.fixture
def proxied(stack: Stack) -> Stack:
    stack.upstream.reset()
    return stack


def _cookie(client: requests.Session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies)


def _seen(resp: requests.Response) -> SeenRequest:
    assert resp.status_code == 200, resp.text[:500]
    return SeenRequest.from_json(resp.json())


# -- who gets what ------------------------------------------------------------------


def test_browser_without_session_is_sent_to_login(proxied: Stack) -> None:
    anon = http_client()
    resp = anon.get(proxied.url("/console/?camera=2"), allow_redirects=False, timeout=10)
    assert resp.status_code == 302
    assert resp.headers["Location"] == (
        "/.sso/start?rd=http%3A%2F%2F127.0.0.1%3A"
        + str(proxied.gateway.port)
        + "%2Fconsole%2F%3Fcamera%3D2"
    )
    assert proxied.upstream.seen == []


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", {"Accept": "application/json"}),
        ("GET", {"X-Requested-With": "XMLHttpRequest"}),
        ("GET", {"Connection": "Upgrade", "Upgrade": "websocket"}),
        ("POST", {}),
    ],
)
def test_api_callers_without_session_get_401_json(
    proxied: Stack, method: str, headers: dict[str, str]
) -> None:
    resp = http_client().request(
        method, proxied.url("/api/doors"), headers=headers, allow_redirects=False, timeout=10
    )
    assert resp.status_code == 401
    assert resp.json() == {"error": "login_required"}
    assert proxied.upstream.seen == []


def test_denied_gets_403_page_naming_the_tier(proxied: Stack) -> None:
    resp = proxied.client.get(proxied.url("/admin/users"), allow_redirects=False, timeout=10)
    assert resp.status_code == 403
    assert "text/html" in resp.headers["Content-Type"]
    assert "admin" in resp.text and "Location" not in resp.headers
    api = proxied.client.get(
        proxied.url("/admin/users"), headers={"Accept": "application/json"}, timeout=10
    )
    assert api.status_code == 403
    assert api.json() == {"error": "forbidden", "required_tiers": ["admin"]}
    assert proxied.upstream.seen == []
    denied = proxied.gateway.audit_events("denied")
    assert denied[-1]["user"] == "alice" and denied[-1]["path"] == "/admin/users"


def test_unknown_host_is_404_never_a_default_upstream(proxied: Stack) -> None:
    for host in ("other.test", "evil.example", "127.0.0.2"):
        resp = proxied.client.get(proxied.url("/console/"), headers={"Host": host}, timeout=10)
        assert resp.status_code == 404, host
    assert proxied.upstream.seen == []


# -- identity -------------------------------------------------------------------


def test_identity_headers_and_assertion_reach_the_upstream(proxied: Stack) -> None:
    seen = _seen(proxied.client.get(proxied.url("/console/live?camera=3&x=%2F"), timeout=10))
    assert seen.path == "/console/live?camera=3&x=%2F"
    for name, value in IDENTITY.items():
        assert seen.get(name) == value, name
    token = seen.get("X-Auth-Request-Jwt")
    assert token
    jwks = proxied.client.get(proxied.url("/.sso/jwks.json"), timeout=10).json()
    claims = verify(token, jwks, audience=JWT_AUDIENCE, issuer=JWT_ISSUER)
    assert claims["sub"] == "alice" and claims["tier"] == "operator"


def test_spoofed_identity_headers_never_arrive_in_any_spelling(proxied: Stack) -> None:
    # raw socket: requests would merge names that differ in case only
    lines = "".join(f"{name}: {value}\r\n" for name, value in SPOOFED)
    cookie = "; ".join(f"{c.name}={c.value}" for c in proxied.client.cookies)
    raw = (
        f"GET /console/ HTTP/1.1\r\nHost: 127.0.0.1:{proxied.gateway.port}\r\n"
        f"Cookie: {cookie}\r\n{lines}Connection: close\r\n\r\n"
    )
    answer = _raw_request(proxied.gateway.port, raw.encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    [seen] = proxied.upstream.seen
    for name, value in IDENTITY.items():
        assert seen.get_all(name) == [value], name
    assert seen.get("X-Auth-Request-Jwt") not in ("forged", SPOOFED[9][1])
    # anonymous, on a public route: none arrive at all
    proxied.upstream.reset()
    raw = f"GET /public/lobby HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}Connection: close\r\n\r\n"
    assert _raw_request(proxied.gateway.port, raw.encode()).startswith(b"HTTP/1.1 200")
    [seen] = proxied.upstream.seen
    for name, _ in SPOOFED:
        assert seen.get_all(name) == [], name


def test_trailer_fields_never_reach_the_upstream_or_the_decision(proxied: Stack) -> None:
    """A chunked request's trailer section is no header section: a front proxy
    controls the head, not what a client puts after the body."""
    cookie = _cookie(proxied.client)
    raw = (
        f"POST /console/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        "2\r\nhi\r\n0\r\nX-Forwarded-For: 10.20.30.5\r\nX-Trailer-Test: yes\r\n"
        "X-Auth-Request-Tier: admin\r\nHost: evil.example\r\n\r\n"
    )
    assert _raw_request(proxied.gateway.port, raw.encode()).startswith(b"HTTP/1.1 200")
    [seen] = proxied.upstream.seen
    assert proxied.upstream.uploads == [("/console/upload", 2)]
    assert seen.get_all("X-Trailer-Test") == []
    assert seen.get_all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.get_all("X-Auth-Request-Tier") == ["operator"]
    assert seen.get("Host") == f"127.0.0.1:{proxied.upstream.port}"
    actions = proxied.gateway.audit_events("proxy_action")
    assert actions[-1]["path"] == "/console/upload"
    assert actions[-1]["client_ip"] == "127.0.0.1"


def test_a_chunked_upload_cut_short_never_reaches_the_upstream_whole(proxied: Stack) -> None:
    """The client stops half way through a chunked upload: the upstream must not
    get a well-formed (shorter) request; the browser gets no success."""
    cookie = _cookie(proxied.client)
    with socket.create_connection(("127.0.0.1", proxied.gateway.port), timeout=10) as sock:
        sock.sendall(
            (
                f"POST /console/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\n wor"
            ).encode()
        )
        sock.shutdown(socket.SHUT_WR)  # the upload stops half way
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 502"), reply[:100]
    assert proxied.upstream.uploads == []


def _raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# -- paths ----------------------------------------------------------------------

# raw request paths an operator might use to reach /admin/: each must be judged as
# /admin/ (403) or refused as ambiguous (400); none may reach the upstream
ADMIN_SPELLINGS = {
    "/admin/": 403,
    "/%61dmin/": 403,
    "//admin/": 403,
    "/public/../admin/": 403,
    "/public/%2e%2e/admin/": 403,
    "/./admin/": 403,
    "/ADMIN/": 403,
    "/Admin/users": 403,
    "/admin;jsessionid=1/": 400,
    "/admin/..;/admin/": 400,
    "/public%2F..%2Fadmin/": 400,
    "/public%5C..%5Cadmin/": 400,
    "/public/..%5cadmin/": 400,
    "/%2561dmin/": 400,
    "/admin%00/": 400,
    "/admin./": 400,
    "/%C0%AFadmin/": 400,
    "/../admin/": 400,
    "//.sso/login": 400,
    # an encoded ? or #: a server that decodes before splitting would see /admin
    "/admin%3F": 400,
    "/admin%23x": 400,
    # fullwidth a: a server that applies NFKC would read /admin/
    "/%EF%BD%81dmin/": 400,
}


def test_path_corpus_is_judged_on_what_the_upstream_would_receive(proxied: Stack) -> None:
    cookie = "; ".join(f"{c.name}={c.value}" for c in proxied.client.cookies)
    for raw_path, status in ADMIN_SPELLINGS.items():
        conn = http.client.HTTPConnection("127.0.0.1", proxied.gateway.port, timeout=10)
        try:
            conn.putrequest("GET", raw_path, skip_accept_encoding=True)
            conn.putheader("Cookie", cookie)
            conn.endheaders()
            resp = conn.getresponse()
            resp.read()
        finally:
            conn.close()
        assert resp.status == status, raw_path
    assert proxied.upstream.seen == []
    assert any(
        e.get("reason") == "ambiguous-request" for e in proxied.gateway.audit_events("denied")
    )


def test_the_upstream_receives_the_canonical_path(proxied: Stack) -> None:
    seen = _seen(proxied.client.get(proxied.url("/console//a/./b/../%63am?q=1"), timeout=10))
    assert seen.path == "/console/a/cam?q=1"


def test_prefix_is_stripped_and_location_rewritten(proxied: Stack) -> None:
    seen = _seen(proxied.client.get(proxied.url("/pbx/status"), timeout=10))
    assert seen.path == "/base/status"
    resp = proxied.client.get(proxied.url("/pbx/redirect"), allow_redirects=False, timeout=10)
    assert resp.status_code == 302
    assert resp.headers["Location"] == proxied.url("/pbx/login?x=1")


def test_a_location_never_becomes_a_redirect_to_another_host(proxied: Stack) -> None:
    """``/base//evil.example/x`` is a path on the device; with the base removed,
    ``//evil.example/x`` would send the browser to evil.example.  The leading
    run of slashes (and what browsers read as slashes) goes out as one."""
    for location in ("/base//evil.example/x", "/base/\\evil.example/x", "/base/\t/evil.example/x"):
        resp = proxied.client.get(
            proxied.url("/pbxkeep/answer"),
            params={"status": "302", "Location": location},
            allow_redirects=False,
            timeout=10,
        )
        assert resp.status_code == 302, location
        assert resp.headers["Location"] == "/evil.example/x", location
    resp = proxied.client.get(
        proxied.url("/pbxkeep/answer"),
        params={"status": "302", "Location": "/base/pbxkeep/ok"},
        allow_redirects=False,
        timeout=10,
    )
    assert resp.headers["Location"] == "/pbxkeep/ok"


# -- headers and cookies -------------------------------------------------------


def test_hop_by_hop_and_forwarding_headers(proxied: Stack) -> None:
    headers = {
        "Connection": "keep-alive, X-Client-Private",
        "X-Client-Private": "secret",
        "Keep-Alive": "timeout=5",
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "Forwarded": "for=6.6.6.6",
        "X-Real-IP": "6.6.6.6",
        "X-Original-URL": "http://127.0.0.1/public/",
        "X-Rewrite-URL": "/admin/",
        "X-HTTP-Method-Override": "DELETE",
        "X-HTTP-Method": "DELETE",
        "X-Method-Override": "DELETE",
        # an explicit Cookie header replaces the client's jar: the session goes in too
        "Cookie": "JSESSIONID=device; "
        + "; ".join(f"{c.name}={c.value}" for c in proxied.client.cookies)
        + "; theme=dark; sso_gw_csrf=x; __Host-sso_gw=y",
    }
    resp = proxied.client.get(proxied.url("/console/"), headers=headers, timeout=10)
    seen = _seen(resp)
    for name in (
        "X-Client-Private",
        "Keep-Alive",
        "Forwarded",
        "X-Real-IP",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ):
        assert seen.get_all(name) == [], name
    assert seen.get("X-Forwarded-For") == "127.0.0.1"
    assert seen.get("X-Forwarded-Host") == f"127.0.0.1:{proxied.gateway.port}"
    assert seen.get("X-Forwarded-Proto") == "http"
    assert seen.get("Host") == f"127.0.0.1:{proxied.upstream.port}"
    cookie = seen.get("Cookie") or ""
    assert "JSESSIONID=device" in cookie and "theme=dark" in cookie
    assert "sso_gw" not in cookie  # neither the session nor any other gateway cookie

    # two Cookie headers (the server joins them with ','): ours stays behind either way
    session = next(c for c in proxied.client.cookies if c.name == "sso_gw")
    raw = (
        f"GET /public/lobby HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: theme=dark\r\n"
        f"Cookie: sso_gw={session.value}\r\nConnection: close\r\n\r\n"
    )
    proxied.upstream.reset()
    _raw_request(proxied.gateway.port, raw.encode())
    [seen] = proxied.upstream.seen  # a public route: forwarded even without a session
    assert seen.get("Cookie") == "theme=dark"
    # the upstream's own hop-by-hop header does not come back
    assert "X-Upstream-Private" not in resp.headers


def _assert_no_client_hints(seen: SeenRequest, host: str) -> None:
    for name, _ in CLIENT_HINTS:
        assert seen.get_all(name) == [], name
    # X-Forwarded-* and X-Original-* are the gateway's three, each once, its own values
    assert seen.get("X-Forwarded-For") == "127.0.0.1"
    assert seen.get("X-Forwarded-Proto") == "http"
    assert seen.get("X-Forwarded-Host") == host
    prefixed = {
        name.lower().replace("_", "-")
        for name in seen.names()
        if name.lower().replace("_", "-").startswith(("x-forwarded", "x-original"))
    }
    assert prefixed == {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
    assert "10.20.30." not in repr(seen.headers)
    assert "admin.example" not in repr(seen.headers)


@pytest.mark.parametrize("route", ["allowed", "public"])
def test_client_address_scheme_and_url_hints_never_arrive(proxied: Stack, route: str) -> None:
    """Headers by which a client could tell the upstream another address, scheme,
    host or URL (X-Client-IP, True-Client-IP, X-Original-URI, X-Forwarded-Ssl,
    ...) never reach it, in any spelling; the gateway's own X-Forwarded-For,
    -Proto and -Host do, once each."""
    # raw socket: requests would merge names that differ in case only
    lines = "".join(f"{name}: {value}\r\n" for name, value in CLIENT_HINTS + CLIENT_FORWARDING)
    host = f"127.0.0.1:{proxied.gateway.port}"
    if route == "allowed":
        head = f"GET /console/status HTTP/1.1\r\nCookie: {_cookie(proxied.client)}\r\n"
    else:  # anonymous, on a public route
        head = "GET /public/lobby HTTP/1.1\r\n"
    raw = f"{head}Host: {host}\r\n{lines}Connection: close\r\n\r\n"
    answer = _raw_request(proxied.gateway.port, raw.encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    [seen] = proxied.upstream.seen
    if route == "allowed":
        assert seen.get("X-Auth-Request-User") == "alice"
    _assert_no_client_hints(seen, host)


def test_upstream_cannot_set_the_gateways_cookies(proxied: Stack) -> None:
    resp = http_client().get(proxied.url("/public/setcookie"), timeout=10)
    assert resp.status_code == 200
    set_cookies = resp.raw.headers.getlist("Set-Cookie")
    assert set_cookies == ["JSESSIONID=device-session; Path=/"]


LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        ({"Cache-Control": "public, max-age=3600"}, "max-age=3600, private"),
        ({}, "private"),  # heuristic freshness from Last-Modified: not in a shared cache
        ({"Cache-Control": "s-maxage=600, proxy-revalidate, no-cache"}, "no-cache, private"),
        ({"Cache-Control": "no-store"}, "no-store, private"),
    ],
)
def test_a_persons_answers_are_private_for_shared_caches(
    proxied: Stack, sent: dict[str, str], received: str
) -> None:
    """A page the person's session decided must not be served by a cache in
    front of the gateway to someone else (who would then never be judged)."""
    params = {**sent, "Last-Modified": LAST_MODIFIED, "CDN-Cache-Control": "max-age=60"}
    resp = proxied.client.get(proxied.url("/console/answer"), params=params, timeout=10)
    assert resp.status_code == 200
    assert resp.raw.headers.getlist("Cache-Control") == [received]
    assert "CDN-Cache-Control" not in resp.headers  # a CDN's own directives go too
    assert resp.headers["Last-Modified"] == LAST_MODIFIED  # the browser's cache still works


def test_public_answers_keep_the_devices_caching_headers(proxied: Stack) -> None:
    params = {"Cache-Control": "public, max-age=3600", "CDN-Cache-Control": "max-age=60"}
    resp = http_client().get(proxied.url("/public/answer"), params=params, timeout=10)
    assert resp.status_code == 200
    assert resp.raw.headers.getlist("Cache-Control") == ["public, max-age=3600"]
    assert resp.headers["CDN-Cache-Control"] == "max-age=60"
    resp = http_client().get(proxied.url("/public/answer"), timeout=10)
    assert "Cache-Control" not in resp.headers


def test_logout_expires_the_upstream_cookies(stack: Stack) -> None:
    client = http_client()
    assert submit_login(client, stack.gateway.url, ALICE).status_code == 303
    form = client.get(stack.url("/.sso/logout"), timeout=10)
    resp = client.post(
        stack.url("/.sso/logout"), data=form_fields(form.text), allow_redirects=False, timeout=10
    )
    assert resp.status_code == 200
    expired = [c for c in resp.raw.headers.getlist("Set-Cookie") if "Max-Age=0" in c]
    assert any(c.startswith("JSESSIONID=;") and c.endswith("Path=/") for c in expired)
    assert any(c.startswith("PBXSESSION=;") and c.endswith("Path=/pbx") for c in expired)
    assert any(c.startswith("PBXSESSION=;") and c.endswith("Path=/") for c in expired)


# -- audit and failures ------------------------------------------------------------


def test_state_changing_requests_are_audited(proxied: Stack) -> None:
    resp = proxied.client.post(proxied.url("/doors/7/unlock"), data=b"now", timeout=10)
    assert resp.status_code == 200
    line = proxied.gateway.audit_events("proxy_action")[-1]
    assert {k: line[k] for k in ("user", "tier", "upstream", "method", "path", "status")} == {
        "user": "alice",
        "tier": "operator",
        "upstream": "intercom",
        "method": "POST",
        "path": "/doors/7/unlock",
        "status": 200,
    }
    before = len(proxied.gateway.audit_events("proxy_action"))
    proxied.client.get(proxied.url("/console/"), timeout=10)
    assert len(proxied.gateway.audit_events("proxy_action")) == before  # GETs are not


def test_unreachable_upstream_is_502_page_and_audited(proxied: Stack) -> None:
    resp = proxied.client.post(proxied.url("/doorlog/export"), data=b"x", timeout=10)
    assert resp.status_code == 502
    assert "door-log" in resp.text and "text/html" in resp.headers["Content-Type"]
    error = proxied.gateway.audit_events("upstream_error")[-1]
    assert error["upstream"] == "door-log" and error["status"] == 502
    assert error["reason"] == "connect"
    assert proxied.gateway.audit_events("proxy_action")[-1]["status"] == 502
    assert proxied.client.get(proxied.url("/.sso/healthz"), timeout=10).status_code == 200


def test_old_firmware_is_502_unless_the_upstream_is_legacy_http(proxied: Stack) -> None:
    strict = proxied.client.get(proxied.url("/panel-strict/status"), timeout=10)
    assert strict.status_code == 502
    error = proxied.gateway.audit_events("upstream_error")[-1]
    assert error["upstream"] == "panel-strict" and error["reason"] == "protocol"
    for _ in range(2):
        resp = proxied.client.get(proxied.url("/panel/status"), timeout=10)
        assert resp.status_code == 200, resp.text[:300]
        assert resp.text == "<p>door panel</p>"
        assert resp.headers["X-Door-State"].split() == ["locked,", "armed"]  # unfolded
    # one connection per request, and the device is told so
    assert proxied.old_firmware.heads[-1].startswith(b"GET /panel/status HTTP/1.1\r\n")
    assert b"\r\nConnection: close" in proxied.old_firmware.heads[-1]


def test_slow_upstream_is_504(proxied: Stack) -> None:
    started = time.monotonic()
    resp = proxied.client.get(proxied.url("/console/slow"), timeout=10)
    assert resp.status_code == 504
    assert time.monotonic() - started < 2.5
    assert proxied.gateway.audit_events("upstream_error")[-1]["reason"] == "timeout"


@pytest.mark.parametrize(
    ("path", "upstream"),
    [("/records-nocert/x", "records-without-cert"), ("/records-otherca/x", "records-other-ca")],
)
def test_tls_failures_are_502(proxied: Stack, path: str, upstream: str) -> None:
    resp = proxied.client.get(proxied.url(path), timeout=10)
    assert resp.status_code == 502
    error = proxied.gateway.audit_events("upstream_error")[-1]
    assert error["upstream"] == upstream
    assert error["reason"] in ("tls", "protocol"), error


def test_https_upstream_with_private_ca_and_client_certificate(proxied: Stack) -> None:
    seen = _seen(proxied.client.get(proxied.url("/records/calls?day=1"), timeout=10))
    assert seen.path == "/records/calls?day=1"
    assert seen.get("X-Auth-Request-User") == "alice"


def test_range_requests_pass_through(proxied: Stack) -> None:
    resp = proxied.client.get(
        proxied.url("/console/range"), headers={"Range": "bytes=10-19"}, timeout=10
    )
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == "bytes 10-19/1024"
    assert resp.content == bytes(range(10, 20))


# -- device credential bridge -------------------------------------------------


def test_basic_device_login_is_answered_for_the_person(proxied: Stack) -> None:
    proxied.basic.reset()
    resp = proxied.client.get(
        proxied.url("/doorbasic/relays"),
        headers={"Authorization": "Basic ZXZpbDpldmls"},
        timeout=10,
    )
    assert resp.status_code == 200
    [seen] = proxied.basic.seen
    assert seen.get_all("Authorization") == ["Basic YWRtaW46RG9vci1BZG1pbi1Qdy0xNw=="]
    assert seen.get("X-Auth-Request-User") == "alice"


def test_digest_device_login_challenge_once_then_preemptive(proxied: Stack) -> None:
    login = proxied.digest._server.login
    assert login is not None
    for path in ("/doordigest/relays/1", "/doordigest/relays/2?x=1"):
        resp = proxied.client.get(proxied.url(path), timeout=10)
        assert resp.status_code == 200, resp.text
        assert "WWW-Authenticate" not in resp.headers
    challenges = login.challenges
    assert challenges >= 1
    resp = proxied.client.post(proxied.url("/doordigest/relays/1/open"), data=b"pulse", timeout=10)
    assert resp.status_code == 200
    big = proxied.client.put(
        proxied.url("/doordigest/firmware/upload"), data=_Payload(5 * MB), timeout=30
    )
    assert big.json() == {"received": 5 * MB}  # streamed, with the remembered challenge
    # ...after an anonymous probe that earned a fresh challenge for it (it never
    # carries credentials, see test_digest_probe_can_never_act_on_the_device)
    assert login.challenges == challenges + 1
    login.expire_nonces()  # the device forgets its nonces: answered again, transparently
    resp = proxied.client.post(proxied.url("/doordigest/relays/1/open"), data=b"pulse", timeout=10)
    assert resp.status_code == 200
    assert login.challenges == challenges + 2
    actions = proxied.gateway.audit_events("proxy_action")
    assert actions[-1]["upstream"] == "door-digest" and actions[-1]["status"] == 200


def _puts(device: ProxyUpstream, path: str) -> list[SeenRequest]:
    return [s for s in device.seen if s.method == "PUT" and s.path == path]


def test_large_body_to_a_digest_device_not_heard_from_yet(proxied: Stack) -> None:
    """A body over the replay limit cannot be sent twice: the bridge asks the
    device for its challenge with an anonymous bodiless GET first, then sends it
    once."""
    proxied.digest.reset()
    resp = proxied.client.put(
        proxied.url("/doorupload/firmware/upload"), data=_Payload(3 * MB), timeout=30
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"received": 3 * MB}
    [probe, upload] = [s for s in proxied.digest.seen if s.path == "/doorupload/firmware/upload"]
    assert (probe.method, probe.get("Authorization")) == ("GET", None)
    assert upload.method == "PUT" and (upload.get("Authorization") or "").startswith("Digest ")


@pytest.mark.parametrize("kind", ["chunked", "over-the-replay-limit"])
def test_digest_probe_can_never_act_on_the_device(proxied: Stack, kind: str) -> None:
    """A body that cannot be sent twice (chunked, or over 1 MiB) goes after a probe
    for a fresh challenge.  Even when the bridge already holds a good challenge,
    the probe carries no credentials (the device only answers it with a 401), no
    body and no query (no ``?action=toggle``): the only authenticated request the
    device ever sees is the real one, the one the policy judged, sent once."""
    login = proxied.digest._server.login
    assert login is not None
    resp = proxied.client.get(proxied.url("/doordigest/relays"), timeout=10)
    assert resp.status_code == 200  # the bridge now holds a challenge the device accepts
    challenges = login.challenges
    proxied.digest.reset()
    actions = len(proxied.gateway.audit_events("proxy_action"))
    data: Any
    if kind == "chunked":
        data, size = iter([b"pu", b"lse"]), 5  # small, but cannot be sent twice
    else:
        data, size = _Payload(REPLAY_LIMIT + MB), REPLAY_LIMIT + MB
    target = "/doordigest/relay/upload?action=toggle"
    resp = proxied.client.post(proxied.url(target), data=data, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"received": size}
    seen = proxied.digest.seen
    [real] = [s for s in seen if s.get_all("Authorization")]
    assert (real.method, real.path) == ("POST", target)
    assert (real.get("Authorization") or "").startswith("Digest ")
    if kind == "chunked":
        assert real.get("Transfer-Encoding") == "chunked"
    else:
        assert real.get("Content-Length") == str(size)
    # everything else it saw: the probe, anonymous, bodiless, without the query
    assert [(s.method, s.path) for s in seen if s is not real] == [
        ("GET", "/doordigest/relay/upload")
    ]
    [probe] = [s for s in seen if s is not real]
    assert [name.lower() for name in probe.names()] == ["host"]
    assert seen.index(probe) < seen.index(real)
    assert login.challenges == challenges + 1  # the probe's, answered by the real request
    [action] = proxied.gateway.audit_events("proxy_action")[actions:]
    assert (action["method"], action["path"], action["status"]) == (
        "POST",
        "/doordigest/relay/upload",
        200,
    )


def test_large_body_to_a_digest_device_whose_nonce_went_stale(proxied: Stack) -> None:
    login = proxied.digest._server.login
    assert login is not None
    resp = proxied.client.get(proxied.url("/doordigest/relays"), timeout=10)
    assert resp.status_code == 200  # the bridge holds a good challenge
    login.expire_nonces()  # ...which the device has now forgotten
    challenges = login.challenges
    proxied.digest.reset()
    resp = proxied.client.put(
        proxied.url("/doordigest/firmware/upload"), data=_Payload(3 * MB), timeout=30
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"received": 3 * MB}
    assert login.challenges == challenges + 1  # the probe's
    assert len(_puts(proxied.digest, "/doordigest/firmware/upload")) == 1  # sent once


def test_large_body_with_refused_device_credentials_is_502(proxied: Stack) -> None:
    proxied.digest.reset()
    resp = proxied.client.put(
        proxied.url("/doorwrong/firmware/upload"), data=_Payload(3 * MB), timeout=30
    )
    assert resp.status_code == 502
    assert "Try again" not in resp.text  # it would not help
    failed = proxied.gateway.audit_events("device_login_failed")[-1]
    assert failed["upstream"] == "door-wrong-password" and failed["reason"] == "refused"
    assert proxied.gateway.audit_events("proxy_action")[-1]["status"] == 502
    assert len(_puts(proxied.digest, "/doorwrong/firmware/upload")) == 1


def test_websocket_handshake_to_a_digest_device_carries_the_credentials(
    proxied: Stack,
) -> None:
    """The handshake cannot be sent twice, so the gateway asks a Digest device it
    has not heard from for its challenge first.  (This device does not speak
    WebSocket: it accepts the credentials and answers 200, which is passed back.)"""
    proxied.digest.reset()
    with pytest.raises(InvalidStatus) as info:
        with connect(
            f"ws://127.0.0.1:{proxied.gateway.port}/doorws/events?camera=2",
            additional_headers={"Cookie": _cookie(proxied.client)},
            open_timeout=10,
        ):
            pass
    assert info.value.response.status_code == 200
    handshake = [s for s in proxied.digest.seen if s.get("Upgrade") == "websocket"]
    assert len(handshake) == 1
    assert handshake[0].path == "/doorws/events?camera=2"
    assert (handshake[0].get("Authorization") or "").startswith("Digest ")
    # the probe before it: anonymous, without the query
    [probe] = [s for s in proxied.digest.seen if s.get("Upgrade") is None]
    assert (probe.method, probe.path, probe.get_all("Authorization")) == (
        "GET",
        "/doorws/events",
        [],
    )


def test_bridge_is_never_used_without_an_authorised_person(proxied: Stack) -> None:
    login = proxied.digest._server.login
    assert login is not None
    resp = http_client().get(
        proxied.url("/public/door/lobby"),
        headers={"Authorization": "Basic Z3Vlc3M6cHc="},
        timeout=10,
    )
    assert resp.status_code == 401  # the device's own answer, for nobody in particular
    assert "WWW-Authenticate" not in resp.headers  # and no password prompt
    assert not any(s.get("Authorization") for s in proxied.digest.seen if "lobby" in s.path)


def test_trace_never_reaches_a_device(proxied: Stack) -> None:
    """A device that answers TRACE echoes the request: with the bridge, the
    device password.  TRACE is refused for every upstream, before any contact
    with it, whoever asks."""
    devices = (proxied.basic, proxied.digest, proxied.upstream)
    for device in devices:
        device.reset()
    before = len(proxied.gateway.audit_events("denied"))
    paths = ("/doorbasic/relays", "/doordigest/relays", "/console/x", "/public/x")
    for path in paths:
        client = proxied.client if not path.startswith("/public/") else http_client()
        resp = client.request("TRACE", proxied.url(path), timeout=10)
        assert resp.status_code == 405, (path, resp.text[:300])
        assert "Door-Admin" not in resp.text and "Authorization" not in resp.text
        assert "TRACE" not in resp.headers["Allow"] and "GET" in resp.headers["Allow"]
        assert resp.headers["Cache-Control"] == "no-store"
    for device in devices:
        assert device.seen == []
    denied = proxied.gateway.audit_events("denied")[before:]
    assert [(e["reason"], e["method"], e["path"]) for e in denied] == [
        ("method-not-allowed", "TRACE", path) for path in paths
    ]
    assert [e["upstream"] for e in denied[:2]] == ["door-basic", "door-digest"]


def test_track_never_reaches_a_device_under_gunicorns_own_parser(
    request: pytest.FixtureRequest, tmp_path: Path, stack: Stack
) -> None:
    """TRACK (IIS's TRACE) is no method llhttp knows: the gevent worker's server
    answers it 501 itself.  gunicorn's sync and gthread workers pass any
    upper-case token on: the proxy refuses it like TRACE."""
    secret = tmp_path / "door-admin-password"
    secret.write_text("Door-Admin-Pw-17\n", encoding="utf-8")
    bridged = {"scheme": "basic", "username": "admin", "password": {"file": str(secret)}}
    settings = {
        "listen": {"worker_class": "gthread"},
        "proxy": {
            "upstreams": [
                {
                    "name": "door-basic",
                    "match": {"hosts": ["127.0.0.1"]},
                    "url": stack.basic.url,
                    "device_login": bridged,
                }
            ]
        },
    }
    gateway = start_gateway(request, tmp_path / "gthread", settings=settings, workers=1)
    client = http_client()
    request.addfinalizer(client.close)
    assert submit_login(client, gateway.url, ALICE).status_code == 303
    stack.basic.reset()
    for method in ("TRACK", "TRACE"):
        resp = client.request(method, gateway.url + "/relays", timeout=10)
        assert resp.status_code == 405, (method, resp.text[:300])
        assert "Door-Admin" not in resp.text and "Authorization" not in resp.text
    assert stack.basic.seen == []
    assert [e["method"] for e in gateway.audit_events("denied")] == ["TRACK", "TRACE"]


def test_refused_device_credentials_are_502_and_audited(proxied: Stack) -> None:
    resp = proxied.client.get(proxied.url("/doorwrong/relays"), timeout=10)
    assert resp.status_code == 502
    assert "WWW-Authenticate" not in resp.headers
    failed = proxied.gateway.audit_events("device_login_failed")[-1]
    assert failed["upstream"] == "door-wrong-password" and failed["user"] == "alice"
    assert failed["reason"] == "refused"
    assert "Door-Admin" not in proxied.gateway.audit_path.read_text(encoding="utf-8")


# -- streaming ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chunked", "mjpeg", "sse"])
def test_streams_pass_through_as_they_arrive(proxied: Stack, kind: str) -> None:
    """The upstream holds back its second part until the test has read the
    first one through the gateway: a buffering proxy would deadlock here."""
    with proxied.client.get(proxied.url(f"/console/{kind}"), stream=True, timeout=10) as resp:
        assert resp.status_code == 200
        got = b""
        chunks = resp.iter_content(chunk_size=None)
        while not any(marker in got for marker in (b"first", b"frame-0", b"door-0")):
            got += next(chunks)
        proxied.upstream.release.set()
        for chunk in chunks:
            got += chunk
    if kind == "chunked":
        assert got == b"first;second;third"
    elif kind == "sse":  # Server-Sent Events
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert got == b"event: door\ndata: door-0 opened\n\nevent: door\ndata: door-1 opened\n\n"
    else:
        assert resp.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
        assert b"frame-0" in got and b"frame-1" in got


def _worker_pid(gateway: GatewayProcess) -> int:
    assert gateway.pid is not None
    children = Path(f"/proc/{gateway.pid}/task/{gateway.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class _RssWatch:
    """The highest RSS of a process, sampled every 20 ms while in the block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = _rss(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss(self.pid))

    def __enter__(self) -> _RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.start


SIZE = 500 * MB  # the issue: memory stays flat while 500 MB pass


def _body(size: int) -> Iterator[bytes]:
    block = b"\x5a" * MB
    for _ in range(size // MB):
        yield block


class _Payload:
    """``size`` bytes made up on the fly, read by requests with a Content-Length."""

    block = b"\x5a" * MB

    def __init__(self, size: int) -> None:
        self.left = size
        self.size = size

    def __len__(self) -> int:
        return self.size

    def read(self, amount: int = -1) -> bytes:
        amount = self.left if amount < 0 else min(amount, self.left, MB)
        self.left -= amount
        return self.block[:amount]


def test_large_download_streams_with_flat_memory(proxied: Stack) -> None:
    pid = _worker_pid(proxied.gateway)
    proxied.client.get(proxied.url("/console/download?size=1000"), timeout=10)  # warm up
    with _RssWatch(pid) as watch:
        resp = proxied.client.get(
            proxied.url(f"/console/download?size={SIZE}"), stream=True, timeout=30
        )
        assert resp.headers["Content-Length"] == str(SIZE)
        total = sum(len(c) for c in resp.iter_content(chunk_size=MB))
    assert total == SIZE
    assert watch.growth < 50 * MB, f"worker RSS grew {watch.growth / MB:.0f} MB"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_large_upload_streams_with_flat_memory(proxied: Stack, chunked: bool) -> None:
    pid = _worker_pid(proxied.gateway)
    data: Any = _body(SIZE) if chunked else _Payload(SIZE)
    with _RssWatch(pid) as watch:
        resp = proxied.client.put(proxied.url("/console/firmware/upload"), data=data, timeout=60)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json() == {"received": SIZE}
    assert watch.growth < 50 * MB, f"worker RSS grew {watch.growth / MB:.0f} MB"
    seen = proxied.upstream.seen[-1]
    if chunked:
        assert seen.get("Transfer-Encoding") == "chunked"
    else:
        assert seen.get("Content-Length") == str(SIZE)
