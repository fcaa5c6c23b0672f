"""Directory-driven deprovisioning against a real Active Directory (Samba AD DC):
a change in AD ends the person's sessions at the next poll."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from gateway.core.model import Identity
from gateway.deprovision import DeprovisionWatcher
from tests.flows.conftest import Clock, Gateway
from tests.ldap.conftest import LdapGatewayFactory
from tests.peers import free_port
from tests.samba_ad import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    ELSEWHERE,
    UPN_SUFFIX,
    USER_PASSWORD,
    SambaAD,
)

INTERCOM = "https://intercom.test"
Unique = Callable[[str], str]


class RealClock(Clock):
    def __call__(self) -> float:
        return time.time()


def _watcher(gw: Gateway) -> DeprovisionWatcher:
    watcher = gw.services.deprovision
    assert watcher is not None
    return watcher


def _signed_in(gw: Gateway, name: str, url: str = f"{INTERCOM}/console") -> None:
    assert gw.login(name, USER_PASSWORD).status_code == 303
    assert gw.auth(url).status_code == 202


def _browser(gw: Gateway) -> Gateway:
    """Another browser on the same gateway (its own cookies)."""
    return Gateway(gw.app, gw.app.test_client(), gw.clock, gw.audit_stream, gw.root)


def _wait_for(check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


def test_disabling_a_user_revokes_the_live_session_within_one_poll(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, unique: Unique
) -> None:
    name = unique("disable")
    dn = ad.create_user(name, groups=["Intercom-Operators"])
    gw = make_ldap_gateway(clock=RealClock())
    watcher = _watcher(gw)
    assert watcher.interval == 1
    watcher.poll()  # the high-water mark for this store
    _signed_in(gw, name)
    watcher.start()
    ad.set_disabled(dn, True)
    took = _wait_for(lambda: gw.auth(f"{INTERCOM}/console").status_code == 401, 10)
    assert took <= watcher.interval + 1.0
    # the watcher's thread deletes the sessions first and writes the audit line
    # just after: the 401 can be seen before the line is there
    _wait_for(lambda: bool(gw.events("directory_revoked")), 5)
    event = gw.events("directory_revoked")[-1]
    assert event["user"] == name and event["reason"] == "disabled"
    assert event["provider"] == "ldap" and event["count"] == 1 and event["dn"] == dn
    assert gw.services.sessions.list(name) == []


def test_removal_from_the_admin_group_ends_admin_access(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, unique: Unique
) -> None:
    name = unique("demote")
    dn = ad.create_user(name, groups=["Intercom-Admins", "Intercom-Operators"])
    gw = make_ldap_gateway()
    watcher = _watcher(gw)
    watcher.poll()
    _signed_in(gw, name, f"{INTERCOM}/admin/")
    ad.set_member("Intercom-Admins", dn, False)
    report = watcher.poll()
    assert report.revoked == [name]
    assert gw.auth(f"{INTERCOM}/admin/").status_code == 401
    event = gw.events("directory_revoked")[-1]
    assert event["reason"] == "groups-removed"
    assert event["tier_before"] == "admin" and event["tier_now"] == "operator"
    assert "Intercom-Admins" not in event["groups_now"]
    # signing in again gives what the directory says now: no admin routes
    _signed_in(gw, name)
    assert gw.auth(f"{INTERCOM}/admin/").status_code == 403


def test_a_nested_group_leaving_the_admin_group_ends_admin_access(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, unique: Unique
) -> None:
    team = unique("Team-")
    ad.create_group(team, member_of=["Intercom-Admins"])
    name = unique("nested")
    ad.create_user(name, groups=[team])
    gw = make_ldap_gateway()
    watcher = _watcher(gw)
    watcher.poll()
    _signed_in(gw, name, f"{INTERCOM}/admin/")
    ad.set_member("Intercom-Admins", f"CN={team},OU=Groups,OU=Gateway,DC=corp,DC=example,DC=test",
                  False)  # fmt: skip
    assert watcher.poll().revoked == [name]
    assert gw.auth(f"{INTERCOM}/admin/").status_code == 401


def test_moving_a_user_out_of_the_search_base_revokes(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, unique: Unique
) -> None:
    name = unique("mover")
    dn = ad.create_user(name, groups=["Intercom-Operators"])
    gw = make_ldap_gateway()
    watcher = _watcher(gw)
    watcher.poll()
    _signed_in(gw, name)
    ad.move(dn, ELSEWHERE)
    assert watcher.poll().revoked == [name]
    assert gw.events("directory_revoked")[-1]["reason"] == "out-of-scope"
    assert gw.auth(f"{INTERCOM}/console").status_code == 401


def test_a_deleted_user_is_found_by_the_backstop(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, unique: Unique
) -> None:
    grouped, lonely = unique("deleted"), unique("lonely")
    grouped_dn = ad.create_user(grouped, groups=["Intercom-Operators"])
    lonely_dn = ad.create_user(lonely)
    gw = make_ldap_gateway()
    watcher = _watcher(gw)
    watcher.poll()
    for name in (grouped, lonely):
        assert _browser(gw).login(name, USER_PASSWORD).status_code == 303
    watcher.poll()  # the sign-ins themselves touched the entries
    ad.delete(grouped_dn)
    ad.delete(lonely_dn)
    # a least-privilege bind account cannot read deleted objects (as in AD), and
    # a deletion does not change the groups' uSNChanged: the change poll is blind
    assert watcher.poll().revoked == []
    # the backstop re-check is not
    report = watcher.poll(full=True)
    assert sorted(report.revoked) == sorted([grouped, lonely])
    assert {e["reason"] for e in gw.events("directory_revoked")} == {"deleted"}
    assert gw.services.sessions.list() == []


def test_a_bind_account_that_reads_deleted_objects_sees_deletions_at_once(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, unique: Unique, tmp_path: Path
) -> None:
    name = unique("gone")
    dn = ad.create_user(name, groups=["Intercom-Operators"])
    gw = make_ldap_gateway()
    _signed_in(gw, name)
    # the same gateway, its watcher bound as an account allowed to list
    # CN=Deleted Objects (in AD: delegated with dsacls; here the administrator)
    (tmp_path / "admin-password").write_text(ADMIN_PASSWORD, encoding="utf-8")
    privileged = make_ldap_gateway(bind_dn=ADMIN_DN, secret_file=tmp_path / "admin-password")
    watcher = DeprovisionWatcher(
        _watcher(privileged).directory, gw.services.sessions, gw.services.store,
        gw.services.audit, clock=gw.clock,
    )  # fmt: skip
    watcher.poll()
    ad.delete(dn)
    report = watcher.poll()
    assert report.revoked == [name] and not report.full
    event = gw.events("directory_revoked")[-1]
    assert event["reason"] == "deleted" and "Deleted Objects" in event["dn"]


def test_a_poll_without_changes_reads_no_entries(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, unique: Unique
) -> None:
    name = unique("quiet")
    ad.create_user(name, groups=["Intercom-Operators"])
    gw = make_ldap_gateway()
    watcher = _watcher(gw)
    directory = watcher.directory
    watcher.poll()
    _signed_in(gw, name)
    watcher.poll()  # a sign-in may itself touch the entry (lastLogonTimestamp)
    searches, entries = directory.searches, directory.entries_read
    for _ in range(3):
        report = watcher.poll()
        assert report.changed == 0 and report.entries_read == 0 and not report.revoked
    assert directory.entries_read == entries
    assert directory.searches == searches + 3  # one rootDSE read per poll, nothing else
    # another person's change costs that one entry, and revokes nobody
    other = ad.create_user(unique("other"))
    ad.set_attribute(other, "department", ["Facilities"])
    report = watcher.poll()
    assert report.changed == 1 and report.entries_read == 1 and not report.revoked
    assert gw.auth(f"{INTERCOM}/console").status_code == 202


def test_sessions_from_other_providers_are_matched_by_upn(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, unique: Unique
) -> None:
    name = unique("samluser")
    dn = ad.create_user(name, groups=["Intercom-Operators"])
    gw = make_ldap_gateway()
    watcher = _watcher(gw)
    watcher.poll()
    sessions = gw.services.sessions
    now = gw.clock()

    def make(identity: Identity) -> str:
        _, session = sessions.create(
            identity, tier="operator", idle=900, absolute=3600, client_ip="10.0.0.1", now=now
        )
        return session.key

    saml = make(Identity(subject=f"{name}@{UPN_SUFFIX}", provider="saml",
                         groups=("Intercom-Operators",)))  # fmt: skip
    oidc = make(Identity(subject="6b1d0000-0000-4000-8000-000000000001", provider="oidc",
                         attributes={"upn": f"{name}@{UPN_SUFFIX}"}))  # fmt: skip
    stranger = make(Identity(subject="stranger@elsewhere.test", provider="saml"))
    local = make(Identity(subject=name, provider="local", groups=("Intercom-Operators",)))
    ad.set_disabled(dn, True)
    report = watcher.poll()
    assert sorted(report.revoked) == sorted(
        [f"{name}@{UPN_SUFFIX}", "6b1d0000-0000-4000-8000-000000000001"]
    )
    assert sessions.load(saml, now) is None and sessions.load(oidc, now) is None
    assert sessions.load(stranger, now) is not None  # unknown to the directory
    assert sessions.load(local, now) is not None  # local users are not directory people
    # the backstop leaves people the directory does not know alone too
    assert watcher.poll(full=True).revoked == []


def test_a_saml_session_loses_a_group_the_directory_removed(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory, unique: Unique
) -> None:
    name = unique("samlgroup")
    dn = ad.create_user(name, groups=["Intercom-Admins"])
    gw = make_ldap_gateway()
    watcher = _watcher(gw)
    watcher.poll()
    now = gw.clock()
    _, session = gw.services.sessions.create(
        Identity(subject=f"{name}@{UPN_SUFFIX}", provider="saml", groups=("Intercom-Admins",)),
        tier="admin", idle=900, absolute=3600, client_ip="10.0.0.1", now=now,
    )  # fmt: skip
    ad.set_member("Intercom-Admins", dn, False)
    assert watcher.poll().revoked == [f"{name}@{UPN_SUFFIX}"]
    assert gw.services.sessions.load(session.key, now) is None


def test_one_watcher_polls_per_period_across_processes(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory
) -> None:
    gw = make_ldap_gateway()
    first = _watcher(gw)
    # a second gateway process: same directory settings, same session store
    second = DeprovisionWatcher(
        first.directory, gw.services.sessions, gw.services.store, gw.services.audit,
        clock=gw.clock,
    )  # fmt: skip
    assert first.tick() is not None
    assert second.tick() is None and first.tick() is None
    gw.clock.advance(first.interval)
    assert second.tick() is not None
    assert first.tick() is None


def test_a_watcher_that_cannot_reach_the_directory_is_audited(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory
) -> None:
    gw = make_ldap_gateway(servers=f'["127.0.0.1:{free_port()}"]', clock=RealClock())
    watcher = _watcher(gw)
    watcher.start()
    _wait_for(lambda: bool(gw.events("directory_watch_failed")), 10)
    event = gw.events("directory_watch_failed")[-1]
    assert event["reason"] == "ProviderUnavailable"
    assert "no LDAP server answered" in event["detail"]


def test_deprovisioning_can_be_turned_off(
    ad: SambaAD, make_ldap_gateway: LdapGatewayFactory
) -> None:
    gw = make_ldap_gateway(deprovision="{enabled: false}")
    assert gw.services.deprovision is None
    assert gw.services.directory is not None  # the group resolver stays
