"""Directory-driven deprovisioning: when a person is disabled, deleted, moved out
of the search scope or loses a group in Active Directory, their sessions end
within one poll, not at their next login.

How the directory is watched (cheaply)
    Every ``interval`` seconds one gateway process polls.  Which one is decided
    by the session store: each poll period is a slot, and only the process whose
    ``add_once("deprovision:poll:<slot>")`` succeeds polls in it, so one poll
    runs per period across all processes and replicas, and if that process
    dies the next slot goes to another.  A poll reads the rootDSE of one domain
    controller (``highestCommittedUSN``); when it has not moved past the
    high-water mark kept for that DC, the poll ends there and no entry is read.
    Otherwise it asks only for people and groups whose ``uSNChanged`` lies
    between the mark and the new high (with AD's show-deleted control, honoured
    when the bind account may read deleted objects).  USNs are per DC, so the
    mark is kept per DC (``dsServiceName``) in the store; a DC without a mark
    (first start, failover to another DC) starts from its current high and runs
    the full re-check below at once, so nothing that changed meanwhile is lost.

What a change means
    A changed person is matched to live sessions (see :func:`directory_keys`);
    a changed group to the sessions that hold it (by name, DN or SID).  Each
    matched person is then looked up again: not found (deleted), disabled, or
    (LDAP sign-ins) no longer found by the login search (moved out of the base
    DNs or no longer passing ``user_filter``) -> every session of theirs is
    revoked.  Otherwise their current groups (nested too) are read; a session
    that holds a group the person no longer has is revoked (its identity
    headers and JWT assert that group), and the audit line shows the tier they
    had and the tier their current groups give.  Groups *added* apply at the
    next sign-in.  Each revocation is one ``directory_revoked`` audit line.

SAML and OIDC sessions: the directory link
    Their identity comes from another provider, so :meth:`DeprovisionWatcher.link_at_login`
    looks the person up when the session is made (by subject, UPN,
    sAMAccountName: see :func:`directory_keys`) and keeps what it found in the
    session's login facts (:class:`DirectoryLink`, server-side, where no
    identity provider can assert it): the objectGUID, the DN, and the
    session's groups that the directory gave the person too.  From then on the
    session is matched by objectGUID like an LDAP sign-in, so "no longer found"
    means deleted (a least-privilege bind account cannot see the tombstone),
    a tombstone (which keeps its objectGUID but loses its userPrincipalName)
    is matched by the change poll, and those groups are re-checked.  Someone
    the directory does not know at login gets no link and is matched by name
    as before: not found then means "never in the directory" (a cloud-only
    account), never "deleted".  A directory that cannot be asked does not stop
    the login (fail open: the identity provider has vouched for the person;
    the login line says ``directory_lookup: unavailable`` and a
    ``directory_lookup_failed`` line is written); such a session is linked by
    the first check that finds its person by name.

The backstop
    Every ``full_check_interval`` seconds (a slot of its own) the same check
    runs for every person with a live session, whatever changed: it catches a
    deletion the bind account could not see, and changes made on a DC whose
    mark was lost.

Local-users sessions are never matched: the directory does not know them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ldap3.utils.conv import escape_filter_chars

from gateway.audit import AuditLog
from gateway.core.errors import ProviderUnavailable, StoreUnavailable
from gateway.core.model import Identity
from gateway.policy_holder import PolicyHolder
from gateway.providers.ldap import PROVIDER_NAME as LDAP
from gateway.providers.ldap import (
    DirectoryEntry,
    DirectoryGroup,
    LdapDirectory,
    guid_filter_value,
)
from gateway.sessions.manager import Session, SessionManager
from gateway.sessions.store import SessionStore
from gateway.settings_ldap import LdapProviderSettings

__all__ = ["LINK", "DeprovisionWatcher", "DirectoryLink", "PollReport", "directory_keys"]

log = logging.getLogger(__name__)

_MARK_TTL = 90 * 86400.0
_NAME_ATTRIBUTES = ("userPrincipalName", "upn", "sAMAccountName", "preferred_username")
_DN_SPACES = re.compile(r"\s*([,=+])\s*")
LINK = "directory"  # a session's directory link, in its login facts
# sessions that get no link: LDAP sign-ins carry the objectGUID themselves, and
# local users are not directory people
_UNLINKED_PROVIDERS = (LDAP, "local")


def _norm_dn(dn: str) -> str:
    return _DN_SPACES.sub(r"\1", dn.strip()).lower()


def _norm_id(value: str) -> str:
    """Group identifiers as compared here: DNs normalised, SIDs upper, the rest lower."""
    if "=" in value:
        return _norm_dn(value)
    if value.upper().startswith("S-1-"):
        return value.upper()
    return value.lower()


def _guid(value: Any) -> str:
    """An objectGUID as canonical lower-case text; "" for anything that is not one."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return ""


