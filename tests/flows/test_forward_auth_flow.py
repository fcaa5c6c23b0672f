"""/.sso/auth as nginx auth_request, ingress-nginx and Traefik call it."""

from __future__ import annotations

import pytest

from gateway.assertion import verify
from tests.flows.conftest import Gateway, GatewayFactory

UNTRUSTED = {"REMOTE_ADDR": "203.0.113.9"}


def test_no_session_is_401_never_a_redirect(gw: Gateway) -> None:
    resp = gw.auth("https://intercom.test/doors/")
    assert resp.status_code == 401
    assert "Location" not in resp.headers
    assert resp.get_json() == {"error": "login_required"}


def test_allowed_request_gets_identity_headers(gw: Gateway) -> None:
    gw.login("alice")
    resp = gw.auth("https://intercom.test/doors/3")
    assert resp.status_code == 202
    h = resp.headers
    assert h["X-Auth-Request-User"] == "alice"
    assert h["X-Auth-Request-Email"] == "alice@corp.test"
    assert h["X-Auth-Request-Groups"] == "Intercom-Operators"
    assert h["X-Auth-Request-Tier"] == "operator"
    assert h["X-Auth-Request-Extension"] == "4711"
    assert h["X-Auth-Request-Department"] == "Security"
    jwks = gw.get("/.sso/jwks.json").get_json()
    claims = verify(
        h["X-Auth-Request-Jwt"],
        jwks,
        audience="intercom-upstreams",
        issuer="intercom-sso-gateway",
        now=gw.clock.now,
    )
    assert claims["sub"] == "alice" and claims["tier"] == "operator"
    assert claims["groups"] == ["Intercom-Operators"]


def test_extension_falls_back_to_telephone_number(gw: Gateway) -> None:
    gw.login("bob")
    resp = gw.auth("https://intercom.test/admin/")
    assert resp.status_code == 202
    assert resp.headers["X-Auth-Request-Extension"] == "+49 30 4712"
    assert "X-Auth-Request-Department" not in resp.headers


def test_denied_is_403_with_an_audit_line(gw: Gateway) -> None:
    gw.login("alice")
    resp = gw.auth("https://intercom.test/admin/users", method="POST")
    assert resp.status_code == 403
    assert "Location" not in resp.headers
    assert resp.get_json()["required_tiers"] == ["admin"]
    event = gw.events("denied")[-1]
    assert event["user"] == "alice" and event["route"] == "admin"
    assert event["path"] == "/admin/users" and event["method"] == "POST"
    assert "X-Auth-Request-User" not in resp.headers


def test_public_route_needs_no_session_and_sends_no_identity(gw: Gateway) -> None:
    resp = gw.auth("https://intercom.test/health")
    assert resp.status_code == 202
    assert "X-Auth-Request-User" not in resp.headers


def test_unknown_host_is_denied_by_default(gw: Gateway) -> None:
    gw.login("bob")
    assert gw.auth("https://pbx.other.test/").status_code == 403


def test_traefik_forwarded_headers(gw: Gateway) -> None:
    gw.login("alice")
    ok = gw.get(
        "/.sso/auth",
        headers={
            "X-Forwarded-Host": "intercom.test",
            "X-Forwarded-Uri": "/doors/?x=1",
            "X-Forwarded-Method": "GET",
            "X-Forwarded-Proto": "https",
        },
    )
    assert ok.status_code == 202
    denied = gw.get(
        "/.sso/auth",
        headers={"X-Forwarded-Host": "intercom.test", "X-Forwarded-Uri": "/admin/"},
    )
    assert denied.status_code == 403


@pytest.mark.parametrize("host", [None, "", "  ", ",intercom.test"])
def test_traefik_uri_without_a_host_is_refused(gw: Gateway, host: str | None) -> None:
    """Without X-Forwarded-Host the request would be judged as one for the
    gateway's own host name (here 'localhost', where any tier may pass)."""
    gw.login("alice")
    headers = {"X-Forwarded-Uri": "/admin/"}
    if host is not None:
        headers["X-Forwarded-Host"] = host
    resp = gw.get("/.sso/auth", headers=headers)
    assert resp.status_code == 403
    assert gw.events("denied")[-1]["reason"] == "ambiguous-request"


