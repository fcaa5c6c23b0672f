"""The session store protocol: what every backend (Redis, on-disk) must do.

Keys handed to a store are opaque strings chosen by the caller (session keys are
SHA-256 digests of the cookie token, so a copy of the store holds no usable
cookie).  Values are JSON-serialisable dicts.  Every method raises
:class:`gateway.core.errors.StoreUnavailable` when the backend cannot be reached
or answers something it did not store; callers fail closed on it.

One contract suite (``tests/contract/test_store_contract.py``) runs against every
implementation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class SessionStore(Protocol):
    # -- sessions, indexed per user ------------------------------------------
    def put_session(self, key: str, record: dict[str, Any], ttl: float, user: str) -> None:
        """Create or replace a session record that expires after ``ttl`` seconds,
        and index it under ``user`` so all of that person's sessions can be found."""

    def get_session(self, key: str) -> dict[str, Any] | None:
        """The record, or None when unknown or expired."""

    def touch_session(self, key: str, record: dict[str, Any], ttl: float, user: str) -> bool:
        """Replace a session record ONLY if it still exists (so a touch racing a
        logout or revocation can never bring the session back), and push its
        expiry to ``ttl`` from now.  ``user`` is the user it was stored under.
        True if updated."""

    def delete_session(self, key: str) -> dict[str, Any] | None:
        """Remove the record and its index entry; return what was removed."""

    def user_sessions(self, user: str) -> list[str]:
        """Keys of the live sessions of ``user`` (expired ones are pruned)."""

    def iter_sessions(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every live session as (key, record)."""

    # -- counters (login throttling) ---------------------------------------
    def incr(self, key: str, window: float) -> int:
        """Add one to a counter that disappears ``window`` seconds after its first
        increment; return the new value."""

    def get_counter(self, key: str) -> int:
        """Current value of a counter, 0 when absent or expired."""

    def reset_counter(self, key: str) -> None:
        """Forget a counter."""

    # -- short-lived values (login state, replay caches) --------------------
    def put_value(self, key: str, value: dict[str, Any], ttl: float) -> None:
        """Store a value that expires after ``ttl`` seconds."""

    def pop_value(self, key: str) -> dict[str, Any] | None:
        """Atomically read and delete a value: at most one caller ever gets it."""

    def add_once(self, key: str, ttl: float) -> bool:
        """Remember ``key`` for ``ttl`` seconds; True only for the first caller
        (replay detection)."""

    # -- health --------------------------------------------------------------
    def ping(self) -> None:
        """Return when the backend answers; raise StoreUnavailable otherwise."""

    def close(self) -> None:
        """Release connections / file handles."""
