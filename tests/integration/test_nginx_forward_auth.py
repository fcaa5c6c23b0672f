"""The ingress pattern for real: nginx ``auth_request`` -> the gateway under gunicorn
-> a real upstream, with nginx running deploy/nginx/forward-auth.conf as documented.

Each test asks what the browser sees and what the upstream received.  The whole
module runs once with the on-disk session store and once with Redis.
"""

from __future__ import annotations

import http.client
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from gateway.assertion import verify
from tests.integration.conftest import (
    ALICE,
    JWT_AUDIENCE,
    JWT_ISSUER,
    EchoUpstream,
    GatewayProcess,
    NginxProcess,
    SeenRequest,
    form_fields,
    http_client,
    start_gateway,
    start_nginx,
    submit_login,
)
from tests.peers import RedisServer

pytestmark = pytest.mark.nginx

IDENTITY_HEADERS = (
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Tier",
    "X-Auth-Request-Jwt",
    "X-Auth-Request-Extension",
    "X-Auth-Request-Department",
)

# Every spelling a client might try; each is sent on the same request.
SPOOFED: Sequence[tuple[str, str]] = (
    ("X-Auth-Request-User", "admin"),
    ("X-AUTH-REQUEST-USER", "admin"),
    ("x-auth-request-user", "admin"),
    ("X_Auth_Request_User", "admin"),
    ("x-auth-request-tier", "admin"),
    ("X_AUTH_REQUEST_TIER", "admin"),
    ("X-Auth-Request-Groups", "Intercom-Admins"),
    ("X-Auth-Request-Email", "admin@example.test"),
    ("X-Auth-Request-Jwt", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."),
    ("X-Auth-Request-Extension", "0000"),
    ("x_auth_request_department", "IT"),
)


@dataclass(frozen=True)
class Stack:
    store: str
    gateway: GatewayProcess
    nginx: NginxProcess
    upstream: EchoUpstream

    def url(self, path: str) -> str:
        return self.nginx.url + path


@pytest.fixture(scope="module", params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    nginx_binary: str,
    echo_upstream: EchoUpstream,
) -> Stack:
    store: str = request.param
    settings: dict[str, object] = {"session": {"store": "file"}}
    if store == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        redis_server.start()  # an outage test elsewhere may have stopped it
        settings = {"session": {"store": "redis", "redis_url": redis_server.url}}
    base = tmp_path_factory.mktemp(f"forward-auth-{store}")
    gateway = start_gateway(request, base / "gateway", settings=settings)
    nginx = start_nginx(request, base / "nginx", gateway, echo_upstream, binary=nginx_binary)
    return Stack(store, gateway, nginx, echo_upstream)


def _raw_get(
    base_url: str, path: str, headers: Sequence[tuple[str, str]]
) -> tuple[int, dict[str, str], bytes]:
    """GET with exactly these header lines (duplicates and odd spellings kept, which
    requests would fold together)."""
    parts = urlsplit(base_url)
    assert parts.hostname == "127.0.0.1"
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", parts.netloc)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _seen(response: requests.Response) -> SeenRequest:
    """What the upstream received, from the echo it answered with."""
    assert response.status_code == 200, (response.status_code, response.text[:300])
    return SeenRequest.from_json(response.json())


def _log_in(stack: Stack, client: requests.Session, rd: str) -> None:
    answer = submit_login(client, stack.nginx.url, ALICE, rd=rd)
    assert answer.status_code == 303, answer.text[:500]
    assert answer.headers["Location"] == rd


def _cookie_header(client: requests.Session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies)


# -- the sign-in redirect ---------------------------------------------------------


def test_unauthenticated_request_is_sent_to_the_login_form(
    stack: Stack, client: requests.Session, upstream: EchoUpstream
) -> None:
    target = stack.url("/doors/front?floor=2")
    answer = client.get(target, headers={"Accept": "text/html"}, allow_redirects=False)
    assert answer.status_code == 302
    start = answer.headers["Location"]
    assert start == f"/.sso/start?rd={target}"

    to_login = client.get(stack.url(start), allow_redirects=False)
    assert to_login.status_code == 302
    login_url = to_login.headers["Location"]
    assert urlsplit(login_url).path == "/.sso/login"
    assert parse_qs(urlsplit(login_url).query) == {"rd": [target]}

    form = client.get(stack.url(login_url))
    assert form.status_code == 200
    assert stack.gateway.site_name in form.text
    fields = form_fields(form.text)
    assert fields["rd"] == target
    assert fields["csrf_token"]
    assert upstream.seen == []  # nothing reached the dashboard


@pytest.mark.parametrize(
    ("path", "comes_back_to"),
    [
        ("/doors/?q=front%20door", "/doors/"),  # '%' would be decoded: keep the path only
        ("/doors/?a=1&b=2", "/doors/"),  # '&' would end rd early
        ("/doors/?q=front+door", "/doors/"),  # '+' would be decoded to a space
        ("/doors/caf%C3%A9?x=1", "/"),  # '%' in the path itself: back to the site root
        ("/doors/front?x=y&", "/doors/front"),
        ("/doors/front?x=y", "/doors/front?x=y"),  # anything else comes back as it was
    ],
)
def test_sign_in_redirect_never_carries_an_rd_the_gateway_would_refuse(
    stack: Stack, client: requests.Session, path: str, comes_back_to: str
) -> None:
    answer = client.get(stack.url(path), allow_redirects=False)
    assert answer.status_code == 302
    assert answer.headers["Location"] == f"/.sso/start?rd={stack.url(comes_back_to)}"
    form = client.get(stack.url(answer.headers["Location"]))
    assert form.status_code == 200, form.text[:300]
    assert form_fields(form.text)["rd"] == stack.url(comes_back_to)


def test_forward_auth_endpoint_is_internal_to_nginx(stack: Stack, client: requests.Session) -> None:
    """A client cannot ask /.sso/auth itself (and hand it an X-Original-URL)."""
    answer = client.get(stack.url("/.sso/auth"), headers={"X-Original-URL": stack.url("/public/")})
    assert answer.status_code == 404


# -- signed in --------------------------------------------------------------------


def test_login_through_the_form_gives_the_upstream_the_identity(
    stack: Stack, client: requests.Session, upstream: EchoUpstream
) -> None:
    target = stack.url("/console/live?camera=3")
    assert client.get(target, allow_redirects=False).status_code == 302
    _log_in(stack, client, rd=target)

    seen = _seen(client.get(target))
    assert seen.path == "/console/live?camera=3"
    assert upstream.seen == [seen]
    assert seen.get("X-Auth-Request-User") == "alice"
    assert seen.get("X-Auth-Request-Email") == "alice@example.test"
    assert seen.get("X-Auth-Request-Groups") == "Intercom-Operators,UC-Users"
    assert seen.get("X-Auth-Request-Tier") == "operator"
    assert seen.get("X-Auth-Request-Extension") == "4711"
    assert seen.get("X-Auth-Request-Department") == "Security"

    token = seen.get("X-Auth-Request-Jwt")
    assert token
    jwks = client.get(stack.url("/.sso/jwks.json")).json()
    claims = verify(token, jwks, audience=JWT_AUDIENCE, issuer=JWT_ISSUER)
    assert claims["sub"] == "alice"
    assert claims["tier"] == "operator"
    assert claims["groups"] == ["Intercom-Operators", "UC-Users"]
    assert claims["email"] == "alice@example.test"

    logins = stack.gateway.audit_events("login")
    assert logins and logins[-1]["user"] == "alice"
    assert logins[-1]["client_ip"] == "127.0.0.1"


@pytest.mark.parametrize("signed_in", [True, False], ids=["signed-in", "anonymous"])
def test_spoofed_identity_headers_never_reach_the_upstream(
    stack: Stack, client: requests.Session, upstream: EchoUpstream, signed_in: bool
) -> None:
    headers = list(SPOOFED)
    if signed_in:
        _log_in(stack, client, rd=stack.url("/console/"))
        headers.append(("Cookie", _cookie_header(client)))

    for path in ["/console/", "/public/lobby"] if signed_in else ["/public/lobby"]:
        upstream.reset()
        status, _, body = _raw_get(stack.nginx.url, path, headers)
        assert status == 200, body[:300]
        [seen] = upstream.seen
        # no header with an underscore gets past nginx at all
        assert not [name for name in seen.names() if "_" in name]
        if path == "/console/":  # the real identity replaced every spoofed copy
            assert seen.get_all("X-Auth-Request-User") == ["alice"]
            assert seen.get_all("X-Auth-Request-Tier") == ["operator"]
            assert seen.get_all("X-Auth-Request-Groups") == ["Intercom-Operators,UC-Users"]
            assert seen.get_all("X-Auth-Request-Email") == ["alice@example.test"]
            assert seen.get_all("X-Auth-Request-Extension") == ["4711"]
            assert seen.get_all("X-Auth-Request-Department") == ["Security"]
            [token] = seen.get_all("X-Auth-Request-Jwt")
            assert not token.startswith("eyJhbGciOiJub25lIn0")
        else:  # a public route carries no identity, and none of the client's
            for name in IDENTITY_HEADERS:
                assert seen.get_all(name) == [], name


def test_denied_path_is_403_and_the_upstream_is_never_called(
    stack: Stack, client: requests.Session, upstream: EchoUpstream
) -> None:
    _log_in(stack, client, rd=stack.url("/console/"))
    answer = client.get(stack.url("/admin/users"), allow_redirects=False)
    assert answer.status_code == 403
    assert upstream.seen == []
    denied = stack.gateway.audit_events("denied")
    assert denied and denied[-1]["user"] == "alice"
    assert denied[-1]["path"] == "/admin/users"
    assert denied[-1]["route"] == "intercom-admin"
    # the session is still good for what the tier allows
    assert _seen(client.get(stack.url("/console/"))).get("X-Auth-Request-Tier") == "operator"


@pytest.mark.parametrize(
    "path", ["/admin/%2e%2e/console/", "/admin/%2E%2E/console/", "/admin/../console/"]
)
def test_a_dot_segment_never_reaches_the_upstream(
    stack: Stack, client: requests.Session, upstream: EchoUpstream, path: str
) -> None:
    """nginx passes the raw request URI on (``proxy_pass`` without a URI part), so
    ``/admin/%2e%2e/console/`` reaches a dashboard as it was sent - and Werkzeug,
    for one, routes it to ``/admin/``.  The gateway must refuse it, not judge the
    ``/console/`` it would resolve to (where an operator may go)."""
    _log_in(stack, client, rd=stack.url("/console/"))
    upstream.seen.clear()
    cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies)
    status, _, _ = _raw_get(stack.url("/"), path, [("Cookie", cookie)])
    assert status == 403
    assert upstream.seen == []
    denied = stack.gateway.audit_events("denied")
    assert denied[-1]["reason"] == "ambiguous-request"
    # the same person still reaches /console/ itself
    assert _seen(client.get(stack.url("/console/"))).get("X-Auth-Request-Tier") == "operator"


