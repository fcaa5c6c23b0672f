"""Session lifecycle on top of a :class:`SessionStore`.

A session is a random token in the cookie (signed with the app secret, so a
tampered cookie is refused without touching the store) and a server-side record
keyed by the token's SHA-256 digest.  The server alone decides expiry:

* idle timeout: seconds since the last non-passive request;
* absolute lifetime: seconds since login, whatever the activity.

Both are fixed at login from the policy (most restrictive of the defaults, the
person's tiers and the workstation network they logged in from).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from gateway.core.model import Identity
from gateway.sessions.store import SessionStore

RECORD_VERSION = 1


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

    def idle_remaining(self, now: float) -> float:
        return max(0.0, self.last_seen + self.idle - now)

    def absolute_remaining(self, now: float) -> float:
        return max(0.0, self.created + self.absolute - now)

    def remaining(self, now: float) -> float:
        return min(self.idle_remaining(now), self.absolute_remaining(now))

    @property
    def short_id(self) -> str:
        """A non-secret handle for audit lines and the sessions CLI."""
        return self.key[:12]


@dataclass(frozen=True)
class Expired:
    """Returned instead of a session when the record existed but ran out."""

    key: str
    user: str
    why: str  # "idle" or "absolute"


def session_key(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class SessionManager:
    def __init__(self, store: SessionStore, secret_key: str, *, touch_interval: int = 5) -> None:
        self.store = store
        self._signer = URLSafeSerializer(secret_key, salt="sso-gateway-session")
        self.touch_interval = touch_interval

    # -- cookie <-> key ---------------------------------------------------
    def key_from_cookie(self, cookie: str | None) -> str | None:
        if not cookie or len(cookie) > 512:
            return None
        try:
            token = self._signer.loads(cookie)
        except BadSignature:
            return None
        if not isinstance(token, str) or len(token) < 32:
            return None
        return session_key(token)

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
    ) -> tuple[str, Session]:
        """A brand-new session (always a new id).  Returns (cookie value, session)."""
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
        ttl = min(idle, absolute)
        self.store.put_session(key, record, ttl, identity.subject)
        return self._signer.dumps(token), _to_session(key, record)

    def load(self, key: str, now: float) -> Session | Expired | None:
        """The live session for ``key``; an :class:`Expired` (and the record is
        deleted) when it ran out; None when unknown."""
        record = self.store.get_session(key)
        if record is None:
            return None
        try:
            session = _to_session(key, record)
        except (KeyError, TypeError, ValueError):
            self.store.delete_session(key)
            return None
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
        ttl = min(session.idle, session.created + session.absolute - now)
        if ttl <= 0:
            return
        self.store.touch_session(session.key, record, ttl)

    def delete(self, key: str) -> bool:
        return self.store.delete_session(key) is not None

    def revoke_user(self, user: str) -> list[str]:
        """Delete every session of ``user``; return the keys removed."""
        removed = []
        for key in self.store.user_sessions(user):
            if self.store.delete_session(key) is not None:
                removed.append(key)
        return removed

    def list(self, user: str | None = None) -> list[Session]:
        out: list[Session] = []
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
