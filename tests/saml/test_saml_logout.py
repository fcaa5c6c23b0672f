"""SAML Single Logout both ways (HTTP-Redirect binding, signed), against the real
IdP, plus hostile logout messages."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests

from tests.flows.conftest import Gateway
from tests.saml import forge
from tests.saml.conftest import saml_login, start_login
from tests.saml_idp import SamlIdp


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def test_sp_initiated_logout(sgw: Gateway, saml_idp: SamlIdp) -> None:
    browser = saml_idp.browser()
    assert saml_login(sgw, saml_idp, "alice", browser=browser).status_code == 303
    assert sgw.session_cookie()
    r = sgw.logout(rd="https://intercom.test/bye")
    assert r.status_code == 303
    to_idp = r.headers["Location"]
    assert to_idp.startswith(saml_idp.url + "/slo/redirect?")
    query = dict(parse_qsl(urlsplit(to_idp).query))
    assert query["SigAlg"] == "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    assert "Signature" in query
    # the local session is gone before the browser even reaches the IdP
    assert sgw.services.sessions.list("alice@corp.test") == []
    answer = browser.get(to_idp, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    seen = saml_idp.last_logout()
    assert seen["signed"] is True
    assert seen["name_id"] == "alice@corp.test"
    assert seen["session_index"]
    back = answer.headers["Location"]
    assert back.startswith("https://localhost/.sso/saml/slo?SAMLResponse=")
    done = sgw.get(_path(back))
    assert done.status_code == 303
    assert done.headers["Location"] == "https://intercom.test/bye"
    assert sgw.events("saml_logout_completed")
    assert [e["user"] for e in sgw.events("logout")] == ["alice@corp.test"]
    # the IdP session ended too: the next login asks for the user again
    again = browser.get(start_login(sgw), timeout=10)
    assert 'action="/login"' in again.text


def test_logout_response_is_used_once(sgw: Gateway, saml_idp: SamlIdp) -> None:
    browser = saml_idp.browser()
    saml_login(sgw, saml_idp, "alice", browser=browser)
    to_idp = sgw.logout().headers["Location"]
    back = browser.get(to_idp, allow_redirects=False, timeout=10).headers["Location"]
    assert sgw.get(_path(back)).status_code == 200  # the logged-out page
    replay = sgw.get(_path(back))
    assert replay.status_code == 400
    assert sgw.events("saml_logout_refused")[-1]["reason"].startswith("LogoutResponse for no")


def test_tampered_logout_response_refused(sgw: Gateway, saml_idp: SamlIdp) -> None:
    browser = saml_idp.browser()
    saml_login(sgw, saml_idp, "alice", browser=browser)
    to_idp = sgw.logout().headers["Location"]
    back = browser.get(to_idp, allow_redirects=False, timeout=10).headers["Location"]
    query = dict(parse_qsl(urlsplit(back).query))
    query["Signature"] = query["Signature"][:-8] + "AAAAAAA="
    r = sgw.get("/.sso/saml/slo?" + urlencode(query))
    assert r.status_code == 400
    assert "signature" in sgw.events("saml_logout_refused")[-1]["reason"].lower()


def test_idp_initiated_logout_revokes_the_sessions(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway()
    assert saml_login(gw, saml_idp, "alice").status_code == 303
    alice_cookie = gw.session_cookie()
    # bob logs in from another browser (another test client of the same app)
    other = gw.app.test_client()
    other_gw = Gateway(gw.app, other, gw.clock, gw.audit_stream, gw.root)
    assert saml_login(other_gw, saml_idp, "bob").status_code == 303
    url = saml_idp.logout_request_url("alice")
    assert url.startswith("https://localhost/.sso/saml/slo?SAMLRequest=")
    r = gw.get(_path(url))
    assert r.status_code == 302, gw.events("saml_logout_refused")
    to_idp = r.headers["Location"]
    assert to_idp.startswith(saml_idp.url + "/slo/redirect?SAMLResponse=")
    query = dict(parse_qsl(urlsplit(to_idp).query))
    assert "Signature" in query
    assert requests.get(to_idp, timeout=10).status_code == 200
    assert saml_idp.last_logout()["response_status"].endswith(":Success")
    assert gw.services.sessions.list("alice@corp.test") == []
    assert len(gw.services.sessions.list("bob@corp.test")) == 1
    logout = gw.events("logout")[-1]
    assert logout["via"] == "idp" and logout["user"] == "alice@corp.test"
    assert len(logout["sessions"]) == 1
    assert alice_cookie is not None
    gw.client.set_cookie(gw.services.cookie_name, alice_cookie, domain="localhost")
    auth = gw.auth("https://intercom.test/console")
    assert auth.status_code == 401


def test_unsigned_logout_request_refused(sgw: Gateway, saml_idp: SamlIdp) -> None:
    saml_login(sgw, saml_idp, "alice")
    url = saml_idp.logout_request_url("alice")
    query = dict(parse_qsl(urlsplit(url).query))
    del query["Signature"]
    r = sgw.get("/.sso/saml/slo?" + urlencode(query))
    assert r.status_code == 400
    assert sgw.events("saml_logout_refused")[-1]["reason"] == "logout message is not signed"
    assert len(sgw.services.sessions.list("alice@corp.test")) == 1


def test_logout_request_signed_by_another_key_refused(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway()
    saml_login(gw, saml_idp, "alice")
    saml_idp.configure(signing="b")  # the gateway trusts key a only
    url = saml_idp.logout_request_url("alice")
    r = gw.get(_path(url))
    assert r.status_code == 400
    assert "signature" in gw.events("saml_logout_refused")[-1]["reason"].lower()
    assert len(gw.services.sessions.list("alice@corp.test")) == 1


def test_sha1_logout_request_refused(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway()
    saml_login(gw, saml_idp, "alice")
    saml_idp.configure(sha1=True)
    r = gw.get(_path(saml_idp.logout_request_url("alice")))
    assert r.status_code == 400
    assert "sha-1" in gw.events("saml_logout_refused")[-1]["reason"].lower()
    assert len(gw.services.sessions.list("alice@corp.test")) == 1


def test_slo_without_a_message(sgw: Gateway) -> None:
    r = sgw.get("/.sso/saml/slo")
    assert r.status_code == 400
    assert sgw.events("saml_logout_refused")


def test_logout_request_with_a_dtd_refused(sgw: Gateway, saml_idp: SamlIdp) -> None:
    """Signed by the IdP's own key (an unsigned one is refused on its signature
    before it is even inflated), the DTD is still refused by the screen."""
    saml_login(sgw, saml_idp, "alice")
    evil = b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    query = forge.redirect_query("SAMLRequest", evil, saml_idp.key_files("a")[0])
    r = sgw.get("/.sso/saml/slo?" + query)
    assert r.status_code == 400
    assert "DTD" in sgw.events("saml_logout_refused")[-1]["reason"]
    assert len(sgw.services.sessions.list("alice@corp.test")) == 1
