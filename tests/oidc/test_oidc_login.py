"""Entra ID-style OpenID Connect logins through the real gateway and the real provider."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.conftest import GatewayProcess
from tests.oidc.conftest import G_CONTRACTORS, G_OTHER, OVERAGE_OID, Browser, OidcSite
from tests.oidc_peer import JWT_CLIENT, TENANT
from tests.peers import RedisServer


def _wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(
    ("login", "tier"),
    [("adam", "admin"), ("sue", "supervisor"), ("alice", "operator"), ("carl", "contractor")],
)
def test_login_gives_each_tier(
    gateway: GatewayProcess, browser: Browser, login: str, tier: str
) -> None:
    final = browser.login(login, rd="/console/")
    assert final.url.startswith(browser.base + "/console/")
    info = browser.userinfo().json()
    assert info["tier"] == tier
    assert info["provider"] == "oidc"
    line = gateway.audit_events("login")[-1]
    assert line["provider"] == "oidc" and line["tier"] == tier and line["tenant"] == TENANT


def test_identity_is_entra_shaped(gateway: GatewayProcess, browser: Browser) -> None:
    browser.login("adam")
    info = browser.userinfo().json()
    # the stable object id, not the per-application sub
    assert info["user"] == browser.site.provider.accounts["adam"].claims["oid"]
    assert info["email"] == "adam@corp.example"
    assert "Intercom-Admins" in info["groups"]  # the configured name of G_ADMINS
    assert G_OTHER in info["groups"]  # no name configured: the object id is shown
    resp = browser.auth("/admin/doors")
    assert resp.status_code == 202
    assert resp.headers["X-Auth-Request-Tier"] == "admin"
    assert resp.headers["X-Auth-Request-Email"] == "adam@corp.example"


def test_group_by_object_id_and_app_role(gateway: GatewayProcess, browser: Browser) -> None:
    browser.login("carl")
    assert browser.auth("/console/").status_code == 202
    assert browser.auth("/admin/").status_code == 403
    groups = browser.userinfo().json()["groups"]
    assert G_CONTRACTORS in groups


def test_group_overage_resolved_through_graph(
    oidc_site: OidcSite, gateway: GatewayProcess, browser: Browser
) -> None:
    before = len(oidc_site.graph.requests)
    browser.login("olga", rd="/admin/")
    info = browser.userinfo().json()
    assert info["tier"] == "admin"  # G_ADMINS is on the third page
    pages = oidc_site.graph.requests[before:]
    assert len(pages) == 3
    assert all(p["path"].startswith(f"/v1.0/users/{OVERAGE_OID}/transitiveMemberOf") for p in pages)
    line = gateway.audit_events("login")[-1]
    assert line["groups_from"] == "graph"


def test_hasgroups_overage_for_unknown_graph_user_fails_closed(
    gateway: GatewayProcess, browser: Browser
) -> None:
    final = browser.login("hal")
    assert final.status_code == 401
    assert browser.userinfo().status_code == 401
    assert gateway.audit_events("login_failed")[-1]["reason"] == "graph-user-unknown"


def test_graph_down_fails_closed(
    oidc_site: OidcSite, gateway: GatewayProcess, browser: Browser
) -> None:
    oidc_site.graph.available = False
    try:
        final = browser.login("olga")
    finally:
        oidc_site.graph.available = True
    assert final.status_code == 503
    assert browser.userinfo().status_code == 401
    assert gateway.audit_events("idp_unavailable")[-1]["detail"].startswith("graph")


def test_user_without_any_tier_is_denied(gateway: GatewayProcess, browser: Browser) -> None:
    browser.login("nobody")
    assert browser.userinfo().json()["tier"] is None
    assert browser.auth("/console/").status_code == 403


def _fresh_login(browser: Browser, rd: str) -> None:
    started = browser.start_login(rd)
    # the provider asks for the password again although its own session is live
    authorize = [r for r in started.history if "/auth" in r.headers.get("Location", "")]
    query = parse_qs(urlsplit(authorize[0].headers["Location"]).query)
    assert query["prompt"] == ["login"]
    assert query["max_age"] == ["0"]
    assert "<form" in started.text
    browser.submit_login(started, "alice", "alice-pw-4711")


def test_step_up_forces_a_fresh_login(gateway: GatewayProcess, browser: Browser) -> None:
    # this provider, like Entra's v2 tokens by default, sends no auth_time: when
    # the person last typed a password is unknown, so a max_auth_age route asks
    browser.login("alice")
    assert browser.userinfo().json()["auth_time"] is None
    resp = browser.auth("/fresh/x")
    assert resp.status_code == 401  # nginx sends the browser to /.sso/start
    _fresh_login(browser, "/fresh/x")
    assert browser.userinfo().json()["auth_time"] == pytest.approx(time.time(), abs=5)
    assert browser.auth("/fresh/x").status_code == 202
    time.sleep(3)  # max_auth_age is 2 s on /fresh/
    assert browser.auth("/fresh/x").status_code == 401
    _fresh_login(browser, "/fresh/x")
    assert browser.auth("/fresh/x").status_code == 202
    assert gateway.audit_events("step_up")


def test_a_silent_login_without_auth_time_is_never_taken_for_a_fresh_one(
    gateway: GatewayProcess, browser: Browser
) -> None:
    """Security review: a login the provider answers from its own session (no
    password asked) with an ID token without auth_time used to count as a
    sign-in "now" - anyone at a console whose gateway session had ended passed
    every max_auth_age route."""
    browser.login("alice")
    _fresh_login(browser, "/fresh/x")
    assert browser.auth("/fresh/x").status_code == 202
    for name in [n for n in browser.http.cookies.keys() if "sso_gw" in n]:
        del browser.http.cookies[name]  # the gateway session ends (idle, cleared)
    assert browser.userinfo().status_code == 401
    again = browser.start_login("/fresh/x")
    assert "<form" not in again.text  # the provider's session answered: no password
    assert browser.userinfo().json()["auth_time"] is None
    assert browser.auth("/fresh/x").status_code == 401


def test_the_providers_auth_time_is_the_login_time(
    oidc_site: OidcSite, gateway: GatewayProcess, browser: Browser
) -> None:
    hour_ago = int(time.time()) - 3600
    oidc_site.provider.tamper_next_id_token("claims", claims={"auth_time": hour_ago})
    browser.login("alice")
    assert browser.userinfo().json()["auth_time"] == hour_ago
    assert browser.auth("/console/").status_code == 202
    assert browser.auth("/fresh/x").status_code == 401  # an hour old: step-up


def test_logout_ends_the_provider_session_too(gateway: GatewayProcess, browser: Browser) -> None:
    browser.login("alice")
    page = browser.http.get(browser.base + "/.sso/logout", timeout=10)
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    resp = browser.http.post(
        browser.base + "/.sso/logout",
        data={"csrf_token": token},
        allow_redirects=False,
        timeout=10,
    )
    assert resp.status_code == 303
    end = resp.headers["Location"]
    assert end.startswith(browser.site.provider.issuer + "/session/end")
    query = parse_qs(urlsplit(end).query)
    assert query["post_logout_redirect_uri"] == [browser.base + "/.sso/logout"]
    assert "id_token_hint" in query
    assert browser.userinfo().status_code == 401
    # the provider's logout page, confirmed, comes back to the gateway
    done = browser.provider_logout(end)
    assert done.url.startswith(browser.base + "/.sso/logout")
    # and a new login needs the password again
    assert "<form" in browser.start_login("/").text


def test_backchannel_logout_revokes_a_live_session(
    gateway: GatewayProcess, browser: Browser, oidc_site: OidcSite
) -> None:
    browser.login("adam")
    assert browser.auth("/admin/").status_code == 202
    # the person signs out at the provider (from any application)
    browser.provider_logout()
    assert _wait_for(lambda: browser.auth("/admin/").status_code == 401)
    line = gateway.audit_events("backchannel_logout")[-1]
    assert line["by"] == "sid" and len(line["sessions"]) == 1


def test_signing_key_rollover_is_followed(oidc_site: OidcSite) -> None:
    gw = oidc_site.gateway("gw-rollover", slot=1)
    gw.start()
    browser = Browser(oidc_site, slot=1)
    try:
        browser.login("alice")
        assert browser.userinfo().json()["tier"] == "operator"
        oidc_site.provider.restart_with_new_key("op-key-2")
        other = Browser(oidc_site, slot=1)
        other.login("adam")
        assert other.userinfo().json()["tier"] == "admin"
    finally:
        gw.stop()
        # another new key: gateways that cached op-key-1/2 fetch it on first sight
        oidc_site.provider.restart_with_new_key("op-key-3")


def test_multi_tenant_issuer_with_allow_list(oidc_site: OidcSite) -> None:
    gw = oidc_site.gateway(
        "gw-common",
        slot=2,
        issuer=oidc_site.provider.common_issuer,
        discovery_url=oidc_site.provider.common_discovery,
        tenants=[TENANT],
    )
    gw.start()
    browser = Browser(oidc_site, slot=2)
    try:
        browser.login("alice")
        assert browser.userinfo().json()["tier"] == "operator"
        other = Browser(oidc_site, slot=2)
        final = other.login("eve")  # a token from another tenant
        assert final.status_code == 401
        assert other.userinfo().status_code == 401
        assert gw.audit_events("login_failed")[-1]["reason"] == "tenant-not-allowed"
    finally:
        gw.stop()


def test_login_page_offers_the_provider(gateway: GatewayProcess, browser: Browser) -> None:
    page = browser.http.get(browser.base + "/.sso/login", params={"rd": "/console/"}, timeout=10)
    assert page.status_code == 200
    assert "Sign in with Microsoft Entra ID" in page.text
    assert 'name="password"' not in page.text  # no local users on an OIDC site
    assert "/.sso/start?provider=oidc&amp;rd=%2Fconsole%2F" in page.text


def test_unconfigured_provider_is_refused(gateway: GatewayProcess, browser: Browser) -> None:
    resp = browser.http.get(browser.base + "/.sso/start", params={"provider": "saml"}, timeout=10)
    assert resp.status_code == 400


def test_callback_when_provider_is_down(oidc_site: OidcSite) -> None:
    """Discovery unreachable: the login fails closed with 503 and an audit line."""
    gw = oidc_site.gateway("gw-down", slot=2, discovery_url="http://127.0.0.1:9/nothing")
    gw.start()
    try:
        browser = Browser(oidc_site, slot=2)
        resp = browser.start_login("/")
        assert resp.status_code == 503
        assert gw.audit_events("idp_unavailable")[-1]["detail"].startswith("discovery")
    finally:
        gw.stop()


def test_certificate_credentials_and_userinfo(oidc_site: OidcSite) -> None:
    """private_key_jwt (Entra's certificate credentials) for the code exchange and
    the Graph token, and the userinfo endpoint read after the ID token."""
    gw = oidc_site.gateway(
        "gw-certificate",
        slot=3,
        client_id=JWT_CLIENT,
        client_secret=None,
        client_auth="private_key_jwt",
        private_key_file=str(oidc_site.client_key),
        certificate_file=str(oidc_site.client_certificate),
        userinfo=True,
    )
    gw.start()
    try:
        browser = Browser(oidc_site, slot=3)
        browser.login("olga")  # overage: Graph through a private_key_jwt app token too
        info = browser.userinfo().json()
        assert info["tier"] == "admin"
        assert gw.audit_events("login")[-1]["groups_from"] == "graph"
    finally:
        gw.stop()


def test_store_down_during_the_callback_fails_closed(
    oidc_site: OidcSite, redis_server: RedisServer, redis_url: str
) -> None:
    """Redis (login state and sessions) stops between the start and the callback:
    503 with an audit line, no session; once it is back, logins work again."""
    gw = oidc_site.gateway("gw-redis", slot=4)
    gw.config["session"] = {"store": "redis", "redis_url": redis_url, "redis_socket_timeout": 0.5}
    gw.start()
    try:
        browser = Browser(oidc_site, slot=4)
        form = browser.start_login("/")
        redis_server.stop()
        try:
            final = browser.submit_login(form, "alice", "alice-pw-4711")
            assert final.status_code == 503
            assert gw.audit_events("store_unavailable")[-1]["where"] == "/.sso/oidc/callback"
        finally:
            redis_server.start()
        # the state went with the old Redis: the login starts over and succeeds
        browser.login("alice")
        assert browser.userinfo().json()["tier"] == "operator"
    finally:
        gw.stop()
