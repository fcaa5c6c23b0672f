"""LDAP provider: sign-in with an Active Directory password over LDAPS or StartTLS.

:class:`LdapDirectory` is the connection layer (ldap3): a list of domain
controllers tried in order (one that fails is skipped for
``retry_down_after`` seconds unless all are down), TLS with certificate *and*
host-name verification by Python's ``ssl`` module against the configured CA
bundle, connect and per-operation timeouts, and a small pool of connections
bound once as the service account.  Plain LDAP is refused unless the settings
opt in explicitly (and then a warning is logged at every start).

:class:`LdapPasswordProvider` is the adapter behind the ``/.sso/login`` form:

1. an empty password is refused before any LDAP traffic (AD treats a simple
   bind with an empty password as an *anonymous* bind that "succeeds");
2. the person is searched under the configured base DNs, by
   ``sAMAccountName`` or ``userPrincipalName``, inside ``user_filter`` (by
   default enabled people only), the typed name escaped per RFC 4515;
3. exactly one entry must match; the password is checked by a simple bind as
   that entry's DN on a fresh connection (never a pooled one); when nobody
   matched, a bind to a DN that does not exist costs the same time;
4. groups, direct and nested, come from the in-chain matching rule
   (``1.2.840.113556.1.4.1941``), as names, DNs, SIDs and object GUIDs.

AD's bind sub-codes become audit reasons (:data:`AD_BIND_REASONS`); the person
always sees the same message.  A directory that cannot be reached raises
:class:`~gateway.core.errors.ProviderUnavailable` (the view answers 503).

Threads and gevent: every connection is used by one caller at a time (the
pool hands it out exclusively) with ldap3's SYNC strategy, whose socket I/O
is cooperative once gevent has patched the process.  The work is *not* handed
to native threads: a gevent socket must stay in the thread (hub) that made it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException, LDAPExceptionError
from ldap3.protocol.formatters.formatters import format_sid
from ldap3.utils.conv import escape_bytes, escape_filter_chars

from gateway.core.errors import AuthenticationFailed, ProviderUnavailable
from gateway.core.model import Identity
from gateway.settings_ldap import LdapProviderSettings

__all__ = [
    "AD_BIND_REASONS",
    "PROVIDER_NAME",
    "DirectoryEntry",
    "DirectoryGroup",
    "DirectoryReader",
    "LdapDirectory",
    "LdapPasswordProvider",
    "guid_filter_value",
]

log = logging.getLogger(__name__)

PROVIDER_NAME = "ldap"
IN_CHAIN = "1.2.840.113556.1.4.1941"
SHOW_DELETED = "1.2.840.113556.1.4.417"
UAC_DISABLED = 0x2
MAX_PASSWORD_BYTES = 1024
MAX_USERNAME = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_AD_DATA = re.compile(r"\bdata ([0-9a-fA-F]{2,8})\b")

# AD's invalidCredentials (49) carries a sub-code in its diagnostic message
AD_BIND_REASONS = {
    "525": "user-not-found",
    "52e": "bad-password",
    "530": "logon-hours",
    "531": "workstation-restricted",
    "532": "password-expired",
    "533": "disabled",
    "701": "account-expired",
    "773": "must-change-password",
    "775": "locked-out",
}

USER_ATTRIBUTES = (
    "distinguishedName",
    "objectGUID",
    "objectSid",
    "sAMAccountName",
    "userPrincipalName",
    "userAccountControl",
    "displayName",
    "mail",
    "uSNChanged",
    "isDeleted",
    "objectClass",
)
GROUP_ATTRIBUTES = ("sAMAccountName", "cn", "objectSid", "objectGUID")


@dataclass(frozen=True)
class DirectoryGroup:
    dn: str
    name: str
    sid: str = ""
    guid: str = ""

    def identifiers(self) -> tuple[str, ...]:
        """Every way a policy or another provider may name this group."""
        return tuple(x for x in (self.name, self.dn, self.sid, self.guid) if x)


@dataclass(frozen=True)
class DirectoryEntry:
    """One directory object (a person or a group) as the gateway reads it."""

    dn: str
    guid: str = ""
    sid: str = ""
    sam: str = ""
    upn: str = ""
    uac: int = 0
    usn: int = 0
    deleted: bool = False
    is_group: bool = False
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def disabled(self) -> bool:
        return bool(self.uac & UAC_DISABLED)


def guid_filter_value(guid: str) -> str:
    """An objectGUID (canonical text) as an escaped filter value."""
    return str(escape_bytes(uuid.UUID(guid).bytes_le))


def _int(text: str, otherwise: int) -> int:
    try:
        return int(text)
    except ValueError:
        return otherwise


def _text(values: Sequence[bytes]) -> str:
    return values[0].decode("utf-8", "replace") if values else ""


def _entry(dn: str, raw: dict[str, list[bytes]]) -> DirectoryEntry:
    lower = {k.lower(): v for k, v in raw.items()}

    def one(name: str) -> str:
        return _text(lower.get(name.lower(), []))

    guid_raw = lower.get("objectguid", [b""])[0]
    sid_raw = lower.get("objectsid", [b""])[0]
    classes = {c.decode("utf-8", "replace").lower() for c in lower.get("objectclass", [])}
    try:
        guid = str(uuid.UUID(bytes_le=guid_raw)) if len(guid_raw) == 16 else ""
    except ValueError:
        guid = ""
    sid = str(format_sid(sid_raw)) if sid_raw else ""
    attrs = {k: _text(v) for k, v in raw.items() if v and k.lower() not in _BINARY}
    return DirectoryEntry(
        dn=dn,
        guid=guid,
        sid=sid if sid.startswith("S-") else "",
        sam=one("sAMAccountName"),
        upn=one("userPrincipalName"),
        # a userAccountControl that does not parse counts as disabled (fail closed)
        uac=_int(one("userAccountControl") or "0", UAC_DISABLED),
        usn=_int(one("uSNChanged") or "0", 0),
        deleted=one("isDeleted").upper() == "TRUE",
        is_group="group" in classes,
        attrs=attrs,
    )


_BINARY = {"objectguid", "objectsid"}


class _VerifiedTls(ldap3.Tls):  # type: ignore[misc]
    """ldap3's TLS hook, with the handshake done by an ``ssl.SSLContext`` that
    verifies the certificate chain and the host name itself (ldap3's own host
    check relies on the deprecated ``ssl.match_hostname``)."""

    def __init__(self, context: ssl.SSLContext, server_name: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = context
        self._server_name = server_name

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self._context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=self._server_name,
        )


class _BindRefused(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        super().__init__(str(result.get("description")))


class DirectoryReader:
    """One bound connection to one domain controller, for a few operations."""

    def __init__(self, directory: LdapDirectory, conn: Any, dc: str) -> None:
        self._directory = directory
        self._conn = conn
        self.dc = dc

    def root_dse(self, attributes: Sequence[str]) -> dict[str, str]:
        entries = self._search("", "(objectClass=*)", attributes, scope=ldap3.BASE, count=False)
        if not entries:
            return {}
        return {k.lower(): _text(v) for k, v in entries[0][1].items()}

    def search(
        self,
        base: str,
        flt: str,
        attributes: Sequence[str],
        *,
        scope: str = ldap3.SUBTREE,
        size_limit: int = 0,
        show_deleted: bool = False,
    ) -> list[DirectoryEntry]:
        controls = [(SHOW_DELETED, True, None)] if show_deleted else None
        found = self._search(base, flt, attributes, scope=scope, size_limit=size_limit,
                             controls=controls)  # fmt: skip
        return [_entry(dn, raw) for dn, raw in found]

    def _search(
        self,
        base: str,
        flt: str,
        attributes: Sequence[str],
        *,
        scope: str = ldap3.SUBTREE,
        size_limit: int = 0,
        controls: list[tuple[str, bool, Any]] | None = None,
        count: bool = True,
    ) -> list[tuple[str, dict[str, list[bytes]]]]:
        """A paged search; (dn, raw attributes) of every entry.  Referrals and
        continuation references are ignored."""
        out: list[tuple[str, dict[str, list[bytes]]]] = []
        cookie: bytes | None = None
        while True:
            ok = self._conn.search(
                base, flt, search_scope=scope, attributes=list(attributes),
                size_limit=size_limit, time_limit=int(self._directory.settings.timeout) + 1,
                paged_size=None if scope == ldap3.BASE else 500, paged_cookie=cookie,
                controls=controls,
            )  # fmt: skip
            result = self._conn.result
            code = result.get("result")
            if not ok and code not in (0, 4, 32):  # success, sizeLimitExceeded, noSuchObject
                raise ProviderUnavailable(
                    f"LDAP search on {self.dc} failed: {result.get('description')} "
                    f"{result.get('message', '')}".strip()
                )
            page = [
                (item["dn"], item.get("raw_attributes") or {})
                for item in self._conn.response or []
                if item.get("type") == "searchResEntry"
            ]
            out.extend(page)
            # every request counts as a search; the rootDSE is not a directory entry
            self._directory.record(searches=1, entries=len(page) if count else 0)
            paged = (result.get("controls") or {}).get("1.2.840.113556.1.4.319")
            cookie = paged["value"]["cookie"] if paged else None
            if not cookie or code == 4:
                return out


class LdapDirectory:
    """Connections to the domain controllers: failover, TLS, timeouts, a pool."""

    def __init__(
        self,
        settings: LdapProviderSettings,
        *,
        ca_bundle: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._monotonic = monotonic
        self._servers = settings.server_addresses()
        self._down_until: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()
        self._idle: list[tuple[Any, str]] = []
        self._slots = threading.BoundedSemaphore(settings.pool_size)
        self._context: ssl.SSLContext | None = None
        self._naming_context: str | None = None
        self.searches = 0
        self.entries_read = 0
        self.password_binds = 0
        if settings.transport == "plain":
            log.warning(
                "LDAP transport is PLAIN (allow_plain is set): passwords and directory data "
                "cross the network UNENCRYPTED. Use ldaps or starttls."
            )
        else:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_bundle)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.check_hostname = True
            context.verify_mode = ssl.CERT_REQUIRED
            self._context = context

    # -- statistics (what the directory was asked, for tests and metrics) -----------
    def record(self, *, searches: int, entries: int) -> None:
        with self._lock:
            self.searches += searches
            self.entries_read += entries

    # -- connections ---------------------------------------------------------------
    def unreachable(self) -> bool:
        """Every domain controller failed within the last ``retry_down_after``
        seconds: whoever may do without the directory (an optional lookup)
        need not wait for the connect timeouts again."""
        now = self._monotonic()
        return all(self._down_until.get(s, 0.0) > now for s in self._servers)

    def _candidates(self) -> list[tuple[str, int]]:
        now = self._monotonic()
        up = [s for s in self._servers if self._down_until.get(s, 0.0) <= now]
        return up + [s for s in self._servers if s not in up]

    def _server(self, host: str, port: int) -> Any:
        tls = None
        if self._context is not None:
            tls = _VerifiedTls(self._context, host)
        return ldap3.Server(
            host,
            port=port,
            use_ssl=self.settings.transport == "ldaps",
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=self.settings.connect_timeout,
        )

    def _open(self, address: tuple[str, int], user: str, password: str) -> Any:
        """A connection to one DC, bound as ``user``.  Raises _BindRefused when
        the DC answered the bind with an error, LDAPException/OSError when it
        could not be reached."""
        conn = ldap3.Connection(
            self._server(*address),
            user=user,
            password=password,
            authentication=ldap3.SIMPLE,
            client_strategy=ldap3.SYNC,
            auto_bind=ldap3.AUTO_BIND_NONE,
            read_only=True,
            receive_timeout=max(1, math.ceil(self.settings.timeout)),  # whole seconds
            raise_exceptions=False,
            check_names=False,
            auto_referrals=False,
        )
        try:
            conn.open(read_server_info=False)
            if self.settings.transport == "starttls" and not conn.start_tls(read_server_info=False):
                raise ProviderUnavailable("StartTLS was refused")
            if not conn.bind(read_server_info=False):
                raise _BindRefused(dict(conn.result))
        except BaseException:
            with contextlib.suppress(LDAPException, OSError):
                conn.unbind()
            raise
        return conn

    def connect(self, user: str, password: str) -> tuple[Any, str]:
        """A connection bound as ``user`` to the first DC that answers.  A DC
        that cannot be reached is skipped for ``retry_down_after`` seconds.
        Raises _BindRefused (the DC said no) or ProviderUnavailable."""
        problems = []
        for address in self._candidates():
            name = f"{address[0]}:{address[1]}"
            try:
                conn = self._open(address, user, password)
            except _BindRefused:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a DC did, try the next one
                # unreachable, TLS refused, or bytes ldap3 cannot decode (its
                # decoder raises IndexError and the like on garbage)
                problems.append(f"{name}: {_describe(exc)}")
                log.warning("LDAP server %s is unavailable: %s", name, _describe(exc))
                self._down_until[address] = self._monotonic() + self.settings.retry_down_after
                continue
            self._down_until.pop(address, None)
            return conn, name
        raise ProviderUnavailable("no LDAP server answered: " + "; ".join(problems))

    @contextlib.contextmanager
    def reader(self) -> Iterator[DirectoryReader]:
        """A pooled connection bound as the service account, exclusively ours
        until the block ends.  A connection that failed is dropped, not reused."""
        if not self._slots.acquire(timeout=self.settings.timeout + self.settings.connect_timeout):
            raise ProviderUnavailable("every pooled LDAP connection is busy")
        item: tuple[Any, str] | None = None
        try:
            with self._lock:
                item = self._idle.pop() if self._idle else None
            if item is None or item[0].closed:
                item = self._service_connection()
            try:
                yield DirectoryReader(self, item[0], item[1])
            except BaseException:
                self._discard(item[0])  # a failed connection is never reused
                raise
            with self._lock:
                self._idle.append(item)
        finally:
            self._slots.release()

    def run(self, work: Callable[[DirectoryReader], Any]) -> Any:
        """``work(reader)`` on a pooled connection; once more on a fresh one
        (perhaps another DC) when the first broke (idle timeout, DC restart)."""
        for attempt in (1, 2):
            try:
                with self.reader() as reader:
                    return work(reader)
            except (ProviderUnavailable, AuthenticationFailed):
                raise
            except Exception as exc:
                if attempt == 2:
                    raise ProviderUnavailable(f"LDAP operation failed: {_describe(exc)}") from exc
        raise AssertionError("unreachable")

    def _service_connection(self) -> tuple[Any, str]:
        try:
            password = self.settings.bind_password.get_secret_value()
            return self.connect(self.settings.bind_dn, password)
        except _BindRefused as exc:
            raise ProviderUnavailable(
                f"the service account bind was refused: {exc.result.get('description')} "
                f"{exc.result.get('message', '')}".strip()
            ) from None

    def _discard(self, conn: Any) -> None:
        with contextlib.suppress(LDAPException, OSError):
            conn.unbind()

    def naming_context(self) -> str:
        """The domain's root DN (rootDSE ``defaultNamingContext``), read once."""
        if self._naming_context is None:
            dse = self.run(lambda r: r.root_dse(["defaultNamingContext"]))
            value = dse.get("defaultnamingcontext", "")
            if not value:
                raise ProviderUnavailable("the rootDSE names no defaultNamingContext")
            self._naming_context = value
        return self._naming_context

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._discard(conn)

    # -- people and groups -----------------------------------------------------------
    def user_attributes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*USER_ATTRIBUTES, *self.settings.extra_attributes)))

    def find_in_scope(self, flt: str) -> list[DirectoryEntry]:
        """Entries matching ``user_filter`` AND ``flt`` under the base DNs."""
        full = f"(&{self.settings.user_filter}{flt})"
        attributes = self.user_attributes()

        def work(reader: DirectoryReader) -> list[DirectoryEntry]:
            found: dict[str, DirectoryEntry] = {}
            for base in self.settings.base_dns:
                for entry in reader.search(base, full, attributes, size_limit=2):
                    found.setdefault(entry.dn.lower(), entry)
            return list(found.values())

        result: list[DirectoryEntry] = self.run(work)
        return result

    def find_anywhere(self, flt: str, *, show_deleted: bool = False) -> list[DirectoryEntry]:
        """People matching ``flt`` anywhere in the domain, disabled ones too."""
        base = self.naming_context()
        full = f"(&(objectClass=user)(!(objectClass=computer)){flt})"
        attributes = self.user_attributes()
        result: list[DirectoryEntry] = self.run(
            lambda r: r.search(base, full, attributes, size_limit=2, show_deleted=show_deleted)
        )
        return result

    def groups_of(self, dn: str) -> list[DirectoryGroup]:
        """Every group ``dn`` belongs to, directly or through nested groups."""
        flt = f"(&(objectClass=group)(member:{IN_CHAIN}:={escape_filter_chars(dn)}))"
        bases = self.settings.group_base_dns or (self.naming_context(),)

        def work(reader: DirectoryReader) -> list[DirectoryGroup]:
            out: dict[str, DirectoryGroup] = {}
            for base in bases:
                for e in reader.search(base, flt, GROUP_ATTRIBUTES):
                    name = e.sam or e.attrs.get("cn", "") or e.dn
                    out.setdefault(e.dn.lower(), DirectoryGroup(e.dn, name, e.sid, e.guid))
            return sorted(out.values(), key=lambda g: g.name.lower())

        result: list[DirectoryGroup] = self.run(work)
        return result

    def check_password(self, dn: str, password: str) -> None:
        """A simple bind as ``dn`` on a fresh connection; AuthenticationFailed
        with AD's reason when refused."""
        with self._lock:
            self.password_binds += 1
        try:
            conn, _ = self.connect(dn, password)
        except _BindRefused as exc:
            raise AuthenticationFailed(_bind_reason(exc.result)) from None
        self._discard(conn)

    def decoy_bind(self, password: str) -> None:
        """The work of a password check, for a DN that does not exist: a person
        the search did not find costs what a wrong password costs (a fresh TLS
        connection and a refused bind), so the answer time does not tell whether
        the name exists.  A name that matches no account locks nothing."""
        dn = f"CN=sso-gateway-decoy-{secrets.token_hex(8)},{self.settings.base_dns[0]}"
        with contextlib.suppress(AuthenticationFailed, ProviderUnavailable):
            self.check_password(dn, password)