def test_public_route_works_without_login(
    stack: Stack, client: requests.Session, upstream: EchoUpstream
) -> None:
    seen = _seen(client.get(stack.url("/public/lobby?lang=de")))
    assert seen.path == "/public/lobby?lang=de"
    assert upstream.seen == [seen]
    for name in IDENTITY_HEADERS:
        assert seen.get_all(name) == []


def test_logout_ends_access_at_once(
    stack: Stack, client: requests.Session, upstream: EchoUpstream
) -> None:
    target = stack.url("/console/")
    _log_in(stack, client, rd=target)
    assert _seen(client.get(target)).get("X-Auth-Request-User") == "alice"
    stolen = _cookie_header(client)

    confirm = client.get(stack.url("/.sso/logout"))
    assert confirm.status_code == 200
    bye = client.post(stack.url("/.sso/logout"), data=form_fields(confirm.text))
    assert bye.status_code == 200
    assert "signed out" in bye.text

    upstream.reset()
    again = client.get(target, allow_redirects=False)
    assert again.status_code == 302
    assert again.headers["Location"] == f"/.sso/start?rd={target}"
    # the old cookie is dead on the server, not merely forgotten by the browser
    status, headers, _ = _raw_get(stack.nginx.url, "/console/", [("Cookie", stolen)])
    assert status == 302
    assert headers["Location"] == f"/.sso/start?rd={target}"
    assert upstream.seen == []
    # what nginx asked behind that 302: the gateway's forward-auth answer is 401
    asked = client.get(
        stack.gateway.url + "/.sso/auth",
        headers={"Cookie": stolen, "X-Original-URL": target, "X-Original-Method": "GET"},
    )
    assert asked.status_code == 401
    assert asked.json() == {"error": "login_required"}
    assert stack.gateway.audit_events("logout")[-1]["user"] == "alice"