@pytest.mark.parametrize(
    "path",
    [
        "/%61dmin/",
        "//admin/",
        "/doors/../admin/",
        "/doors/%2e%2e/admin/",
        "/ADMIN/",
        "/admin;x=1/",
    ],
)
def test_path_tricks_never_bypass_the_admin_route(gw: Gateway, path: str) -> None:
    gw.login("alice")
    resp = gw.auth("https://intercom.test" + path)
    assert resp.status_code == 403


@pytest.mark.parametrize(
    "path",
    [
        "/doors%2F..%2Fadmin/",
        "/doors/%252e%252e/admin/",
        "/doors\\..\\admin/",
        "/a%00b",
        "/x#/../admin",
        # dot segments: the proxy in front passes them on raw, and an upstream may
        # resolve them otherwise than the gateway would (Werkzeug routes
        # /admin/%2e%2e/doors to its /admin/ handler) - refused, never resolved
        "/admin/%2e%2e/doors/",
        "/admin/%2E%2E/doors/",
        "/admin/.%2e/doors/",
        "/admin/../doors/",
        "/admin//../doors/",
        "/doors/./",
        "/doors/%2e/",
        "/doors/..",
    ],
)
def test_ambiguous_paths_are_refused_and_audited(gw: Gateway, path: str) -> None:
    gw.login("bob")  # even an admin: the gateway refuses to guess
    resp = gw.auth("https://intercom.test" + path)
    assert resp.status_code == 403
    assert gw.events("denied")[-1]["reason"] == "ambiguous-request"


@pytest.mark.parametrize("method", ["G ET", "get\tx", "", "GETGETGETGETGETGETGET"])
def test_malformed_original_method_is_refused(gw: Gateway, method: str) -> None:
    gw.login("alice")
    resp = gw.get(
        "/.sso/auth",
        headers={"X-Original-URL": "https://intercom.test/doors/", "X-Original-Method": method},
    )
    # an empty method falls back to GET; anything else malformed is refused
    assert resp.status_code in ((202,) if method == "" else (403,))


def test_original_request_headers_from_untrusted_addresses_are_ignored(gw: Gateway) -> None:
    # Unauthenticated: a spoofed public URL does not open the door.
    resp = gw.auth("https://intercom.test/health", environ_base=UNTRUSTED)
    assert resp.status_code == 401
    event = gw.events("untrusted_forward_headers")[-1]
    assert event["client_ip"] == "203.0.113.9"
    assert "X-Original-URL" in event["headers"]
    for _ in range(5):  # an outsider cannot flood the audit log with these
        gw.auth("https://intercom.test/health", environ_base=UNTRUSTED)
    assert len(gw.events("untrusted_forward_headers")) == 1
    gw.clock.advance(61)
    gw.auth("https://intercom.test/health", environ_base=UNTRUSTED)
    assert len(gw.events("untrusted_forward_headers")) == 2
    # From the trusted proxy, the same headers are believed.
    assert gw.auth("https://intercom.test/health").status_code == 202


def test_spoofed_x_forwarded_for_from_untrusted_address_is_not_believed(gw: Gateway) -> None:
    resp = gw.login(
        "alice",
        environ_base=UNTRUSTED,
        headers={"X-Forwarded-For": "10.20.30.7"},
    )
    assert resp.status_code == 303
    assert gw.events("login")[-1]["client_ip"] == "203.0.113.9"


def test_tampered_cookie_is_no_session_and_is_audited(gw: Gateway) -> None:
    gw.login("alice")
    cookie = gw.session_cookie()
    assert cookie is not None
    name = gw.services.cookie_name
    i = len(cookie) - 6  # inside the signature (the last character may be padding bits)
    flipped = cookie[:i] + ("A" if cookie[i] != "A" else "B") + cookie[i + 1 :]
    for forged in (flipped, cookie + "x", "x" * 600, "", "a.b.c"):
        gw.client.set_cookie(name, forged, domain="localhost")
        assert gw.auth("https://intercom.test/doors/").status_code == 401
    assert gw.events("invalid_cookie")


