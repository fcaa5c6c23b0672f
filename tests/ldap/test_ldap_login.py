"""Sign-in through /.sso/login against a real Active Directory (Samba AD DC)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.core.errors import ConfigError
from gateway.core.model import Identity
from gateway.settings import load_settings
from tests.flows.conftest import Gateway
from tests.ldap.conftest import GarbageServer, LdapGatewayFactory, SilentServer
from tests.peers import free_port
from tests.samba_ad import GROUPS, PEOPLE, UPN_SUFFIX, USER_PASSWORD, SambaAD

INTERCOM = "https://intercom.test"


def _info(gw: Gateway) -> dict[str, object]:
    data = gw.get("/.sso/userinfo", headers={"Accept": "application/json"}).get_json()
    assert isinstance(data, dict)
    return data


def _strip(html: str, name: str) -> str:
    html = re.sub(r'(value|nonce)="[^"]*"', r'\1=""', html)
    return html.replace(name, "X")


def _reason(gw: Gateway) -> str:
    return str(gw.events("login_failed")[-1]["reason"])


@pytest.fixture
def gw(ad: SambaAD, make_ldap_gateway: LdapGatewayFactory) -> Gateway:
    return make_ldap_gateway()


def test_admin_logs_in_and_reaches_admin_routes(gw: Gateway) -> None:
    resp = gw.login("bob", USER_PASSWORD, rd="/admin/")
    assert resp.status_code == 303, resp.get_data(as_text=True)
    assert resp.headers["Location"] == "/admin/"
    info = _info(gw)
    assert info["user"] == "bob" and info["tier"] == "admin"
    login = gw.events("login")[-1]
    assert login["provider"] == "ldap" and login["tier"] == "admin"
    allowed = gw.auth(f"{INTERCOM}/admin/users")
    assert allowed.status_code == 202
    assert allowed.headers["X-Auth-Request-User"] == "bob"
    assert allowed.headers["X-Auth-Request-Email"] == "bob@corp.example.test"
    assert allowed.headers["X-Auth-Request-Extension"] == "+49 30 4712"


def test_nested_group_membership_gives_the_operator_tier(gw: Gateway, ad: SambaAD) -> None:
    assert gw.login("alice", USER_PASSWORD).status_code == 303
    session = gw.services.sessions.list()[-1]
    ident = session.identity
    # Door-Team (direct) is nested in Intercom-Operators
    assert set(ident.groups) == {"Door-Team", "UC-Users", "Intercom-Operators"}
    assert f"CN=Intercom-Operators,{GROUPS}" in ident.group_ids
    assert any(g.startswith("S-1-5-21-") for g in ident.group_ids)  # SIDs for the policy
    assert session.tier == "operator"
    assert ident.name == "Alice Example" and ident.email == "alice@corp.example.test"
    assert ident.attributes["department"] == "Security"
    assert ident.attributes["ipPhone"] == "4711"
    assert ident.attributes["distinguishedName"] == f"CN=alice,{PEOPLE}"
    assert re.fullmatch(r"[0-9a-f-]{36}", ident.attributes["objectGUID"])
    ok = gw.auth(f"{INTERCOM}/console")
    assert ok.status_code == 202
    assert ok.headers["X-Auth-Request-Extension"] == "4711"  # ipPhone before telephoneNumber
    assert ok.headers["X-Auth-Request-Department"] == "Security"
    assert gw.auth(f"{INTERCOM}/admin/").status_code == 403


def test_a_group_named_like_the_admins_sid_gives_no_admin_tier(
    ad: SambaAD, gw: Gateway, unique: Callable[[str], str]
) -> None:
    """Security review: whoever may create a group could name it after the
    admins' SID (Samba and AD accept that as a sAMAccountName) and hold a tier
    the policy gives that SID.  A name is only ever a name."""
    import ldap3
    from ldap3.protocol.formatters.formatters import format_sid

    with ad.admin() as conn:
        conn.search(
            f"CN=Intercom-Admins,{GROUPS}",
            "(objectClass=group)",
            search_scope=ldap3.BASE,
            attributes=["objectSid"],
        )
        sid = format_sid(conn.entries[0].objectSid.raw_values[0])
        decoy = unique("decoy")
        assert conn.add(
            f"CN={decoy},{GROUPS}",
            ["top", "group"],
            {"sAMAccountName": sid, "groupType": -2147483646},
        )
    mallory = unique("mallory")
    ad.create_user(mallory, groups=[decoy])
    policy = gw.root / "policies" / "site.yaml"
    text = policy.read_text(encoding="utf-8")
    policy.write_text(
        text.replace("groups: [Intercom-Admins,", f"groups: [{sid}, Intercom-Admins,")
    )
    for _ in range(2):  # a change is loaded once it held still for one check
        gw.clock.advance(3)
        gw.auth(f"{INTERCOM}/console")
    assert gw.login(mallory, USER_PASSWORD).status_code == 303
    info = _info(gw)
    assert info["groups"] == [sid]  # the decoy's name, as the directory gives it
    assert info["tier"] is None
    assert gw.auth(f"{INTERCOM}/admin/doors").status_code == 403
    # the real Intercom-Admins, named by that SID alone, still holds the tier
    admins = 'groups: [Intercom-Admins, "CN=Intercom-Admins,OU=Groups,DC=corp,DC=test"]'
    assert admins in text
    policy.write_text(text.replace(admins, f"groups: [{sid}]"))
    for _ in range(2):
        gw.clock.advance(3)
        gw.auth(f"{INTERCOM}/console")
    assert gw.login("bob", USER_PASSWORD).status_code == 303
    assert _info(gw)["tier"] == "admin"


def test_person_without_tier_groups_gets_no_access(gw: Gateway) -> None:
    assert gw.login("carol", USER_PASSWORD).status_code == 303
    assert _info(gw)["tier"] is None
    assert gw.auth(f"{INTERCOM}/console").status_code == 403


def test_refusals_look_the_same_and_audit_the_reason(gw: Gateway) -> None:
    answers = {
        "alice": gw.login("alice", "Wrong-Passw0rd!"),  # wrong password
        "dora": gw.login("dora", USER_PASSWORD),  # disabled in AD
        "mallory": gw.login("mallory", USER_PASSWORD),  # outside the search base
        "nobody": gw.login("nobody", USER_PASSWORD),  # not in the directory
    }
    assert {r.status_code for r in answers.values()} == {401}
    pages = {_strip(r.get_data(as_text=True), name) for name, r in answers.items()}
    assert len(pages) == 1
    reasons = [e["reason"] for e in gw.events("login_failed")]
    assert reasons == ["bad-password", "disabled", "out-of-scope", "unknown-user"]
    # each cost a password bind (the unknown ones against a decoy DN): the
    # answer time does not tell whether the name exists
    assert gw.services.directory is not None
    assert gw.services.directory.directory.password_binds == 4
    assert all(e["provider"] == "ldap" for e in gw.events("login_failed"))
    assert gw.session_cookie() is None


def test_empty_password_is_refused_before_any_ldap_call(gw: Gateway) -> None:
    assert gw.services.directory is not None
    directory = gw.services.directory.directory
    before = directory.searches
    resp = gw.login("bob", "")
    assert resp.status_code == 401
    assert _reason(gw) == "empty-password"
    assert directory.searches == before


@pytest.mark.parametrize(
    "username",
    ["*", ")(", "\\00", "*)(uid=*", "b*", "bo*", "*)(sAMAccountName=bob", "bob)(|(cn=*)",
     "bob\\2a", "(sAMAccountName=bob)"],
)  # fmt: skip
def test_filter_injection_in_the_user_name_never_logs_in(gw: Gateway, username: str) -> None:
    resp = gw.login(username, USER_PASSWORD)
    assert resp.status_code == 401
    assert _reason(gw) == "unknown-user"
    assert gw.session_cookie() is None
    assert not gw.events("login")


@pytest.mark.parametrize("username", ["bob\x00", "\x00", "bo\nb", "b" * 300])
def test_control_characters_and_overlong_names_are_refused_unsent(
    gw: Gateway, username: str
) -> None:
    assert gw.services.directory is not None
    directory = gw.services.directory.directory
    before = directory.searches
    resp = gw.login(username, USER_PASSWORD)
    assert resp.status_code == 401
    assert _reason(gw) == "invalid-username"
    assert directory.searches == before


def test_wrong_passwords_are_throttled(gw: Gateway) -> None:
    for _ in range(3):
        assert gw.login("bob", "Wrong-Passw0rd!").status_code == 401
    resp = gw.login("bob", USER_PASSWORD)
    assert resp.status_code == 429
    assert _reason(gw) == "throttled-user"


def test_user_principal_name_as_login_attribute(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory
) -> None:
    gw = make_ldap_gateway(extra="    login_attribute: userPrincipalName\n")
    assert gw.login(f"bob@{UPN_SUFFIX}", USER_PASSWORD).status_code == 303
    assert _info(gw)["user"] == f"bob@{UPN_SUFFIX}"
    assert gw.login("bob", USER_PASSWORD).status_code == 401


def test_starttls_on_389(ad: SambaAD, make_ldap_gateway: LdapGatewayFactory) -> None:
    gw = make_ldap_gateway(servers='["localhost:389"]', transport="starttls")
    assert gw.login("bob", USER_PASSWORD).status_code == 303
    assert _info(gw)["tier"] == "admin"


def test_plain_ldap_is_refused_without_the_explicit_opt_in(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory
) -> None:
    with pytest.raises(ConfigError) as err:
        make_ldap_gateway(servers='["localhost:389"]', transport="plain")
    assert "providers.ldap" in str(err.value) and "unencrypted" in str(err.value)


def test_plain_ldap_with_the_opt_in_is_loudly_logged(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = make_ldap_gateway(
        servers='["localhost:389"]', transport="plain", extra="    allow_plain: true\n"
    )
    assert gw.events("insecure_ldap_enabled")
    assert "UNENCRYPTED" in caplog.text
    assert gw.login("bob", USER_PASSWORD).status_code == 303  # a lax directory allows it


@pytest.mark.parametrize(("server", "transport"), [("localhost:636", "ldaps"),
                                                  ("localhost:389", "starttls")])  # fmt: skip
def test_a_certificate_from_another_ca_is_refused(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, tmp_path: Path, server: str,
    transport: str,
) -> None:  # fmt: skip
    other = tmp_path / "other-ca.pem"
    other.write_bytes(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes())
    gw = make_ldap_gateway(ca_file=other, servers=f'["{server}"]', transport=transport)
    resp = gw.login("bob", USER_PASSWORD)
    assert resp.status_code == 503
    event = gw.events("provider_unavailable")[-1]
    assert "CERTIFICATE_VERIFY_FAILED" in event["detail"]
    assert "unable to get local issuer certificate" in event["detail"]
    assert gw.session_cookie() is None
    assert not gw.events("login_failed")  # not counted against the person


def test_a_certificate_for_another_host_name_is_refused(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory
) -> None:
    # the DC's certificate names localhost, 127.0.0.1 and dc1: not ::1
    gw = make_ldap_gateway(servers='["[::1]:636"]')
    resp = gw.login("bob", USER_PASSWORD)
    assert resp.status_code == 503
    detail = gw.events("provider_unavailable")[-1]["detail"]
    assert "CERTIFICATE_VERIFY_FAILED" in detail and "mismatch" in detail


def test_failover_to_the_next_domain_controller(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, silent_server: SilentServer
) -> None:
    down = free_port()  # nothing listens there
    gw = make_ldap_gateway(
        servers=f'["127.0.0.1:{down}", "127.0.0.1:{silent_server.port}", "localhost:636"]'
    )
    assert gw.login("bob", USER_PASSWORD).status_code == 303
    assert _info(gw)["tier"] == "admin"
    # the two dead DCs are now skipped: the next login goes straight to the good one
    gw.logout()
    assert gw.login("alice", USER_PASSWORD).status_code == 303


def test_every_domain_controller_down_fails_closed(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory
) -> None:
    gw = make_ldap_gateway(servers=f'["127.0.0.1:{free_port()}"]')
    resp = gw.login("bob", USER_PASSWORD)
    assert resp.status_code == 503
    assert "no LDAP server answered" in gw.events("provider_unavailable")[-1]["detail"]
    assert gw.session_cookie() is None


def test_wrong_service_account_password_fails_closed(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, tmp_path: Path
) -> None:
    (tmp_path / "bind-password").write_text("not-the-password", encoding="utf-8")
    gw = make_ldap_gateway()
    resp = gw.login("bob", USER_PASSWORD)
    assert resp.status_code == 503
    assert "service account" in gw.events("provider_unavailable")[-1]["detail"]


def test_ad_bind_sub_codes_become_audit_reasons(
    ad: SambaAD, gw: Gateway, unique: Callable[[str], str]
) -> None:
    name = unique("expiring")
    dn = ad.create_user(name, groups=["Intercom-Operators"])
    ad.set_attribute(dn, "pwdLastSet", [0])  # must change the password at next logon
    assert gw.login(name, USER_PASSWORD).status_code == 401
    assert _reason(gw) == "must-change-password"
    ad.set_attribute(dn, "pwdLastSet", [-1])
    ad.set_attribute(dn, "accountExpires", [116444736000000000 + 10_000_000])  # 1970
    assert gw.login(name, USER_PASSWORD).status_code == 401
    assert _reason(gw) == "account-expired"


def test_the_directory_group_resolver_serves_other_providers(ad: SambaAD, gw: Gateway) -> None:
    resolver = gw.services.directory
    assert resolver is not None
    saml = Identity(subject=f"alice@{UPN_SUFFIX}", provider="saml", groups=("Door-Team",))
    enriched = resolver.enrich(saml)
    assert set(enriched.groups) == {"Door-Team", "UC-Users", "Intercom-Operators"}
    assert f"CN=Intercom-Operators,{GROUPS}" in enriched.group_ids
    assert resolver.enrich(Identity(subject="stranger@x.test", provider="oidc")).groups == ()
    assert resolver.groups_for_user("dora") is None  # disabled people get nothing
    assert resolver.groups_for_user("*") is None


def test_check_validates_the_ldap_settings(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "providers:\n  default: ldap\n  ldap:\n    servers: ['bad host']\n"
        "    bind_dn: x\n    bind_password: y\n    base_dns: []\n    user_filter: nofilter\n"
        "    extra_attributes: ['a b']\n    unknown: 1\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    keys = {p.key_path for p in err.value.problems}
    assert {
        "providers.ldap.servers",
        "providers.ldap.base_dns",
        "providers.ldap.user_filter",
        "providers.ldap.extra_attributes",
        "providers.ldap.unknown",
    } <= keys
    (tmp_path / "not-a-ca.pem").write_text("no certificate here", encoding="utf-8")
    for bundle in ("missing.pem", "not-a-ca.pem"):
        config.write_text(
            "providers:\n  default: ldap\n  ldap:\n    servers: [dc1]\n    bind_dn: x\n"
            f"    bind_password: y\n    base_dns: [DC=x]\n    ca_bundle: {bundle}\n",
            encoding="utf-8",
        )
        with pytest.raises(ConfigError) as err:
            load_settings(config)
        assert [p.key_path for p in err.value.problems] == ["providers.ldap.ca_bundle"]
    config.write_text("providers:\n  default: ldap\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert "required when providers.default is 'ldap'" in str(err.value)


def test_pooled_connections_survive_a_domain_controller_restart(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory
) -> None:
    gw = make_ldap_gateway()
    assert gw.login("bob", USER_PASSWORD).status_code == 303
    ad.restart(strong_auth=False)  # every pooled connection is now dead
    gw.logout()
    assert gw.login("alice", USER_PASSWORD).status_code == 303
    assert _info(gw)["tier"] == "operator"


@pytest.mark.parametrize("transport", ["ldaps", "starttls"])
def test_a_server_that_answers_garbage_is_failed_over_then_fails_closed(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, garbage_server: GarbageServer,
    transport: str,
) -> None:  # fmt: skip
    good = "localhost:636" if transport == "ldaps" else "localhost:389"
    gw = make_ldap_gateway(
        servers=f'["127.0.0.1:{garbage_server.port}", "{good}"]', transport=transport, timeout=1
    )
    assert gw.login("bob", USER_PASSWORD).status_code == 303
    only = make_ldap_gateway(
        servers=f'["127.0.0.1:{garbage_server.port}"]', transport=transport, timeout=1
    )
    resp = only.login("bob", USER_PASSWORD)
    assert resp.status_code == 503
    assert "no LDAP server answered" in only.events("provider_unavailable")[-1]["detail"]


def test_start_sends_people_to_the_form(gw: Gateway) -> None:
    resp = gw.get("/.sso/start?rd=/doors/")
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/.sso/login?rd=%2Fdoors%2F"
    assert gw.get("/.sso/start?rd=/doors/&provider=ldap").status_code == 302
    assert gw.get("/.sso/start?rd=/doors/&provider=local").status_code == 400