@dataclass(frozen=True)
class DirectoryLink:
    """Who a SAML/OIDC session's person is in the directory (see the module
    docstring), kept under :data:`LINK` in the session's login facts."""

    guid: str
    dn: str = ""
    # the session's groups that the directory gave the person too, as
    # normalised identifiers (see _norm_id): re-checked with the person
    groups: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"guid": self.guid, "dn": self.dn, "groups": list(self.groups)}

    @classmethod
    def of(cls, session: Session) -> DirectoryLink | None:
        data = session.login.get(LINK)
        if not isinstance(data, dict):
            return None
        guid = _guid(data.get("guid"))
        if not guid:
            return None
        dn, groups = data.get("dn"), data.get("groups")
        return cls(
            guid,
            dn if isinstance(dn, str) else "",
            tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else (),
        )


def directory_keys(identity: Identity, link: DirectoryLink | None = None) -> tuple[str, set[str]]:
    """(objectGUID or "", lower-cased names) by which a session's person is
    matched to a directory entry.  LDAP sign-ins carry the person's objectGUID,
    other providers' sessions have it in their ``link`` when the directory knew
    them at login; the others are matched by their subject and the attributes
    ``userPrincipalName``, ``upn``, ``sAMAccountName``, ``preferred_username``
    (an adapter that puts the UPN there gets its sessions deprovisioned).  A
    value that is no objectGUID is ignored."""
    guid = link.guid if link is not None else _guid(identity.attributes.get("objectGUID"))
    names = {identity.subject.lower()} if identity.subject else set()
    for attribute in _NAME_ATTRIBUTES:
        value = identity.attributes.get(attribute, "")
        if value:
            names.add(value.lower())
    return guid, names


def _session_keys(session: Session) -> tuple[str, set[str]]:
    return directory_keys(session.identity, DirectoryLink.of(session))


def _names_filter(names: Iterable[str]) -> str:
    """People whose userPrincipalName or sAMAccountName is one of ``names``
    (each escaped per RFC 4515)."""
    return (
        "(|"
        + "".join(
            f"(userPrincipalName={escape_filter_chars(n)})(sAMAccountName={escape_filter_chars(n)})"
            for n in sorted(names)
        )
        + ")"
    )


def _link_to(
    entry: DirectoryEntry, groups: Iterable[DirectoryGroup], identity: Identity
) -> DirectoryLink:
    """``identity``'s link to ``entry``: the groups it holds (by any
    identifier) that are among the person's directory groups."""
    held = {_norm_id(x) for x in (*identity.groups, *identity.group_ids)}
    current = {_norm_id(x) for g in groups for x in g.identifiers()}
    return DirectoryLink(_guid(entry.guid), entry.dn, tuple(sorted(held & current)))


@dataclass
class PollReport:
    """What one poll did (for tests, logs and metrics)."""

    dc: str = ""
    full: bool = False
    changed: int = 0
    entries_read: int = 0
    people_checked: int = 0
    revoked: list[str] = field(default_factory=list)  # users
    linked: int = 0  # SAML/OIDC sessions given their directory link by this poll


@dataclass
class _Person:
    identity: Identity
    sessions: list[Session]
    guid: str = ""  # the objectGUID the sessions are matched by; "" = by names
    dn: str = ""  # their DN as the sessions know it
    groups_to_verify: set[str] = field(default_factory=set)  # normalised identifiers
    deleted_dn: str = ""  # seen as a deleted object in this poll
    entry: DirectoryEntry | None = None  # the person as this check found them
    groups: list[DirectoryGroup] = field(default_factory=list)  # and their groups now