def test_cookie_signed_by_another_gateway_is_refused(make_gateway: GatewayFactory) -> None:
    a = make_gateway()
    a.login("alice")
    cookie = a.session_cookie()
    b = make_gateway(root=a.root.parent / "other-site")
    assert cookie is not None
    b.client.set_cookie(b.services.cookie_name, cookie, domain="localhost")
    assert b.auth("https://intercom.test/doors/").status_code == 401


def test_inbound_identity_headers_never_reach_a_view(gw: Gateway) -> None:
    # The WSGI layer drops them in every spelling before Flask sees the request.
    seen: dict[str, str] = {}

    @gw.app.route("/probe")
    def probe() -> str:
        from flask import request

        seen.update({k.lower(): v for k, v in request.headers.items()})
        return "ok"

    gw.get(
        "/probe",
        headers=[
            ("X-Auth-Request-User", "admin"),
            ("x-auth-request-tier", "admin"),
            ("X_Auth_Request_Groups", "Intercom-Admins"),
            ("X-AUTH-REQUEST-JWT", "forged"),
            ("X-Auth-Request-Extension", "100"),
            ("X-Other", "kept"),
        ],
    )
    assert seen.get("x-other") == "kept"
    assert not [k for k in seen if k.replace("_", "-").startswith("x-auth-request-")]


def test_rd_to_this_site_behind_a_tls_terminating_proxy(gw: Gateway) -> None:
    # nginx terminates TLS and speaks plain HTTP to the gateway
    url = "/.sso/start?rd=https://localhost/doors/"
    behind = gw.client.get(url, headers={"X-Forwarded-Proto": "https"})
    assert behind.status_code == 302
    # the same header from an untrusted address is not believed
    spoofed = gw.client.get(
        url, headers={"X-Forwarded-Proto": "https"}, environ_base={"REMOTE_ADDR": "203.0.113.9"}
    )
    assert spoofed.status_code == 400


@pytest.mark.parametrize(
    "url",
    [
        "https://intercom.test?/admin/",  # a Host header of "intercom.test?"
        "https://intercom.test#/admin/",
        "https://intercom.test@localhost/admin/",
        "https://user:pw@intercom.test/admin/",
        "https://intercom.test",  # nginx always sends a path
        "https://intercom.test/admin/ x",
        "ftp://intercom.test/admin/",
        "//intercom.test/admin/",
        "https://intercom.test:99999999/admin/",
    ],
)
def test_original_url_with_a_mangled_authority_is_refused(gw: Gateway, url: str) -> None:
    gw.login("alice")  # an operator; /admin/ is for admins
    resp = gw.auth(url)
    assert resp.status_code == 403
    assert gw.events("denied")[-1]["reason"] == "ambiguous-request"


@pytest.mark.parametrize(
    "host", ["intercom.test?", "intercom.test/admin", "intercom.test@x", "a b", "intercom.test#"]
)
def test_forwarded_host_with_junk_is_refused(gw: Gateway, host: str) -> None:
    gw.login("alice")
    resp = gw.get("/.sso/auth", headers={"X-Forwarded-Host": host, "X-Forwarded-Uri": "/doors/"})
    assert resp.status_code == 403
    assert gw.events("denied")[-1]["reason"] == "ambiguous-request"


def test_public_routes_do_not_extend_the_idle_timer(gw: Gateway) -> None:
    gw.login("alice")
    for _ in range(9):  # a tab polling the public health check for 900 s
        gw.clock.advance(100)
        assert gw.auth("https://intercom.test/health").status_code == 202
    gw.clock.advance(1)
    assert gw.auth("https://intercom.test/doors/").status_code == 401


@pytest.mark.parametrize(
    "hosts", ["public.test, intercom.test", "intercom.test,intercom.test", "intercom.test ,"]
)
def test_several_forwarded_hosts_are_refused_never_one_picked(gw: Gateway, hosts: str) -> None:
    """Which host's routes judge a request must never be a guess between a
    client's value and a proxy's."""
    gw.login("alice")
    resp = gw.get("/.sso/auth", headers={"X-Forwarded-Host": hosts, "X-Forwarded-Uri": "/admin/"})
    assert resp.status_code == 403
    assert gw.events("denied")[-1]["reason"] == "ambiguous-request"
