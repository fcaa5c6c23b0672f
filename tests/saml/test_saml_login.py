"""SAML login and logout end to end: the gateway app with real stores against the
real pysaml2 IdP emitting ADFS claims."""

from __future__ import annotations

from tests.flows.conftest import Gateway
from tests.saml.conftest import saml_login
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
