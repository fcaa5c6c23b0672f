"""Login through /.sso/login with the local users provider."""

from __future__ import annotations

import re

from tests.flows.conftest import PASSWORD, Gateway, GatewayFactory


def _body_without_token(html: str) -> str:
    return re.sub(r'(value|nonce)="[^"]*"', r'\1=""', html)


def test_login_form_is_plain_accessible_html(gw: Gateway) -> None:
    page = gw.get("/.sso/login")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Flow Test Site" in html
    assert '<label for="username">' in html and 'id="username"' in html
    assert '<label for="password">' in html and 'id="password"' in html
    assert 'name="csrf_token"' in html
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"


def test_successful_login_sets_a_hardened_cookie_and_redirects(gw: Gateway) -> None:
    resp = gw.login("alice", rd="/doors/")
    assert resp.status_code == 303
    assert resp.headers["Location"] == "/doors/"
    cookie = next(v for k, v in resp.headers.items() if k == "Set-Cookie" and "__Host-" in v)
    assert cookie.startswith("__Host-sso_gw=")
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Lax" in cookie
    assert "Path=/" in cookie and "Domain" not in cookie
    login = gw.events("login")[-1]
    assert login["user"] == "alice" and login["tier"] == "operator"
    assert "password" not in str(login).lower().replace("password_", "")


def test_login_without_rd_lands_on_the_identity_page(gw: Gateway) -> None:
    resp = gw.login("alice")
    assert resp.headers["Location"] == "/.sso/userinfo"
    info = gw.get("/.sso/userinfo", headers={"Accept": "application/json"}).get_json()
    assert info["user"] == "alice"
    assert info["tier"] == "operator"
    assert info["groups"] == ["Intercom-Operators"]
    assert 0 < info["idle_remaining"] <= 900
    html = gw.get("/.sso/userinfo", headers={"Accept": "text/html"}).get_data(as_text=True)
    assert 'id="tier">operator' in html and "Intercom-Operators" in html


def test_unknown_user_and_wrong_password_get_the_same_answer(gw: Gateway) -> None:
    wrong = gw.login("alice", "not the password")
    unknown = gw.login("mallory", "not the password")
    disabled = gw.login("eve", PASSWORD)
    assert wrong.status_code == unknown.status_code == disabled.status_code == 401
    strip = _body_without_token
    a = strip(wrong.get_data(as_text=True)).replace("alice", "X")
    b = strip(unknown.get_data(as_text=True)).replace("mallory", "X")
    c = strip(disabled.get_data(as_text=True)).replace("eve", "X")
    assert a == b == c
    reasons = [e["reason"] for e in gw.events("login_failed")]
    assert reasons == ["bad-password", "unknown-user", "disabled"]
    assert gw.session_cookie() is None


def test_empty_password_is_refused(gw: Gateway) -> None:
    resp = gw.login("alice", "")
    assert resp.status_code == 401
    assert gw.events("login_failed")[-1]["reason"] == "empty-password"


def test_missing_or_forged_csrf_token_is_refused(gw: Gateway) -> None:
    gw.csrf()
    for token in ("", "forged", gw.csrf() + "x"):
        resp = gw.post(
            "/.sso/login",
            data={"username": "alice", "password": PASSWORD, "csrf_token": token},
        )
        assert resp.status_code == 400
    assert gw.session_cookie() is None
    assert all(e["reason"] == "csrf" for e in gw.events("login_failed"))