def _bind_reason(result: dict[str, Any]) -> str:
    if result.get("result") == 49:  # invalidCredentials
        match = _AD_DATA.search(str(result.get("message", "")))
        if match:
            return AD_BIND_REASONS.get(match.group(1).lower(), "bind-refused-" + match.group(1))
        return "bad-password"
    if result.get("result") == 8:  # strongerAuthRequired
        raise ProviderUnavailable("the directory requires a stronger (TLS) bind")
    return "bind-refused-" + str(result.get("description", "unknown"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LDAPExceptionError | LDAPException) or not isinstance(
        exc, ProviderUnavailable | OSError
    ):
        return f"{type(exc).__name__}: {exc}"[:300]
    return str(exc)[:300]


class LdapPasswordProvider:
    """The ``/.sso/login`` form's adapter for Active Directory."""

    name = PROVIDER_NAME

    def __init__(self, directory: LdapDirectory) -> None:
        self.directory = directory
        self.settings = directory.settings
        self._slots = threading.BoundedSemaphore(directory.settings.pool_size)

    def reload(self) -> bool:
        """Nothing to reload: the directory is asked at every sign-in."""
        return False

    def authenticate(self, username: str, password: str, *, now: float) -> Identity:
        if not password:
            raise AuthenticationFailed("empty-password")
        if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
            raise AuthenticationFailed("password-too-long")
        if not username or len(username) > MAX_USERNAME or _CONTROL.search(username):
            raise AuthenticationFailed("invalid-username")
        attribute = self.settings.login_attribute
        flt = f"({attribute}={escape_filter_chars(username)})"
        with self._slots:
            found = self.directory.find_in_scope(flt)
            if not found:
                reason = self._why_not_found(flt)
                self.directory.decoy_bind(password)
                raise AuthenticationFailed(reason)
            if len(found) > 1:
                raise AuthenticationFailed("ambiguous-user")
            entry = found[0]
            self.directory.check_password(entry.dn, password)
            groups = self.directory.groups_of(entry.dn)
        return identity_from(entry, groups, attribute, now)

    def _why_not_found(self, flt: str) -> str:
        """For the audit log only: is the person unknown, disabled or outside
        the search scope?"""
        try:
            anywhere = self.directory.find_anywhere(flt)
        except ProviderUnavailable:
            return "unknown-user"
        if not anywhere:
            return "unknown-user"
        if anywhere[0].disabled:
            return "disabled"
        return "out-of-scope"


def identity_from(
    entry: DirectoryEntry, groups: Sequence[DirectoryGroup], login_attribute: str, now: float
) -> Identity:
    """The Identity of a directory person.  The directory identifiers
    (objectGUID, DN, sAMAccountName, userPrincipalName) go into ``attributes``:
    the deprovisioning watcher finds the person's sessions by them."""
    subject = (entry.upn if login_attribute == "userPrincipalName" else entry.sam).lower()
    attributes = {
        k: v
        for k, v in entry.attrs.items()
        if k not in ("displayName", "mail", "userAccountControl", "uSNChanged", "objectClass",
                     "isDeleted", "distinguishedName")
    }  # fmt: skip
    attributes.update(
        {
            "objectGUID": entry.guid,
            "distinguishedName": entry.dn,
            "sAMAccountName": entry.sam,
            "userPrincipalName": entry.upn,
        }
    )
    ids: list[str] = []
    for group in groups:
        ids.extend(x for x in (group.dn, group.sid, group.guid) if x)
    return Identity(
        subject=subject,
        provider=PROVIDER_NAME,
        name=entry.attrs.get("displayName", "") or entry.sam,
        email=entry.attrs.get("mail", ""),
        groups=tuple(g.name for g in groups),
        group_ids=tuple(ids),
        auth_time=now,
        mfa=False,
        amr=("pwd",),
        attributes={k: v for k, v in attributes.items() if v},
    )
