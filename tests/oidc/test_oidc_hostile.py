"""Hostile OpenID Connect input: forged and altered ID tokens, replayed or
mismatched state, codes of another client, bad logout tokens.  Each one must fail
closed (no session) with an audit line naming the reason.

Altered ID tokens come out of the real provider's token endpoint (its test
wrapper rewrites the next ID token: an attacker on the token channel, or a
misbehaving IdP); logout tokens are signed here with the provider's own key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.integration.conftest import GatewayProcess
from tests.oidc.conftest import Browser, OidcSite
from tests.oidc_peer import GATEWAY_CLIENT, OTHER_CLIENT, OTHER_TENANT

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"


def _last_failure(gw: GatewayProcess, event: str = "login_failed") -> str:
    lines = gw.audit_events(event)
    assert lines, f"no {event} audit line"
    reason: str = lines[-1]["reason"]
    return reason


def _refused(gw: GatewayProcess, browser: Browser, final: requests.Response, reason: str) -> None:
    assert final.status_code in (400, 401), final.status_code
    assert browser.userinfo().status_code == 401  # no session was made
    assert _last_failure(gw) == reason


@pytest.mark.parametrize(
    ("mode", "options", "reason"),
    [
        ("alg-none", {}, "id-token-alg-refused:none"),
        ("hs256-pubkey", {}, "id-token-alg-refused:HS256"),
        ("other-key", {}, "id-token-signature"),
        (
            "claims",
            {"claims": {"iss": "https://login.microsoftonline.com/evil/v2.0"}},
            "id-token-issuer",
        ),
        ("claims", {"claims": {"aud": "some-other-app"}}, "id-token-audience"),
        ("claims", {"claims": {"aud": [GATEWAY_CLIENT, "x"], "azp": "x"}}, "id-token-azp"),
        ("claims", {"claims": {"azp": OTHER_CLIENT}}, "id-token-azp"),
        ("claims", {"claims": {"tid": OTHER_TENANT}}, "tenant-not-allowed"),
        ("claims", {"remove": ["tid"]}, "tenant-not-allowed"),
        ("claims", {"claims": {"nonce": "a-nonce-from-another-login"}}, "id-token-nonce"),
        ("claims", {"remove": ["nonce"]}, "id-token-nonce"),
        ("claims", {"claims": {"iat": 1_000_000_000, "exp": 1_000_000_600}}, "id-token-expired"),
        ("claims", {"claims": {"nbf": 4_000_000_000}}, "id-token-not-yet-valid"),
        ("claims", {"claims": {"iat": 4_000_000_000}}, "id-token-issued-in-future"),
        ("claims", {"remove": ["oid"]}, "claim-missing:oid"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_altered_id_tokens_are_refused(
    oidc_site: OidcSite,
    gateway: GatewayProcess,
    browser: Browser,
    mode: str,
    options: dict[str, Any],
    reason: str,
) -> None:
    oidc_site.provider.tamper_next_id_token(mode, **options)
    final = browser.login("adam")
    _refused(gateway, browser, final, reason)


def _callback_url(browser: Browser, login: str) -> str:
    """Log in up to the provider's redirect back to the gateway, and stop there."""
    page = browser.start_login("/")
    action = page.text.split('action="')[1].split('"')[0]
    resp = browser.http.post(
        urlsplit(page.url)._replace(path=action, query="").geturl(),
        data={"login": login, "password": f"{login}-pw-4711"},
        allow_redirects=False,
        timeout=10,
    )
    for _ in range(5):
        location = resp.headers["Location"]
        if "/.sso/oidc/callback" in location:
            return str(location)
        resp = browser.http.get(location, allow_redirects=False, timeout=10)
    raise AssertionError("the provider never redirected to the callback")


