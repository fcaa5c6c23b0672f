"""The sign-in tests once more against a hardened directory: Samba with
``ldap server require strong auth = yes``, its equivalent of AD's LDAP signing
requirement (simple binds only over TLS)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.flows.conftest import Gateway
from tests.ldap.conftest import LdapGatewayFactory
from tests.samba_ad import USER_PASSWORD, SambaAD

INTERCOM = "https://intercom.test"


@pytest.fixture(scope="module")
def hardened(samba: SambaAD) -> Iterator[SambaAD]:
    samba.restart(strong_auth=True)
    yield samba
    samba.restart(strong_auth=False)


@pytest.fixture(params=["ldaps", "starttls"])
def gw(request: pytest.FixtureRequest, hardened: SambaAD,
       make_ldap_gateway: LdapGatewayFactory) -> Gateway:  # fmt: skip
    if request.param == "starttls":
        return make_ldap_gateway(servers='["localhost:389"]', transport="starttls")
    return make_ldap_gateway()


def _tier(gw: Gateway) -> object:
    info = gw.get("/.sso/userinfo", headers={"Accept": "application/json"}).get_json()
    assert isinstance(info, dict)
    return info["tier"]


@pytest.mark.parametrize(("user", "tier"), [("bob", "admin"), ("alice", "operator")])
def test_login_per_tier(gw: Gateway, user: str, tier: str) -> None:
    assert gw.login(user, USER_PASSWORD).status_code == 303
    assert _tier(gw) == tier


def test_refusals(gw: Gateway) -> None:
    assert gw.login("bob", "Wrong-Passw0rd!").status_code == 401
    assert gw.login("dora", USER_PASSWORD).status_code == 401
    assert gw.login("bob", "").status_code == 401
    assert gw.login("*", USER_PASSWORD).status_code == 401
    reasons = [e["reason"] for e in gw.events("login_failed")]
    assert reasons == ["bad-password", "disabled", "empty-password", "unknown-user"]


def test_the_hardened_directory_refuses_plain_binds_even_when_allowed_here(
    hardened: SambaAD, make_ldap_gateway: LdapGatewayFactory
) -> None:
    gw = make_ldap_gateway(
        servers='["localhost:389"]', transport="plain", extra="    allow_plain: true\n"
    )
    resp = gw.login("bob", USER_PASSWORD)
    assert resp.status_code == 503
    detail = gw.events("provider_unavailable")[-1]["detail"]
    assert "strongerAuthRequired" in detail
    assert gw.session_cookie() is None