# -- without nginx: the original-request headers from an untrusted address ----------


@pytest.mark.parametrize(
    ("trusted_proxies", "believed"),
    [(["10.99.0.0/16"], False), (["127.0.0.1/32", "::1/128"], True)],
    ids=["untrusted", "trusted"],
)
def test_original_url_is_believed_only_from_a_trusted_proxy(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    trusted_proxies: list[str],
    believed: bool,
) -> None:
    gateway = start_gateway(
        request, tmp_path / "gateway", settings={"network": {"trusted_proxies": trusted_proxies}}
    )
    # closed before the gateway stops (an idle keep-alive connection would hold
    # gunicorn's graceful shutdown open)
    with http_client() as client:
        _judge_directly(gateway, client, believed)


def _judge_directly(gateway: GatewayProcess, client: requests.Session, believed: bool) -> None:
    auth = gateway.url + "/.sso/auth"
    public = {"X-Original-URL": "http://127.0.0.1/public/lobby", "X-Original-Method": "GET"}
    admin = {"X-Original-URL": "http://127.0.0.1/admin/users", "X-Original-Method": "GET"}

    # No session.  Believed: a public page (202).  Ignored: /.sso/auth on 127.0.0.1
    # itself, which the console route protects -> log in first (401).
    anonymous = client.get(auth, headers=public)
    assert anonymous.status_code == (202 if believed else 401)

    answer = submit_login(client, gateway.url, ALICE)
    assert answer.status_code == 303
    # Operator session.  Believed: /admin/ is denied (403).  Ignored: the console
    # route allows the operator (202, with her identity).
    judged = client.get(auth, headers=admin)
    assert judged.status_code == (403 if believed else 202)
    if not believed:
        assert judged.headers["X-Auth-Request-User"] == "alice"
        assert judged.headers["X-Auth-Request-Tier"] == "operator"

    warnings = gateway.audit_events("untrusted_forward_headers")
    if believed:
        assert warnings == []
    else:
        # at most one line a minute per address, per worker process (2 here)
        assert 1 <= len(warnings) <= 2
        assert all(w["client_ip"] == "127.0.0.1" for w in warnings)
        assert "X-Original-URL" in warnings[0]["headers"]