def test_csrf_token_from_another_browser_is_refused(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    token = gw.csrf()
    other = gw.app.test_client()
    resp = other.post(
        "/.sso/login",
        data={"username": "alice", "password": PASSWORD, "csrf_token": token},
        base_url="https://localhost",
    )
    assert resp.status_code == 400


def test_throttling_per_user_then_per_client(gw: Gateway) -> None:
    for _ in range(3):
        assert gw.login("alice", "wrong-password").status_code == 401
    # locked: even the right password is refused, and the password is not checked
    resp = gw.login("alice", PASSWORD)
    assert resp.status_code == 429
    assert gw.events("login_failed")[-1]["reason"] == "throttled-user"
    # another user from the same address still works until the client limit
    assert gw.login("zoe", PASSWORD).status_code == 303
    for _ in range(3):
        gw.login("mallory", "wrong-password")
    resp = gw.login("bob", PASSWORD)
    assert resp.status_code == 429
    assert gw.events("login_failed")[-1]["reason"] == "throttled-client"


def test_unknown_names_are_throttled_too(gw: Gateway) -> None:
    for _ in range(3):
        gw.login("ghost", "wrong-password")
    assert gw.login("ghost", "wrong-password").status_code == 429


def test_login_always_issues_a_new_session_id(gw: Gateway) -> None:
    gw.login("alice")
    first = gw.session_cookie()
    first_key = gw.services.sessions.key_from_cookie(first)
    gw.login("alice")
    second = gw.session_cookie()
    assert first and second and first != second
    assert first_key is not None
    assert gw.services.store.get_session(first_key) is None  # old one deleted


def test_logout_deletes_server_state(gw: Gateway) -> None:
    gw.login("alice")
    cookie = gw.session_cookie()
    assert cookie is not None
    key = gw.services.sessions.key_from_cookie(cookie)
    assert key is not None
    resp = gw.logout()
    assert resp.status_code == 200
    assert "signed out" in resp.get_data(as_text=True)
    assert gw.services.store.get_session(key) is None
    assert gw.events("logout")[-1]["user"] == "alice"
    # replaying the old cookie does not work
    gw.client.set_cookie(gw.services.cookie_name, cookie, domain="localhost")
    assert gw.auth("https://intercom.test/doors/").status_code == 401


def test_logout_redirect_follows_the_allow_list(gw: Gateway) -> None:
    gw.login("alice")
    assert gw.logout(rd="https://intercom.test/").headers["Location"] == "https://intercom.test/"
    gw.login("alice")
    resp = gw.logout(rd="https://evil.example/")
    assert resp.status_code == 200  # session ended, but no redirect off-site
    assert "Location" not in resp.headers
    assert gw.events("redirect_refused")


def test_logout_needs_the_confirmation_form(gw: Gateway) -> None:
    gw.login("alice")
    page = gw.get("/.sso/logout")  # another site sending the browser here...
    assert page.status_code == 200 and "Sign out" in page.get_data(as_text=True)
    assert gw.auth("https://intercom.test/doors/").status_code == 202  # ...ends nothing
    for token in ("", "forged"):  # a cross-site POST has no valid token
        resp = gw.post("/.sso/logout", data={"csrf_token": token})
        assert resp.status_code == 400
    assert gw.auth("https://intercom.test/doors/").status_code == 202
    assert gw.events("logout_refused")
    assert gw.logout().status_code == 200
    assert gw.auth("https://intercom.test/doors/").status_code == 401


def test_identity_page_signs_out_with_its_button(gw: Gateway) -> None:
    gw.login("alice")
    html = gw.get("/.sso/userinfo", headers={"Accept": "text/html"}).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    assert gw.post("/.sso/logout", data={"csrf_token": token.group(1)}).status_code == 200
    assert gw.auth("https://intercom.test/doors/").status_code == 401


def test_existing_session_skips_the_form_without_looping(gw: Gateway) -> None:
    gw.login("alice")
    resp = gw.get("/.sso/login?rd=https://intercom.test/doors/")
    assert resp.status_code == 303
    assert resp.headers["Location"] == "https://intercom.test/doors/"


def test_step_up_shows_the_form_instead_of_a_redirect_loop(gw: Gateway) -> None:
    gw.login("alice")
    assert gw.auth("https://intercom.test/doors/unlock").status_code == 202
    gw.clock.advance(301)
    resp = gw.auth("https://intercom.test/doors/unlock")
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "fresh_login_required"
    form = gw.get("/.sso/login?rd=https://intercom.test/doors/unlock")
    assert form.status_code == 200  # the form, not a redirect back to the app
    gw.login("alice", rd="https://intercom.test/doors/unlock")
    assert gw.auth("https://intercom.test/doors/unlock").status_code == 202


def test_person_without_any_tier_can_log_in_but_reaches_nothing(gw: Gateway) -> None:
    assert gw.login("nobody").status_code == 303
    info = gw.get("/.sso/userinfo", headers={"Accept": "application/json"}).get_json()
    assert info["tier"] is None
    assert gw.auth("https://intercom.test/").status_code == 403


def test_expired_contractor_gets_no_tier(gw: Gateway) -> None:
    gw.login("dave")
    info = gw.get("/.sso/userinfo", headers={"Accept": "application/json"}).get_json()
    assert info["tier"] is None
    assert gw.auth("https://intercom.test/").status_code == 403
    assert "expired" in " ".join(gw.events("denied")[-1]["reasons"])


def test_users_file_changes_apply_without_restart(gw: Gateway) -> None:
    from gateway.providers.local import set_disabled

    assert gw.login("alice").status_code == 303
    set_disabled(gw.root / "users.yaml", "alice", True)
    assert gw.login("alice").status_code == 401
    assert gw.events("login_failed")[-1]["reason"] == "disabled"