def test_replayed_callback_is_refused(gateway: GatewayProcess, browser: Browser) -> None:
    url = _callback_url(browser, "alice")
    assert browser.http.get(url, allow_redirects=False, timeout=10).status_code == 303
    replay = Browser(browser.site)
    replay.http.cookies.update(browser.http.cookies)  # even with the same cookies
    replay.http.cookies.pop("sso_gw", None)
    assert replay.http.get(url, timeout=10).status_code == 400
    assert _last_failure(gateway) == "state-unknown-or-replayed"
    assert replay.userinfo().status_code == 401


def test_callback_in_another_browser_is_refused(gateway: GatewayProcess, browser: Browser) -> None:
    """Login CSRF: an attacker's own code+state planted in the victim's browser."""
    url = _callback_url(browser, "alice")
    victim = Browser(browser.site)
    victim.http.get(browser.base + "/.sso/start", params={"rd": "/"}, timeout=10)  # own handle
    assert victim.http.get(url, timeout=10).status_code == 400
    assert _last_failure(gateway) == "state-other-browser"
    assert victim.userinfo().status_code == 401


@pytest.mark.parametrize("state", ["", "x" * 300, "made-up-state"])
def test_unknown_state_is_refused(gateway: GatewayProcess, browser: Browser, state: str) -> None:
    resp = browser.http.get(
        browser.base + "/.sso/oidc/callback", params={"code": "abc", "state": state}, timeout=10
    )
    assert resp.status_code == 400
    assert _last_failure(gateway) in ("state-missing", "state-unknown-or-replayed")


def test_code_of_another_client_is_refused(
    oidc_site: OidcSite, gateway: GatewayProcess, browser: Browser
) -> None:
    """A code the provider issued to another application, injected into our callback
    with a state the gateway did issue: the code exchange must fail."""
    ours = _callback_url(browser, "alice")
    state = parse_qs(urlsplit(ours).query)["state"][0]
    # the attacker's login at the same provider for another client
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    other = requests.Session()
    query = {
        "client_id": OTHER_CLIENT,
        "response_type": "code",
        "scope": "openid",
        "redirect_uri": browser.base + "/.sso/oidc/callback",
        "state": "s",
        "nonce": "n",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    page = other.get(oidc_site.provider.issuer + "/auth?" + urlencode(query), timeout=10)
    action = page.text.split('action="')[1].split('"')[0]
    resp = other.post(
        urlsplit(page.url)._replace(path=action, query="").geturl(),
        data={"login": "eve", "password": "eve-pw-4711"},
        timeout=10,
        allow_redirects=True,
    )
    code = parse_qs(urlsplit(resp.url).query)["code"][0]
    final = browser.http.get(
        browser.base + "/.sso/oidc/callback", params={"code": code, "state": state}, timeout=10
    )
    _refused(gateway, browser, final, "token-error:invalid_grant")


def test_provider_error_is_audited(gateway: GatewayProcess, browser: Browser) -> None:
    url = _callback_url(browser, "alice")
    state = parse_qs(urlsplit(url).query)["state"][0]
    final = browser.http.get(
        browser.base + "/.sso/oidc/callback",
        params={"error": "access_denied", "state": state},
        timeout=10,
    )
    _refused(gateway, browser, final, "idp-error:access_denied")


def test_issuer_parameter_mix_up_is_refused(gateway: GatewayProcess, browser: Browser) -> None:
    url = _callback_url(browser, "alice")
    tampered = url.replace("iss=", "iss=https%3A%2F%2Fattacker.example%2F&x=")
    final = browser.http.get(tampered, timeout=10)
    _refused(gateway, browser, final, "issuer-parameter-mismatch")


# -- back-channel logout -----------------------------------------------------------------


def _logout_token(site: OidcSite, key: RSAKey | None = None, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": site.provider.issuer,
        "aud": GATEWAY_CLIENT,
        "iat": now,
        "exp": now + 120,
        "jti": secrets.token_urlsafe(12),
        "sub": "someone",
        "sid": "some-sid",
        "events": {BACKCHANNEL_EVENT: {}},
    }
    body.update(claims)
    for name in [k for k, v in claims.items() if v is None]:
        del body[name]
    signing = key or site.provider.key
    return jwt.encode({"alg": "RS256", "kid": signing.kid, "typ": "logout+jwt"}, body, signing)


def _post_logout(gw: GatewayProcess, browser: Browser, token: str) -> requests.Response:
    return requests.post(
        browser.base + "/.sso/oidc/backchannel-logout", data={"logout_token": token}, timeout=10
    )


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"events": None}, "logout-token-events"),
        ({"events": {"other": {}}}, "logout-token-events"),
        ({"nonce": "n"}, "logout-token-nonce"),
        ({"aud": "other-app"}, "logout-token-audience"),
        ({"iss": "https://evil.example/v2.0"}, "logout-token-issuer"),
        ({"sid": None, "sub": None}, "logout-token-no-sid-or-sub"),
        ({"jti": None}, "logout-token-no-jti"),
        ({"exp": 1_000_000_000}, "logout-token-expired"),
        ({"iat": int(time.time()) - 7200, "exp": None}, "logout-token-too-old"),
    ],
)
def test_bad_logout_tokens_are_refused(
    oidc_site: OidcSite,
    gateway: GatewayProcess,
    browser: Browser,
    claims: dict[str, Any],
    reason: str,
) -> None:
    resp = _post_logout(gateway, browser, _logout_token(oidc_site, **claims))
    assert resp.status_code == 400
    assert _last_failure(gateway, "backchannel_logout_refused") == reason


