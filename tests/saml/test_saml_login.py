"""SAML login and logout end to end: the gateway app with real stores against the
real pysaml2 IdP emitting ADFS claims."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from tests.flows.conftest import Gateway
from tests.saml.conftest import (
    SP_ENTITY_ID,
    idp_form,
    post_acs,
    relay_state,
    saml_login,
    start_login,
)
from tests.saml_idp import ADMINS_SID, OPERATORS_SID, SamlIdp


def test_operator_logs_in_with_adfs_claims(sgw: Gateway, saml_idp: SamlIdp) -> None:
    r = saml_login(sgw, saml_idp, "alice", rd="https://intercom.test/console")
    assert r.status_code == 303, [e["reason"] for e in sgw.events("login_failed")]
    assert r.headers["Location"] == "https://intercom.test/console"
    login = sgw.events("login")[-1]
    assert login["user"] == "alice@corp.test"
    assert login["provider"] == "saml"
    assert login["tier"] == "operator"
    assert login["groups"] == ["Intercom-Operators"]
    assert saml_idp.last_request()["signed"] is True
    info = sgw.get("/.sso/userinfo", headers={"Accept": "application/json"}).get_json()
    assert info["user"] == "alice@corp.test"


def test_group_sids_and_mfa(sgw: Gateway, saml_idp: SamlIdp) -> None:
    r = saml_login(sgw, saml_idp, "bob")
    assert r.status_code == 303
    session = sgw.services.sessions.list("bob@corp.test")[0]
    assert session.identity.group_ids == (ADMINS_SID,)
    assert session.identity.groups == ("Intercom-Admins",)
    assert session.identity.mfa is True
    assert session.tier == "admin"
    assert OPERATORS_SID not in session.identity.group_ids


@pytest.mark.parametrize(
    ("user", "tier", "groups"),
    [
        ("alice", "operator", ["Intercom-Operators"]),
        ("bob", "admin", ["Intercom-Admins"]),
        ("rosa", "operator", ["Intercom-Operators"]),  # from the role claim
        ("dave", None, ["Contractors"]),  # the contractor tier has expired
        ("nobody", None, []),
    ],
)
def test_login_to_each_tier(
    sgw: Gateway, saml_idp: SamlIdp, user: str, tier: str | None, groups: list[str]
) -> None:
    r = saml_login(sgw, saml_idp, user, rd="https://intercom.test/admin/panel")
    assert r.status_code == 303, [e["reason"] for e in sgw.events("login_failed")]
    login = sgw.events("login")[-1]
    assert login.get("tier") == tier
    assert login.get("groups", []) == groups
    admin = sgw.auth("https://intercom.test/admin/panel")
    console = sgw.auth("https://intercom.test/console")
    assert admin.status_code == (202 if tier == "admin" else 403)
    assert console.status_code == (202 if tier else 403)
    if tier is not None:
        assert admin.headers.get("X-Auth-Request-Tier") in (None, tier)
        assert console.headers["X-Auth-Request-User"] == f"{user}@corp.test"


def test_plain_login_does_not_force_authn(sgw: Gateway, saml_idp: SamlIdp) -> None:
    saml_login(sgw, saml_idp, "alice")
    request = saml_idp.last_request()
    assert request["force_authn"] is False
    assert request["issuer"] == SP_ENTITY_ID


def test_step_up_sends_force_authn_and_needs_a_fresh_authentication(
    sgw: Gateway, saml_idp: SamlIdp
) -> None:
    browser = saml_idp.browser()
    saml_idp.configure(authn_age=400)  # the IdP's own session is old
    assert saml_login(sgw, saml_idp, "alice", browser=browser).status_code == 303
    unlock = "https://intercom.test/doors/unlock"
    assert sgw.auth(unlock).status_code == 401  # max_auth_age 300
    # /.sso/start sees the session is too old for the route: a fresh login
    sso_url = start_login(sgw, unlock)
    assert sgw.events("step_up")
    # the IdP answers with its old authentication: refused
    fields = idp_form(saml_idp, sso_url, "alice", browser)
    assert saml_idp.last_request()["force_authn"] is True
    refused = post_acs(sgw, fields)
    assert refused.status_code == 401
    assert "step-up" in sgw.events("login_failed")[-1]["reason"]
    # the IdP authenticates again: accepted, and the route opens
    saml_idp.configure(authn_age=0)
    r = saml_login(sgw, saml_idp, "alice", unlock, browser=browser)
    assert r.status_code == 303
    assert r.headers["Location"] == unlock
    assert saml_idp.last_request()["force_authn"] is True
    assert sgw.auth(unlock).status_code == 202


def test_prompt_login_forces_authn(sgw: Gateway, saml_idp: SamlIdp) -> None:
    r = saml_login(sgw, saml_idp, "alice", prompt=True)
    assert r.status_code == 303
    assert saml_idp.last_request()["force_authn"] is True


def test_encrypted_assertion(make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp) -> None:
    gw = make_saml_gateway(idp_options={"encrypt_assertion": True}, want_assertions_encrypted=True)
    fields = idp_form(saml_idp, start_login(gw), "bob")
    assert b"EncryptedAssertion" in base64.b64decode(fields["SAMLResponse"])
    r = post_acs(gw, fields)
    assert r.status_code == 303, [e["reason"] for e in gw.events("login_failed")]
    assert gw.events("login")[-1]["user"] == "bob@corp.test"


def test_plain_assertion_refused_when_encryption_required(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway(want_assertions_encrypted=True)
    r = saml_login(gw, saml_idp, "bob")
    assert r.status_code == 401
    assert "not encrypted" in gw.events("login_failed")[-1]["reason"]


def test_signed_response_and_assertion(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway(idp_options={"sign_response": True}, want_response_signed=True)
    assert saml_login(gw, saml_idp, "alice").status_code == 303


def test_unsigned_assertion_in_a_signed_response_is_refused(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway(idp_options={"sign_response": True, "sign_assertion": False})
    r = saml_login(gw, saml_idp, "alice")
    assert r.status_code == 401
    reason = gw.events("login_failed")[-1]["reason"].lower()
    assert "assertion of the response is not signed" in reason


def test_rd_is_checked_at_start(sgw: Gateway) -> None:
    r = sgw.get("/.sso/start", query_string={"rd": "https://evil.example/"})
    assert r.status_code == 400
    assert sgw.events("redirect_refused")


def test_login_state_is_kept_in_the_store_not_the_cookie(sgw: Gateway, saml_idp: SamlIdp) -> None:
    url = start_login(sgw, "https://intercom.test/console")
    handle = relay_state(url)
    cookie = sgw.client.get_cookie(sgw.services.cookie_name + "_saml", domain="localhost", path="/")
    assert cookie is not None and cookie.value == handle
    assert cookie.http_only and cookie.secure
    # a "__Host-" cookie must be Secure with Path=/ or browsers drop it; the
    # IdP's POST is cross-site, so SameSite=None
    assert sgw.services.cookie_name.startswith("__Host-")
    assert cookie.path == "/" and cookie.domain == "localhost"
    assert cookie.same_site == "None"
    assert "console" not in handle and len(handle) >= 32


def test_person_in_very_many_groups(sgw: Gateway, saml_idp: SamlIdp) -> None:
    fields = idp_form(saml_idp, start_login(sgw), "many")
    assert len(fields["SAMLResponse"]) > 64 * 1024  # over the app-wide body limit
    r = post_acs(sgw, fields)
    assert r.status_code == 303, [e["reason"] for e in sgw.events("login_failed")]
    session = sgw.services.sessions.list("many@corp.test")[0]
    assert session.tier == "admin"
    assert len(session.identity.groups) == 1501
    assert len(session.identity.group_ids) == 1500


def test_oversized_post_to_the_acs_is_refused(sgw: Gateway) -> None:
    r = sgw.post("/.sso/saml/acs", data={"SAMLResponse": "A" * (1024 * 1024 + 1)})
    assert r.status_code == 413
