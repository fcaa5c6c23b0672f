"""SAML login and Single Logout through the real gateway under gunicorn (gevent
workers) against the real pysaml2 IdP, over loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import GatewayProcess, form_fields, http_client
from tests.saml_idp import SamlIdp, make_keypair, sign_in_at_idp

POLICIES = {
    "00-tiers.yaml": """\
timezone: UTC
tiers:
  admin:
    rank: 50
    groups: [Intercom-Admins]
  operator:
    rank: 30
    groups: [Intercom-Operators]
""",
    "10-routes.yaml": """\
routes:
  - name: intercom-console
    hosts: [127.0.0.1, localhost]
    path: /
    allow: [operator, admin]
""",
}


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SamlIdp]:
    server = SamlIdp(tmp_path_factory.mktemp("saml-idp-gunicorn"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def saml_gateway(request: pytest.FixtureRequest, idp: SamlIdp, tmp_path: Path) -> GatewayProcess:
    key, cert = make_keypair(tmp_path, "sp", "gateway-sp")
    gateway = GatewayProcess(
        tmp_path / "gateway",
        policies=POLICIES,
        settings={
            "providers": {
                "default": "saml",
                "saml": {
                    "sp_cert_file": str(cert),
                    "sp_key_file": str(key),
                    "idp_metadata_url": idp.url + "/metadata",
                    "allow_http_metadata_url": True,
                },
            }
        },
    )
    gateway.config["public_url"] = gateway.url
    request.addfinalizer(gateway.stop)
    gateway.start()
    idp.configure()
    with http_client() as client:
        idp.register_sp(client.get(gateway.url + "/.sso/saml/metadata", timeout=10).text)
    return gateway


def test_saml_login_and_single_logout_under_gunicorn(
    saml_gateway: GatewayProcess, idp: SamlIdp
) -> None:
    gw = saml_gateway.url
    with http_client() as browser:
        start = browser.get(
            gw + "/.sso/start", params={"rd": "/.sso/userinfo"}, allow_redirects=False, timeout=10
        )
        assert start.status_code == 302, start.text
        assert start.headers["Location"].startswith(idp.url + "/sso/redirect?SAMLRequest=")
        fields = sign_in_at_idp(browser, start.headers["Location"], "alice")
        assert fields["action"] == gw + "/.sso/saml/acs"
        posted = browser.post(
            fields["action"],
            data={"SAMLResponse": fields["SAMLResponse"], "RelayState": fields["RelayState"]},
            allow_redirects=False,
            timeout=10,
        )
        assert posted.status_code == 303, saml_gateway.audit_events("login_failed")
        assert posted.headers["Location"] == "/.sso/userinfo"
        info = browser.get(
            gw + "/.sso/userinfo", headers={"Accept": "application/json"}, timeout=10
        ).json()
        assert info["user"] == "alice@corp.test"
        assert info["tier"] == "operator"

        # replaying the same POST is refused
        again = browser.post(
            fields["action"],
            data={"SAMLResponse": fields["SAMLResponse"], "RelayState": fields["RelayState"]},
            allow_redirects=False,
            timeout=10,
        )
        assert again.status_code == 401

        # sign out: the local session ends, the IdP is told, and answers
        page = browser.get(gw + "/.sso/logout", timeout=10)
        form = form_fields(page.text)
        out = browser.post(gw + "/.sso/logout", data=form, allow_redirects=False, timeout=10)
        assert out.status_code == 303
        assert out.headers["Location"].startswith(idp.url + "/slo/redirect?SAMLRequest=")
        finished = browser.get(out.headers["Location"], allow_redirects=True, timeout=10)
        assert finished.status_code == 200
        assert finished.url.startswith(gw + "/.sso/saml/slo?SAMLResponse=")
        assert "signed out" in finished.text.lower()
        assert browser.get(
            gw + "/.sso/userinfo", allow_redirects=False, timeout=10
        ).status_code in (
            302,
            303,
            401,
        )

    assert [e["user"] for e in saml_gateway.audit_events("login")] == ["alice@corp.test"]
    assert [e["user"] for e in saml_gateway.audit_events("logout")] == ["alice@corp.test"]
    assert saml_gateway.audit_events("saml_logout_completed")
    assert saml_gateway.audit_events("login_failed")[-1]["reason"].startswith("InResponseTo")
    assert idp.last_logout()["name_id"] == "alice@corp.test"


def test_idp_initiated_logout_under_gunicorn(saml_gateway: GatewayProcess, idp: SamlIdp) -> None:
    gw = saml_gateway.url
    with http_client() as browser:
        start = browser.get(gw + "/.sso/start", allow_redirects=False, timeout=10)
        fields = sign_in_at_idp(browser, start.headers["Location"], "bob")
        posted = browser.post(
            fields["action"],
            data={"SAMLResponse": fields["SAMLResponse"], "RelayState": fields["RelayState"]},
            allow_redirects=False,
            timeout=10,
        )
        assert posted.status_code == 303
        url = idp.logout_request_url("bob")
        assert url.startswith(gw + "/.sso/saml/slo?SAMLRequest=")
        answer = browser.get(url, allow_redirects=False, timeout=10)
        assert answer.status_code == 302
        assert requests.get(answer.headers["Location"], timeout=10).status_code == 200
        info = browser.get(
            gw + "/.sso/userinfo", headers={"Accept": "application/json"}, timeout=10
        )
        assert info.status_code == 401
    logout = saml_gateway.audit_events("logout")[-1]
    assert logout["user"] == "bob@corp.test" and logout["via"] == "idp"


@pytest.mark.browser
def test_saml_sign_in_and_out_in_chromium_with_secure_cookies(
    request: pytest.FixtureRequest, idp: SamlIdp, tmp_path: Path
) -> None:
    """A real browser, the production cookie settings (``__Host-`` names, Secure,
    the login-state cookie SameSite=None) and a cross-site IdP: the gateway on
    ``localhost`` (a secure context for Chromium even over HTTP), the IdP on
    ``127.0.0.1``, so the IdP's POST to the ACS is a cross-site request."""
    from playwright.sync_api import expect, sync_playwright

    from tests.integration.test_browser_login import CHROMIUM_ARGS
    from tests.peers import require_binary

    chromium = require_binary("chromium", "the browser test drives Debian's Chromium")
    key, cert = make_keypair(tmp_path, "sp", "gateway-sp")
    gateway = GatewayProcess(
        tmp_path / "gateway",
        policies=POLICIES,
        settings={
            "cookie": {"secure": True},
            "providers": {
                "default": "saml",
                "saml": {
                    "sp_cert_file": str(cert),
                    "sp_key_file": str(key),
                    "idp_metadata_url": idp.url + "/metadata",
                    "allow_http_metadata_url": True,
                },
            },
        },
    )
    base = f"http://localhost:{gateway.port}"
    gateway.config["public_url"] = base
    request.addfinalizer(gateway.stop)
    gateway.start()
    idp.configure()
    with http_client() as client:
        idp.register_sp(client.get(base + "/.sso/saml/metadata", timeout=10).text)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(base + "/.sso/start?rd=/.sso/userinfo")
            expect(page).to_have_title("Test ADFS sign-in")
            page.get_by_label("User").fill("alice")
            page.get_by_role("button", name="Sign in at ADFS").click()
            page.wait_for_url(base + "/.sso/userinfo")
            expect(page.locator("#user")).to_have_text("alice@corp.test")
            expect(page.locator("#tier")).to_have_text("operator")
            names = {c["name"]: c for c in page.context.cookies()}
            assert names["__Host-sso_gw"]["secure"] is True
            assert "__Host-sso_gw_saml" not in names  # used up at the ACS
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
            assert page.url.startswith(base + "/.sso/saml/slo?SAMLResponse=")
        finally:
            browser.close()
    assert [e["user"] for e in gateway.audit_events("login")] == ["alice@corp.test"]
    assert gateway.audit_events("saml_logout_completed")
