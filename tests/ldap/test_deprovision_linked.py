"""SAML and OIDC sessions of directory people, against a real Active Directory
(Samba AD DC): a SAML or OIDC sign-in looks the person up in the directory and
keeps their objectGUID with the session (the directory link), so deleting them
in AD ends the session, like an LDAP sign-in's, while people the directory
does not know keep theirs.

SAML sign-ins go through the real pysaml2 IdP (tests/saml_idp.py) to the real
gateway app; OIDC sign-ins through the real OpenID provider to the gateway
under gunicorn, or, where only the deprovisioning side is tested, through the
sign-in hook itself (``DeprovisionWatcher.link_at_login``) against the real
directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.core.model import Identity
from gateway.deprovision import LINK, DeprovisionWatcher
from gateway.providers.ldap import DirectoryEntry
from gateway.sessions.manager import Session
from tests.flows.conftest import Gateway
from tests.ldap.conftest import LdapGatewayFactory, ldap_yaml
from tests.ldap.test_deprovision import RealClock, _wait_for, _watcher
from tests.oidc.conftest import ACCOUNTS, Browser, OidcSite, oidc_site  # noqa: F401 - the fixture
from tests.peers import free_port
from tests.samba_ad import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    SERVICE_PASSWORD,
    UPN_SUFFIX,
    SambaAD,
)
from tests.saml_idp import DIRECTORY_PREFIX, SamlIdp, make_keypair, sign_in_at_idp

CONSOLE = "https://intercom.test/console"
Unique = Callable[[str], str]
# an Entra group object id (the OIDC identities' group_ids): not a directory group
ENTRA_OPERATORS = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SamlIdp]:
    server = SamlIdp(tmp_path_factory.mktemp("saml-idp-directory"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


SamlLdapFactory = Callable[..., Gateway]


@pytest.fixture
def make_saml_ldap_gateway(
    make_ldap_gateway: LdapGatewayFactory, idp: SamlIdp, tmp_path: Path
) -> SamlLdapFactory:
    """A gateway with LDAP (the watcher) and SAML (against the test IdP, at
    ``/.sso/start?provider=saml``), its SP metadata registered at the IdP."""
    key, cert = make_keypair(tmp_path, "sp", "gateway-sp")
    saml = (
        "  saml:\n"
        f"    sp_cert_file: {cert}\n"
        f"    sp_key_file: {key}\n"
        f"    idp_metadata_url: {idp.url}/metadata\n"
        "    allow_http_metadata_url: true\n"
        "public_url: https://localhost\n"
    )

    def make(**options: Any) -> Gateway:
        idp.configure()
        gw = make_ldap_gateway(extra=saml, clock=RealClock(), **options)
        idp.register_sp(gw.get("/.sso/saml/metadata").get_data(as_text=True))
        return gw

    return make


def _saml_sign_in(gw: Gateway, idp: SamlIdp, user: str) -> Gateway:
    """A browser of its own signs in at the IdP as ``user`` (``ad.<name>``
    signs in the directory person <name>); returned signed in."""
    browser = Gateway(gw.app, gw.app.test_client(), gw.clock, gw.audit_stream, gw.root)
    r = browser.get("/.sso/start", query_string={"provider": "saml"})
    assert r.status_code == 302, r.get_data(as_text=True)
    fields = sign_in_at_idp(idp.browser(), r.headers["Location"], user)
    r = browser.post(
        "/.sso/saml/acs",
        data={"SAMLResponse": fields["SAMLResponse"], "RelayState": fields["RelayState"]},
    )
    assert r.status_code == 303, r.get_data(as_text=True)
    return browser


def _person(watcher: DeprovisionWatcher, name: str) -> DirectoryEntry:
    (entry,) = watcher.directory.find_anywhere(f"(sAMAccountName={name})")
    return entry


def _link_of(gw: Gateway, user: str) -> dict[str, Any] | None:
    (session,) = gw.services.sessions.list(user)
    link = session.login.get(LINK)
    assert link is None or isinstance(link, dict)
    return link


def _login_line(gw: Gateway, user: str) -> dict[str, Any]:
    return [e for e in gw.events("login") if e["user"] == user][-1]


def _privileged_watcher(
    gw: Gateway, make_ldap_gateway: LdapGatewayFactory, tmp_path: Path
) -> DeprovisionWatcher:
    """A watcher for ``gw``'s sessions bound as an account allowed to list
    CN=Deleted Objects (in AD: delegated with dsacls; here the administrator)."""
    (tmp_path / "admin-password").write_text(ADMIN_PASSWORD, encoding="utf-8")
    privileged = make_ldap_gateway(bind_dn=ADMIN_DN, secret_file=tmp_path / "admin-password")
    return DeprovisionWatcher(
        _watcher(privileged).directory, gw.services.sessions, gw.services.store,
        gw.services.audit, clock=gw.clock,
    )  # fmt: skip


# -- SAML, through the real IdP ----------------------------------------------------------


def test_a_deleted_saml_person_loses_the_session_at_the_backstop(
    ad: SambaAD, make_saml_ldap_gateway: SamlLdapFactory, idp: SamlIdp, unique: Unique
) -> None:
    name = unique("samlgone")
    dn = ad.create_user(name, groups=["Intercom-Operators"])
    gw = make_saml_ldap_gateway()
    watcher = _watcher(gw)
    watcher.poll()
    upn = f"{name}@{UPN_SUFFIX}"
    person = _saml_sign_in(gw, idp, DIRECTORY_PREFIX + name)
    # "nobody@corp.test": an IdP account the directory does not know (cloud-only)
    stranger = _saml_sign_in(gw, idp, "nobody")
    assert person.auth(CONSOLE).status_code == 202
    # the sign-in looked the person up and kept who they are in the directory
    assert _link_of(gw, upn) == {
        "guid": _person(watcher, name).guid,
        "dn": dn,
        "groups": ["intercom-operators"],  # asserted by the IdP and held in AD
    }
    assert _login_line(gw, upn)["directory_lookup"] == "found"
    assert _link_of(gw, "nobody@corp.test") is None
    assert _login_line(gw, "nobody@corp.test")["directory_lookup"] == "not-found"
    watcher.poll()  # the sign-ins' own traces in the directory
    ad.delete(dn)
    # the least-privilege bind account cannot see the deleted object...
    assert watcher.poll().revoked == []
    # ...but the backstop no longer finds the linked objectGUID: deleted
    assert watcher.poll(full=True).revoked == [upn]
    event = gw.events("directory_revoked")[-1]
    assert event["reason"] == "deleted" and event["provider"] == "saml" and event["dn"] == dn
    assert person.auth(CONSOLE).status_code == 401
    # someone the directory never knew keeps their session, poll after poll
    for full in (False, True, True):
        assert watcher.poll(full=full).revoked == []
    assert stranger.get("/.sso/userinfo").status_code == 200


def test_a_saml_sign_in_of_a_person_disabled_in_the_directory_is_refused(
    ad: SambaAD, make_saml_ldap_gateway: SamlLdapFactory, idp: SamlIdp, unique: Unique
) -> None:
    """The IdP may not have caught up (sync lag, a session of its own): the
    directory is the word on whether the person may still work."""
    name = unique("samloff")
    dn = ad.create_user(name, groups=["Intercom-Operators"])
    ad.set_disabled(dn, True)
    gw = make_saml_ldap_gateway()
    upn = f"{name}@{UPN_SUFFIX}"
    browser = Gateway(gw.app, gw.app.test_client(), gw.clock, gw.audit_stream, gw.root)
    r = browser.get("/.sso/start", query_string={"provider": "saml"})
    fields = sign_in_at_idp(idp.browser(), r.headers["Location"], DIRECTORY_PREFIX + name)
    r = browser.post(
        "/.sso/saml/acs",
        data={"SAMLResponse": fields["SAMLResponse"], "RelayState": fields["RelayState"]},
    )
    assert r.status_code == 403
    assert gw.services.sessions.list(upn) == []
    failed = gw.events("login_failed")[-1]
    assert (failed["reason"], failed["user"], failed["provider"]) == (
        "disabled-in-directory",
        upn,
        "saml",
    )
    assert browser.auth(CONSOLE).status_code == 401
    ad.set_disabled(dn, False)  # enabled again: the same sign-in goes through
    assert _saml_sign_in(gw, idp, DIRECTORY_PREFIX + name).auth(CONSOLE).status_code == 202


def test_a_deleted_saml_person_is_seen_by_a_change_poll_that_reads_deleted_objects(
    ad: SambaAD,
    make_saml_ldap_gateway: SamlLdapFactory,
    make_ldap_gateway: LdapGatewayFactory,
    idp: SamlIdp,
    unique: Unique,
    tmp_path: Path,
) -> None:
    name = unique("samltomb")
    dn = ad.create_user(name, groups=["Intercom-Operators"])
    gw = make_saml_ldap_gateway()
    person = _saml_sign_in(gw, idp, DIRECTORY_PREFIX + name)
    watcher = _privileged_watcher(gw, make_ldap_gateway, tmp_path)
    watcher.poll()
    ad.delete(dn)
    # the tombstone has lost its userPrincipalName (the session's subject) but
    # kept its objectGUID, which the session is linked to
    tombstone = watcher.directory.find_anywhere(
        f"(sAMAccountName={name})(isDeleted=TRUE)", show_deleted=True
    )
    assert len(tombstone) == 1 and not tombstone[0].upn
    report = watcher.poll()
    assert report.revoked == [f"{name}@{UPN_SUFFIX}"] and not report.full
    event = gw.events("directory_revoked")[-1]
    assert event["reason"] == "deleted" and "Deleted Objects" in event["dn"]
    assert person.auth(CONSOLE).status_code == 401


def test_the_backstop_rechecks_the_groups_of_a_saml_session(
    ad: SambaAD, make_saml_ldap_gateway: SamlLdapFactory, idp: SamlIdp, unique: Unique
) -> None:
    # Intercom-Operators through a nested group: taking the person out of that
    # group changes only it, a group the SAML session does not hold, so the
    # change poll has no session to match; the backstop re-checks the groups
    # the session was linked with
    team = unique("Team-")
    ad.create_group(team, member_of=["Intercom-Operators"])
    name = unique("samlteam")
    dn = ad.create_user(name, groups=[team])
    gw = make_saml_ldap_gateway()
    watcher = _watcher(gw)
    watcher.poll()
    person = _saml_sign_in(gw, idp, DIRECTORY_PREFIX + name)
    upn = f"{name}@{UPN_SUFFIX}"
    link = _link_of(gw, upn)
    assert link is not None and link["groups"] == ["intercom-operators"]
    watcher.poll()
    ad.set_member(team, dn, False)
    assert watcher.poll().revoked == []
    assert watcher.poll(full=True).revoked == [upn]
    event = gw.events("directory_revoked")[-1]
    assert event["reason"] == "groups-removed" and event["provider"] == "saml"
    assert event["tier_before"] == "operator" and "Intercom-Operators" not in event["groups_now"]
    assert person.auth(CONSOLE).status_code == 401


def test_a_directory_that_cannot_be_reached_does_not_stop_a_saml_sign_in(
    ad: SambaAD,
    make_saml_ldap_gateway: SamlLdapFactory,
    make_ldap_gateway: LdapGatewayFactory,
    idp: SamlIdp,
    unique: Unique,
) -> None:
    """Fail open: the IdP vouched for the person; the session is made without
    a link (audited), and the first backstop that finds the person links it."""
    name = unique("samldown")
    dn = ad.create_user(name, groups=["Intercom-Operators"])
    upn = f"{name}@{UPN_SUFFIX}"
    gw = make_saml_ldap_gateway(servers=f'["127.0.0.1:{free_port()}"]')
    directory = _watcher(gw).directory
    person = _saml_sign_in(gw, idp, DIRECTORY_PREFIX + name)
    assert person.auth(CONSOLE).status_code == 202
    assert _login_line(gw, upn)["directory_lookup"] == "unavailable"
    failed = gw.events("directory_lookup_failed")[-1]
    assert failed["user"] == upn and failed["provider"] == "saml"
    assert failed["reason"] == "ProviderUnavailable"
    assert "no LDAP server answered" in failed["detail"]
    assert _link_of(gw, upn) is None
    # another sign-in while the DC is known to be down does not wait for it again
    searches = directory.searches
    _saml_sign_in(gw, idp, DIRECTORY_PREFIX + name)
    assert gw.events("directory_lookup_failed")[-1]["detail"] == (
        "no domain controller answered recently"
    )
    assert directory.searches == searches
    # the directory is back (a watcher of the same sessions that reaches it):
    # the backstop finds the person by name and links their sessions
    reachable = make_ldap_gateway()
    watcher = DeprovisionWatcher(
        _watcher(reachable).directory, gw.services.sessions, gw.services.store,
        gw.services.audit, clock=gw.clock,
    )  # fmt: skip
    report = watcher.poll(full=True)
    assert report.revoked == [] and report.linked == 2
    for session in gw.services.sessions.list(upn):
        assert session.login[LINK]["guid"] == _person(watcher, name).guid
    ad.delete(dn)
    assert watcher.poll(full=True).revoked == [upn]
    assert gw.services.sessions.list(upn) == []
    assert person.auth(CONSOLE).status_code == 401


# -- OIDC: the sign-in hook with the real directory --------------------------------------


def _oidc_identity(upn: str, oid: str) -> Identity:
    """An Entra ID person as gateway.providers.oidc.identity_from_claims makes it."""
    return Identity(
        subject=oid,
        provider="oidc",
        groups=("Intercom-Operators",),
        group_ids=(ENTRA_OPERATORS,),
        attributes={"oidc_sub": oid, "preferred_username": upn},
    )


def test_oidc_sessions_linked_at_sign_in_end_when_the_person_is_deleted(
    ad: SambaAD,
    make_ldap_gateway: LdapGatewayFactory,
    unique: Unique,
    tmp_path: Path,
) -> None:
    seen, unseen = unique("oidctomb"), unique("oidcgone")
    seen_dn = ad.create_user(seen, groups=["Intercom-Operators"])
    unseen_dn = ad.create_user(unseen, groups=["Intercom-Operators"])
    gw = make_ldap_gateway()
    watcher = _watcher(gw)
    sessions, now = gw.services.sessions, gw.clock()

    def sign_in(identity: Identity, outcome: str) -> str:
        login, said = watcher.link_at_login(identity, {"iss": "https://op.test", "sub": "x"})
        assert said == outcome
        assert login is not None and login["iss"] == "https://op.test"
        _, session = sessions.create(
            identity, tier="operator", idle=900, absolute=3600, client_ip="10.0.0.1", now=now,
            login=login,
        )  # fmt: skip
        return session.key

    oids = {n: f"6b1d0000-0000-4000-8000-{i:012d}" for i, n in enumerate((seen, unseen))}
    keys = {n: sign_in(_oidc_identity(f"{n}@{UPN_SUFFIX}", oids[n]), "found") for n in oids}
    cloud = sign_in(_oidc_identity("cloud@tenant.example", "6b1d0000-0000-4000-8000-0000000000cc"),
                    "not-found")  # fmt: skip
    session = sessions.load(keys[seen], now)
    assert isinstance(session, Session)
    assert session.login[LINK] == {
        "guid": _person(watcher, seen).guid,
        "dn": seen_dn,
        "groups": ["intercom-operators"],  # not the Entra object id: no directory group
    }
    # a bind account that reads deleted objects: the change poll matches the
    # tombstone by the linked objectGUID
    privileged = _privileged_watcher(gw, make_ldap_gateway, tmp_path)
    privileged.poll()
    ad.delete(seen_dn)
    assert privileged.poll().revoked == [oids[seen]]
    assert gw.events("directory_revoked")[-1]["provider"] == "oidc"
    # the least-privilege one: the backstop
    watcher.poll()
    ad.delete(unseen_dn)
    assert watcher.poll().revoked == []
    assert watcher.poll(full=True).revoked == [oids[unseen]]
    event = gw.events("directory_revoked")[-1]
    assert event["reason"] == "deleted" and event["dn"] == unseen_dn
    assert sessions.load(keys[seen], now) is None and sessions.load(keys[unseen], now) is None
    assert sessions.load(cloud, now) is not None
    assert watcher.poll(full=True).revoked == []


def test_the_sign_in_lookup_escapes_the_names_it_is_given(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory
) -> None:
    watcher = _watcher(make_ldap_gateway())
    for name in ("*", "bob)(sAMAccountName=*", "*)(|(objectClass=*", "b*b", "\\2a"):
        assert watcher.link_at_login(Identity(subject=name, provider="saml"), None) == (
            None,
            "not-found",
        )
    # and LDAP and local sign-ins are none of its business
    for provider in ("ldap", "local"):
        assert watcher.link_at_login(Identity(subject="bob", provider=provider), None) == (None, "")


# -- OIDC end to end: the real OpenID provider, the gateway under gunicorn ---------------


def test_an_oidc_sign_in_is_linked_and_deletion_ends_it_within_the_backstop_interval(
    oidc_site: OidcSite,  # noqa: F811 - the imported fixture
    ad: SambaAD,
    tmp_path: Path,
) -> None:
    dn = ad.create_user("oidcgone", groups=["Intercom-Operators"])  # the OP's "oidcgone"
    secret = tmp_path / "bind-password"
    secret.write_text(SERVICE_PASSWORD + "\n", encoding="utf-8")
    full_check = 10  # the shortest backstop interval the settings allow
    ldap = yaml.safe_load(
        ldap_yaml(
            ad.ca_file, secret, deprovision=f"{{interval: 1, full_check_interval: {full_check}}}"
        )
    )
    gw = oidc_site.gateway("gw-deprovision", slot=4)
    gw.config["providers"]["ldap"] = ldap["providers"]["ldap"]
    gw.start()
    try:
        person, cloud = Browser(oidc_site, slot=4), Browser(oidc_site, slot=4)
        person.login("oidcgone")
        cloud.login("alice")  # alice@corp.example: not in the directory
        assert person.userinfo().json()["tier"] == "operator"
        assert cloud.userinfo().status_code == 200
        lines = {e["user"]: e for e in gw.audit_events("login")}
        assert lines[ACCOUNTS["oidcgone"].claims["oid"]]["directory_lookup"] == "found"
        assert lines[ACCOUNTS["alice"].claims["oid"]]["directory_lookup"] == "not-found"
        ad.delete(dn)
        # the watcher in the gateway's worker: the next backstop (every
        # full_check seconds) no longer finds the linked objectGUID
        _wait_for(lambda: person.userinfo().status_code == 401, full_check + 5)
        (event,) = gw.audit_events("directory_revoked")
        assert event["reason"] == "deleted" and event["provider"] == "oidc" and event["dn"] == dn
        assert cloud.userinfo().status_code == 200  # checked by the same backstop, kept
    finally:
        gw.stop()