def test_logout_token_signed_by_another_key_is_refused(
    oidc_site: OidcSite, gateway: GatewayProcess, browser: Browser
) -> None:
    browser.login("alice")
    other = RSAKey.generate_key(2048, parameters={"kid": str(oidc_site.provider.key.kid)})
    info = browser.userinfo().json()
    token = _logout_token(oidc_site, key=other, sub=info["user"], sid=None)
    assert _post_logout(gateway, browser, token).status_code == 400
    assert _last_failure(gateway, "backchannel_logout_refused") == "logout-token-signature"
    assert browser.userinfo().status_code == 200  # the session lives on


def test_replayed_logout_token_is_refused(
    oidc_site: OidcSite, gateway: GatewayProcess, browser: Browser
) -> None:
    token = _logout_token(oidc_site)
    assert _post_logout(gateway, browser, token).status_code == 200  # nothing to end: fine
    assert _post_logout(gateway, browser, token).status_code == 400
    assert _last_failure(gateway, "backchannel_logout_refused") == "logout-token-replayed"


def test_logout_token_for_another_sid_leaves_sessions_alone(
    oidc_site: OidcSite, gateway: GatewayProcess, browser: Browser
) -> None:
    browser.login("alice")
    token = _logout_token(oidc_site, sid="not-this-session")
    assert _post_logout(gateway, browser, token).status_code == 200
    assert browser.userinfo().status_code == 200


def test_logout_token_by_sub_ends_every_session_of_that_person(
    oidc_site: OidcSite, gateway: GatewayProcess, browser: Browser
) -> None:
    browser.login("carl")
    second = Browser(oidc_site)
    second.login("carl")
    assert second.userinfo().status_code == 200
    token = _logout_token(oidc_site, sub="carl", sid=None)  # the provider's sub
    assert _post_logout(gateway, browser, token).status_code == 200
    assert browser.userinfo().status_code == 401
    assert second.userinfo().status_code == 401
    line = gateway.audit_events("backchannel_logout")[-1]
    assert line["by"] == "sub" and len(line["sessions"]) == 2


def test_garbage_logout_requests(gateway: GatewayProcess, browser: Browser) -> None:
    for data in ({}, {"logout_token": "not.a.jwt"}, {"logout_token": "x" * 20000}):
        resp = requests.post(browser.base + "/.sso/oidc/backchannel-logout", data=data, timeout=10)
        assert resp.status_code == 400, data
    # a JSON body is not a form post
    resp = requests.post(
        browser.base + "/.sso/oidc/backchannel-logout",
        data=json.dumps({"logout_token": "x"}),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == 400