def _raw(
    base_url: str,
    request_line_target: str,
    host: str,
    headers: Sequence[tuple[str, str]],
    method: str = "GET",
) -> tuple[int, bytes]:
    """Send exactly this request line and Host header."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
    try:
        conn.putrequest(method, request_line_target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("target", "host"),
    [
        ("/admin/", "{netloc}?"),  # '?' in Host once moved the path into the query
        ("/admin/", "{netloc}#"),
        ("/admin/", "other.test"),  # a host whose routes are looser
        ("/admin/", "other.test:{port}"),
        ("http://{netloc}/admin/", "other.test"),  # absolute-form request line
        ("http://other.test/admin/", "{netloc}"),
    ],
)
def test_the_host_a_client_names_never_changes_which_routes_judge_it(
    stack: Stack, client: requests.Session, upstream: EchoUpstream, target: str, host: str
) -> None:
    """alice is an operator; /admin/ is for admins on this server whatever Host says."""
    _log_in(stack, client, rd=stack.url("/console/"))
    netloc = urlsplit(stack.nginx.url).netloc
    port = str(urlsplit(stack.nginx.url).port)
    upstream.reset()
    status, body = _raw(
        stack.nginx.url,
        target.format(netloc=netloc),
        host.format(netloc=netloc, port=port),
        [("Cookie", _cookie_header(client))],
    )
    assert status in (400, 403), (status, body[:200])
    assert upstream.seen == []


def test_the_upstream_never_receives_the_gateway_cookies(
    stack: Stack, client: requests.Session, upstream: EchoUpstream
) -> None:
    _log_in(stack, client, rd=stack.url("/console/"))
    jar = _cookie_header(client)
    assert "sso_gw=" in jar and "sso_gw_csrf=" in jar
    for cookie in (
        f"theme=dark; {jar}; lang=de",
        f"{jar}; theme=dark",
        f"theme=dark; {jar}",
        jar,
    ):
        upstream.reset()
        status, _, body = _raw_get(stack.nginx.url, "/console/", [("Cookie", cookie)])
        assert status == 200, body[:300]
        [seen] = upstream.seen
        forwarded = seen.get("Cookie") or ""
        assert "sso_gw" not in forwarded, forwarded
        for keep in ("theme=dark", "lang=de"):
            if keep in cookie:
                assert keep in forwarded


def test_method_override_headers_are_dropped(
    stack: Stack, client: requests.Session, upstream: EchoUpstream
) -> None:
    _log_in(stack, client, rd=stack.url("/console/"))
    upstream.reset()
    status, _, _ = _raw_get(
        stack.nginx.url,
        "/console/",
        [("Cookie", _cookie_header(client)), ("X-HTTP-Method-Override", "DELETE")],
    )
    assert status == 200
    [seen] = upstream.seen
    assert seen.get("X-HTTP-Method-Override") is None
