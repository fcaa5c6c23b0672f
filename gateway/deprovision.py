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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from ldap3.utils.conv import escape_filter_chars

from gateway.audit import AuditLog
from gateway.core.errors import StoreUnavailable
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

__all__ = ["DeprovisionWatcher", "PollReport", "directory_keys"]

log = logging.getLogger(__name__)

_MARK_TTL = 90 * 86400.0
_NAME_ATTRIBUTES = ("userPrincipalName", "upn", "sAMAccountName", "preferred_username")
_DN_SPACES = re.compile(r"\s*([,=+])\s*")


def _norm_dn(dn: str) -> str:
    return _DN_SPACES.sub(r"\1", dn.strip()).lower()


def _norm_id(value: str) -> str:
    """Group identifiers as compared here: DNs normalised, SIDs upper, the rest lower."""
    if "=" in value:
        return _norm_dn(value)
    if value.upper().startswith("S-1-"):
        return value.upper()
    return value.lower()


def directory_keys(identity: Identity) -> tuple[str, set[str]]:
    """(objectGUID or "", lower-cased names) by which a session's person is
    matched to a directory entry.  LDAP sign-ins carry the person's objectGUID;
    other providers are matched by their subject and the attributes
    ``userPrincipalName``, ``upn``, ``sAMAccountName``, ``preferred_username``
    (an adapter that puts the UPN there gets its sessions deprovisioned)."""
    guid = identity.attributes.get("objectGUID", "").lower()
    names = {identity.subject.lower()} if identity.subject else set()
    for attribute in _NAME_ATTRIBUTES:
        value = identity.attributes.get(attribute, "")
        if value:
            names.add(value.lower())
    return guid, names


@dataclass
class PollReport:
    """What one poll did (for tests, logs and metrics)."""

    dc: str = ""
    full: bool = False
    changed: int = 0
    entries_read: int = 0
    people_checked: int = 0
    revoked: list[str] = field(default_factory=list)  # users


@dataclass
class _Person:
    identity: Identity
    sessions: list[Session]
    groups_to_verify: set[str] = field(default_factory=set)  # normalised identifiers
    deleted_dn: str = ""  # seen as a deleted object in this poll


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
            guid, _ = directory_keys(session.identity)
            key = guid or f"{session.identity.provider}:{session.identity.subject.lower()}"
            person = people.get(key)
            if person is None:
                person = people[key] = _Person(session.identity, [])
            if all(s.key != session.key for s in person.sessions):
                person.sessions.append(session)
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
                if _matches(entry, session.identity):
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

    def _check(self, person: _Person) -> tuple[str, str, Identity | None] | None:
        """(reason, dn, identity with current groups) when the person's sessions
        must end; None when they may stay."""
        identity = person.identity
        guid, names = directory_keys(identity)
        if guid:
            flt = f"(objectGUID={guid_filter_value(guid)})"
        else:
            flt = (
                "(|"
                + "".join(
                    f"(userPrincipalName={escape_filter_chars(n)})(sAMAccountName={escape_filter_chars(n)})"
                    for n in sorted(names)
                )
                + ")"
            )
        found = self.directory.find_anywhere(flt)
        if not found:
            # an LDAP sign-in (or anyone matched by objectGUID) the directory no
            # longer has was deleted; others were simply never in it
            if identity.provider == LDAP or guid:
                return ("deleted", identity.attributes.get("distinguishedName", ""), None)
            return None
        if len(found) > 1:
            log.warning("deprovisioning: %d directory entries match %s; left alone",
                        len(found), identity.subject)  # fmt: skip
            return None
        entry = found[0]
        if entry.disabled:
            return ("disabled", entry.dn, None)
        if identity.provider == LDAP and not self.directory.find_in_scope(
            f"(objectGUID={guid_filter_value(entry.guid)})"
        ):
            return ("out-of-scope", entry.dn, None)
        groups = self.directory.groups_of(entry.dn)
        current = {_norm_id(x) for g in groups for x in g.identifiers()}
        lost: set[str] = {g for g in person.groups_to_verify if g not in current}
        if identity.provider == LDAP:
            lost |= {_norm_id(x) for x in identity.group_ids if "=" in x} - current
        if lost:
            return ("groups-removed", entry.dn, _with_groups(identity, groups))
        return None

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


def _matches(entry: DirectoryEntry, identity: Identity) -> bool:
    guid, names = directory_keys(identity)
    if guid and entry.guid:
        return guid == entry.guid.lower()
    if guid:
        return False
    return bool({entry.upn.lower(), entry.sam.lower()} - {""} & names)


def _with_groups(identity: Identity, groups: Iterable[DirectoryGroup]) -> Identity:
    groups = list(groups)
    ids = [x for g in groups for x in (g.dn, g.sid, g.guid) if x]
    return replace(identity, groups=tuple(g.name for g in groups), group_ids=tuple(ids))
