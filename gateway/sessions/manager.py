"""Session lifecycle on top of a :class:`SessionStore`.

A session is a random token in the cookie (signed with the app secret, so a
tampered cookie is refused without touching the store) and a server-side record
keyed by the token's SHA-256 digest.  The server alone decides expiry:

* idle timeout: seconds since the last non-passive request;
* absolute lifetime: seconds since login, whatever the activity.

Both are fixed at login from the policy (most restrictive of the defaults, the
person's tiers and the workstation network they logged in from).

With a shared store that publishes invalidations (Redis), records may be cached
in the process for ``cache_seconds`` (see :mod:`gateway.sessions.cache`).
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from itsdangerous import BadSignature, URLSafeSerializer

from gateway.core.model import Identity
from gateway.sessions.cache import SessionCache
from gateway.sessions.store import SessionStore
from gateway.sockets import current_pid

RECORD_VERSION = 1
SHORT_ID_LENGTH = 12  # hex characters of the store key shown as a session's handle
_HEX = frozenset("0123456789abcdef")
# The store keeps a record this long past the session's absolute end, so an
# expired session that is presented again is recognised (and audited as
# expired) instead of simply being unknown.  Expiry itself is decided here, by
# the timestamps in the record, never by the store's TTL.
EXPIRED_GRACE = 600
_VERIFIED_MAX = 10_000


@dataclass(frozen=True)
class Session:
    """A live session as the views see it."""

    key: str  # store key (digest of the token), never the token itself
    identity: Identity
    tier: str | None
    created: float
    last_seen: float
    idle: int
    absolute: int
    client_ip: str
    record: dict[str, Any]

    @property
    def login(self) -> dict[str, Any]:
        """Provider facts stored at login (see :meth:`SessionManager.create`)."""
        data = self.record.get("login")
        return data if isinstance(data, dict) else {}

    def idle_remaining(self, now: float) -> float:
        return max(0.0, self.last_seen + self.idle - now)

    def absolute_remaining(self, now: float) -> float:
        return max(0.0, self.created + self.absolute - now)

    def remaining(self, now: float) -> float:
        return min(self.idle_remaining(now), self.absolute_remaining(now))

    @property
    def short_id(self) -> str:
        """A non-secret handle for audit lines and the sessions CLI."""
        return self.key[:SHORT_ID_LENGTH]


@dataclass(frozen=True)
class Expired:
    """Returned instead of a session when the record existed but ran out."""

    key: str
    user: str
    why: str  # "idle" or "absolute"


def session_key(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


@runtime_checkable
class InvalidationFeed(Protocol):
    """What a shared store offers so per-process caches stay correct (Redis)."""

    def subscribe_invalidations(
        self, on_key: Callable[[str | None], None], on_health: Callable[[bool], None]
    ) -> None: ...


class SessionManager:
    def __init__(
        self,
        store: SessionStore,
        secret_key: str,
        *,
        touch_interval: int = 5,
        cache_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self._signer = URLSafeSerializer(secret_key, salt="sso-gateway-session")
        self.touch_interval = touch_interval
        # verified cookie -> store key; only cookies whose signature held get in
        self._verified: OrderedDict[str, str] = OrderedDict()
        self._verified_lock = threading.Lock()
        # only a store that tells every process about deletions may be cached
        self._feed = store if isinstance(store, InvalidationFeed) else None
        self._cache = SessionCache(cache_seconds) if cache_seconds > 0 and self._feed else None
        self._subscribed_pid = 0

    # -- cookie <-> key ---------------------------------------------------
    def key_from_cookie(self, cookie: str | None) -> str | None:
        if not cookie or len(cookie) > 512:
            return None
        known = self._verified.get(cookie)  # one get: atomic, no lock needed to read
        if known is not None:
            return known
        try:
            token = self._signer.loads(cookie)
        except BadSignature:
            return None
        if not isinstance(token, str) or len(token) < 32:
            return None
        key = session_key(token)
        with self._verified_lock:
            self._verified[cookie] = key
            if len(self._verified) > _VERIFIED_MAX:
                self._verified.popitem(last=False)
        return key

    def _ensure_feed(self) -> None:
        """Subscribe to the store's invalidations once per process (after fork)."""
        if self._feed is None or self._cache is None:
            return
        pid = current_pid()
        if self._subscribed_pid != pid:
            self._subscribed_pid = pid
            self._cache.set_healthy(False)
            self._feed.subscribe_invalidations(self._cache.invalidate, self._cache.set_healthy)

    def _read(self, key: str) -> tuple[Session | None, bool]:
        """(session, came from the cache).  A record that does not parse is deleted."""
        cache = self._cache
        if cache is not None:
            self._ensure_feed()
            hit = cache.get(key)
            if isinstance(hit, Session):
                return hit, True
        epoch = cache.epoch if cache is not None else 0
        record = self.store.get_session(key)
        if record is None:
            return None, False
        try:
            session = _to_session(key, record)
        except (KeyError, TypeError, ValueError):
            self.store.delete_session(key)
            return None, False
        if cache is not None:
            cache.put(key, session, epoch)
        return session, False

    # -- lifecycle ------------------------------------------------------------
    def create(
        self,
        identity: Identity,
        *,
        tier: str | None,
        idle: int,
        absolute: int,
        client_ip: str,
        now: float,
        login: dict[str, Any] | None = None,
    ) -> tuple[str, Session]:
        """A brand-new session (always a new id).  Returns (cookie value, session).

        ``login`` keeps what the identity provider said about this login that
        logout needs later (OIDC ``sid``/``sub``/ID token, SAML NameID and
        SessionIndex) and, with deprovisioning, who the person is in the
        directory (see :mod:`gateway.deprovision`); it stays server-side."""
        token = secrets.token_urlsafe(32)
        key = session_key(token)
        record: dict[str, Any] = {
            "v": RECORD_VERSION,
            "identity": identity.to_dict(),
            "tier": tier,
            "created": now,
            "last_seen": now,
            "idle": idle,
            "absolute": absolute,
            "client_ip": client_ip,
        }
        if login:
            record["login"] = login
        self.store.put_session(key, record, absolute + EXPIRED_GRACE, identity.subject)
        return self._signer.dumps(token), _to_session(key, record)

    def load(self, key: str, now: float) -> Session | Expired | None:
        """The live session for ``key``; an :class:`Expired` (and the record is
        deleted) when it ran out; None when unknown."""
        session, cached = self._read(key)
        if session is None:
            return None
        if cached and session.remaining(now) <= 0 and self._cache is not None:
            # another process may have extended it: ask the store before expiring
            self._cache.forget(key)
            return self.load(key, now)
        if session.absolute_remaining(now) <= 0:
            self.store.delete_session(key)
            return Expired(key, session.identity.subject, "absolute")
        if session.idle_remaining(now) <= 0:
            self.store.delete_session(key)
            return Expired(key, session.identity.subject, "idle")
        return session

    def touch(self, session: Session, now: float) -> None:
        """Extend the idle timer (never the absolute lifetime).  Writes at most
        once per ``touch_interval`` seconds per session."""
        if now - session.last_seen < self.touch_interval:
            return
        record = dict(session.record)
        record["last_seen"] = now
        if session.absolute_remaining(now) <= 0:
            return
        ttl = session.created + session.absolute - now + EXPIRED_GRACE
        epoch = self._cache.epoch if self._cache is not None else 0
        if self.store.touch_session(session.key, record, ttl, session.identity.subject):
            if self._cache is not None:
                self._cache.put(session.key, _to_session(session.key, record), epoch)

    def add_login_fact(self, key: str, name: str, value: Any, *, now: float) -> bool:
        """Add ``name: value`` to a live session's login facts after the fact
        (the deprovisioning backstop's directory link for a session whose login
        could not ask the directory).  Reads the stored record afresh and
        replaces it only if the session still exists, so a deleted session is
        never brought back.  Best effort: a concurrent touch from a stale cached
        copy may write the record back without it.  False when the session is gone."""
        record = self.store.get_session(key)
        if record is None:
            return False
        try:
            session = _to_session(key, record)
        except (KeyError, TypeError, ValueError):
            return False
        if session.remaining(now) <= 0:
            return False
        record = {**record, "login": {**session.login, name: value}}
        ttl = session.created + session.absolute - now + EXPIRED_GRACE
        if not self.store.touch_session(key, record, ttl, session.identity.subject):
            return False
        if self._cache is not None:
            self._cache.forget(key)
        return True

    def delete(self, key: str) -> bool:
        if self._cache is not None:
            self._cache.forget(key)
        return self.store.delete_session(key) is not None

    def revoke_user(self, user: str) -> list[str]:
        """Delete every session of ``user``; return the keys removed."""
        removed = []
        for key in self.store.user_sessions(user):
            if self._cache is not None:
                self._cache.forget(key)
            if self.store.delete_session(key) is not None:
                removed.append(key)
        return removed

    def revoke_short_id(self, handle: str) -> Session | None:
        """Delete the one session whose short id (as :meth:`list` shows it) is
        ``handle``; the session removed, or None when none has that id.  Raises
        ValueError for a handle that is not a short id, and when more than one
        stored session starts with it (never left to chance)."""
        handle = handle.strip().lower()
        if len(handle) != SHORT_ID_LENGTH or not all(c in _HEX for c in handle):
            raise ValueError(f"a session id is {SHORT_ID_LENGTH} hexadecimal characters")
        found = [s for s in self._all(None) if s.key.startswith(handle)]
        if len(found) > 1:
            raise ValueError(f"{len(found)} sessions start with {handle}")
        if not found or not self.delete(found[0].key):
            return None
        return found[0]

    def list(self, user: str | None = None, *, now: float | None = None) -> list[Session]:
        """Live sessions (those past their idle or absolute limit are left out)."""
        when = time.time() if now is None else now
        return [s for s in self._all(user) if s.remaining(when) > 0]

    def _all(self, user: str | None) -> builtins.list[Session]:
        out: builtins.list[Session] = []
        if user is not None:
            for key in self.store.user_sessions(user):
                record = self.store.get_session(key)
                if record is not None:
                    out.append(_to_session(key, record))
        else:
            for key, record in self.store.iter_sessions():
                try:
                    out.append(_to_session(key, record))
                except (KeyError, TypeError, ValueError):
                    continue
        return sorted(out, key=lambda s: s.created)


def _to_session(key: str, record: dict[str, Any]) -> Session:
    if record.get("v") != RECORD_VERSION:
        raise ValueError("unknown session record version")
    return Session(
        key=key,
        identity=Identity.from_dict(record["identity"]),
        tier=record.get("tier"),
        created=float(record["created"]),
        last_seen=float(record["last_seen"]),
        idle=int(record["idle"]),
        absolute=int(record["absolute"]),
        client_ip=str(record.get("client_ip", "")),
        record=record,
    )