class DeprovisionWatcher:
    def __init__(
        self,
        directory: LdapDirectory,
        sessions: SessionManager,
        store: SessionStore,
        audit: AuditLog,
        policy: PolicyHolder | None = None,
        *,
        clock: Callable[[], float] = time.time,
        forget: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = directory
        self.settings: LdapProviderSettings = directory.settings
        self.interval = self.settings.deprovision.interval
        self.full_interval = self.settings.deprovision.full_check_interval
        self._sessions = sessions
        self._store = store
        self._audit = audit
        self._policy = policy
        self._clock = clock
        self._forget = forget
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_failure_audit = 0.0

    # -- running in the background -----------------------------------------------
    def start(self) -> None:
        """Start polling in this process (a daemon thread; a greenlet under gevent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="deprovision", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._until_next_slot()):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any failure
                self._failed(exc)

    def _until_next_slot(self) -> float:
        now = self._clock()
        return max(0.05, (int(now // self.interval) + 1) * self.interval - now + 0.01)

    def _failed(self, exc: Exception) -> None:
        log.warning("deprovisioning poll failed: %s", exc)
        now = self._clock()
        if now - self._last_failure_audit >= 60:
            self._last_failure_audit = now
            self._audit.emit("directory_watch_failed", reason=type(exc).__name__,
                             detail=str(exc)[:500])  # fmt: skip

    # -- at sign-in (SAML, OIDC) -------------------------------------------------------
    def link_at_login(
        self, identity: Identity, login: dict[str, Any] | None
    ) -> tuple[dict[str, Any] | None, str]:
        """(login facts for the new session, outcome) for a sign-in of
        ``identity``: the facts with the person's :class:`DirectoryLink` added
        when the directory knows them.  The outcome (for the login audit line):
        "found", "disabled" (found, and disabled in the directory: the caller
        refuses the sign-in), "not-found", "ambiguous" (more than one person
        has those names: no link), "unavailable" (no link; fail open, audited),
        or "" for providers that need no link.  Never raises."""
        if identity.provider in _UNLINKED_PROVIDERS:
            return login, ""
        _, names = directory_keys(identity)
        if not names:
            return login, "not-found"
        groups: list[DirectoryGroup] = []
        try:
            if self.directory.unreachable():
                # the connect timeouts were just paid by another caller: do
                # not make every sign-in wait for them during an outage
                raise ProviderUnavailable("no domain controller answered recently")
            found = self.directory.find_anywhere(_names_filter(names))
            if len(found) == 1:
                groups = self.directory.groups_of(found[0].dn)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the sign-in goes on
            log.warning("directory lookup at the sign-in of %s failed: %s", identity.subject, exc)
            self._audit.emit("directory_lookup_failed", user=identity.subject,
                             provider=identity.provider, reason=type(exc).__name__,
                             detail=str(exc)[:500])  # fmt: skip
            return login, "unavailable"
        if len(found) > 1:
            log.warning("directory lookup at sign-in: %d entries match %s; no link",
                        len(found), identity.subject)  # fmt: skip
            return login, "ambiguous"
        if not found or not _guid(found[0].guid):
            return login, "not-found"
        link = _link_to(found[0], groups, identity)
        outcome = "disabled" if found[0].disabled else "found"
        return {**(login or {}), LINK: link.to_dict()}, outcome

    def tick(self) -> PollReport | None:
        """Poll if this process won the current slot; None when another did."""
        now = self._clock()
        if not self._store.add_once(f"deprovision:poll:{int(now // self.interval)}",
                                    self.interval * 2):  # fmt: skip
            return None
        full = self._store.add_once(
            f"deprovision:full:{int(now // self.full_interval)}", self.full_interval * 2
        )
        return self.poll(full=full)

    # -- one poll --------------------------------------------------------------------
    def poll(self, *, full: bool = False) -> PollReport:
        report = PollReport(full=full)
        before = self.directory.entries_read
        base = self.directory.naming_context()
        changed: list[DirectoryEntry] = []
        with self.directory.reader() as reader:
            report.dc = reader.dc
            dse = reader.root_dse(["highestCommittedUSN", "dsServiceName"])
            high = int(dse.get("highestcommittedusn") or 0)
            dc_id = dse.get("dsservicename") or reader.dc
            mark_key = (
                "deprovision:usn:"
                + hashlib.sha256(f"{reader.dc}|{dc_id}".encode()).hexdigest()[:32]
            )
            stored = self._store.pop_value(mark_key)
            mark = stored.get("usn") if isinstance(stored, dict) else None
            if not isinstance(mark, int) or mark < 0 or mark > high:
                report.full = True  # no (usable) mark for this DC: start from its high
                mark = high
            try:
                if high > mark:
                    flt = (
                        "(&(|(&(objectClass=user)(!(objectClass=computer)))(objectClass=group))"
                        f"(uSNChanged>={mark + 1})(uSNChanged<={high}))"
                    )
                    changed = reader.search(base, flt, self.directory.user_attributes(),
                                            show_deleted=True)  # fmt: skip
            except BaseException:
                self._put_mark(mark_key, mark, report.dc)  # look again next time
                raise
        try:
            report.changed = len(changed)
            if changed or report.full:
                self._process(changed, report)
        except BaseException:
            self._put_mark(mark_key, mark, report.dc)  # not processed: look again next time
            raise
        self._put_mark(mark_key, high, report.dc)
        report.entries_read = self.directory.entries_read - before
        if report.changed or report.revoked:
            log.info("deprovisioning poll on %s: %d changed, %d revoked", report.dc,
                     report.changed, len(report.revoked))  # fmt: skip
        return report

    def _put_mark(self, key: str, usn: int, dc: str) -> None:
        try:
            self._store.put_value(key, {"usn": usn, "dc": dc}, _MARK_TTL)
        except StoreUnavailable as exc:
            log.warning("could not keep the USN high-water mark: %s", exc)

    def _process(self, changed: list[DirectoryEntry], report: PollReport) -> None:
        now = self._clock()
        live = [s for s in self._sessions.list(now=now) if s.identity.provider != "local"]
        if not live:
            return
        people: dict[str, _Person] = {}

        def person_of(session: Session) -> _Person:
            identity = session.identity
            link = DirectoryLink.of(session)
            guid, _ = directory_keys(identity, link)
            # one person per provider: an LDAP and a SAML sign-in of the same
            # person are checked by their own rules
            key = f"{identity.provider}:" + (guid or f"name:{identity.subject.lower()}")
            person = people.get(key)
            if person is None:
                dn = (
                    link.dn
                    if link is not None
                    else identity.attributes.get("distinguishedName", "")
                )
                person = people[key] = _Person(identity, [], guid=guid, dn=dn)
            if all(s.key != session.key for s in person.sessions):
                person.sessions.append(session)
                if link is not None:
                    person.groups_to_verify.update(link.groups)
            return person

        if report.full:
            for session in live:
                person_of(session)
        for entry in changed:
            if entry.is_group:
                ids = {_norm_id(x) for x in (entry.sam, entry.dn, entry.sid) if x}
                for session in live:
                    held = {_norm_id(g) for g in (*session.identity.groups,
                                                  *session.identity.group_ids)}  # fmt: skip
                    hit = held & ids
                    if hit:
                        person_of(session).groups_to_verify.update(hit)
                continue
            for session in live:
                if _matches(entry, session):
                    person = person_of(session)
                    if entry.deleted:
                        person.deleted_dn = entry.dn
        for person in people.values():
            report.people_checked += 1
            verdict: tuple[str, str, Identity | None] | None
            if person.deleted_dn:
                verdict = ("deleted", person.deleted_dn, None)
            else:
                verdict = self._check(person)
            if verdict is not None:
                self._revoke(person, *verdict, report=report)
            elif (
                person.entry is not None
                and not person.guid
                and person.identity.provider not in _UNLINKED_PROVIDERS
            ):
                self._keep_link(person, report)

    def _check(self, person: _Person) -> tuple[str, str, Identity | None] | None:
        """(reason, dn, identity with current groups) when the person's sessions
        must end; None when they may stay."""
        identity = person.identity
        _, names = directory_keys(identity)
        if person.guid:
            flt = f"(objectGUID={guid_filter_value(person.guid)})"
        elif names:
            flt = _names_filter(names)
        else:
            return None
        found = self.directory.find_anywhere(flt)
        if not found:
            # an LDAP sign-in, or anyone matched by objectGUID (a SAML/OIDC
            # session linked at login), the directory no longer has was
            # deleted; others were simply never in it
            if identity.provider == LDAP or person.guid:
                return ("deleted", person.dn, None)
            return None
        if len(found) > 1:
            log.warning("deprovisioning: %d directory entries match %s; left alone",
                        len(found), identity.subject)  # fmt: skip
            return None
        entry = found[0]
        person.entry = entry
        if entry.disabled:
            return ("disabled", entry.dn, None)
        if identity.provider == LDAP and not self.directory.find_in_scope(
            f"(objectGUID={guid_filter_value(entry.guid)})"
        ):
            return ("out-of-scope", entry.dn, None)
        groups = person.groups = self.directory.groups_of(entry.dn)
        current = {_norm_id(x) for g in groups for x in g.identifiers()}
        lost: set[str] = {g for g in person.groups_to_verify if g not in current}
        if identity.provider == LDAP:
            lost |= {_norm_id(x) for x in identity.group_ids if "=" in x} - current
        if lost:
            return ("groups-removed", entry.dn, _with_groups(identity, groups))
        return None

    def _keep_link(self, person: _Person, report: PollReport) -> None:
        """Give the sessions of a SAML/OIDC person found by name the link their
        login could not record (the directory was unavailable then, or the
        session is older than links): from now on a deletion ends them too."""
        assert person.entry is not None
        if not _guid(person.entry.guid):
            return
        now = self._clock()
        linked = 0
        for session in person.sessions:
            link = _link_to(person.entry, person.groups, session.identity)
            try:
                if self._sessions.add_login_fact(session.key, LINK, link.to_dict(), now=now):
                    linked += 1
            except StoreUnavailable as exc:
                log.warning("could not keep a session's directory link: %s", exc)
                break
        if linked:
            report.linked += linked
            log.info("deprovisioning: %d session(s) of %s linked to %s", linked,
                     person.identity.subject, person.entry.dn)  # fmt: skip

    def _revoke(
        self,
        person: _Person,
        reason: str,
        dn: str,
        current: Identity | None,
        *,
        report: PollReport,
    ) -> None:
        removed = []
        for session in person.sessions:
            if self._sessions.delete(session.key):
                removed.append(session.short_id)
            if self._forget is not None:
                self._forget(session.key)
        if not removed:
            return
        identity = person.identity
        fields: dict[str, object] = {}
        if current is not None:
            fields["groups_now"] = list(current.groups)
            fields["tier_before"] = person.sessions[0].tier
            fields["tier_now"] = self._tier(current, person.sessions[0].client_ip)
        report.revoked.append(identity.subject)
        self._audit.emit(
            "directory_revoked",
            user=identity.subject,
            provider=identity.provider,
            reason=reason,
            dn=dn,
            count=len(removed),
            sessions=removed,
            **fields,
        )

    def _tier(self, identity: Identity, client_ip: str) -> str | None:
        if self._policy is None:
            return None
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        tier = self._policy.current.primary_tier(identity, client_ip, now)
        return tier.name if tier is not None else None


def _matches(entry: DirectoryEntry, session: Session) -> bool:
    guid, names = _session_keys(session)
    if guid and entry.guid:
        return guid == entry.guid.lower()
    if guid:
        return False
    return bool({entry.upn.lower(), entry.sam.lower()} - {""} & names)


def _with_groups(identity: Identity, groups: Iterable[DirectoryGroup]) -> Identity:
    groups = list(groups)
    ids = [x for g in groups for x in (g.dn, g.sid, g.guid) if x]
    return replace(identity, groups=tuple(g.name for g in groups), group_ids=tuple(ids))
