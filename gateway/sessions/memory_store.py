"""An in-process :class:`~gateway.sessions.store.SessionStore` held in dicts.

For unit tests of other code and for a single process.  Nothing survives a
restart and nothing is shared between processes (gunicorn workers each get their
own), so production deployments with more than one worker use the Redis or the
on-disk store instead.

Values are kept as JSON text, exactly as the other backends keep them, so code
tested against this store sees the same copying and JSON round-trip semantics
(tuples come back as lists, callers cannot mutate stored records in place).
Expiry uses the monotonic clock; expired entries are dropped lazily when touched,
by :meth:`MemoryStore.purge_expired`, and by an occasional sweep on writes.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

_SWEEP_EVERY = 1024  # writes between two full sweeps of expired entries


def _deadline(ttl: float) -> float:
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"ttl must be a positive, finite number of seconds, not {ttl!r}")
    return time.monotonic() + ttl


def _dump(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


class MemoryStore:
    """A thread-safe, process-local session store.  ``MemoryStore()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # key -> (expires, user, record as JSON)
        self._sessions: dict[str, tuple[float, str, str]] = {}
        # user -> {key: expires}
        self._users: dict[str, dict[str, float]] = {}
        self._counters: dict[str, tuple[float, int]] = {}
        self._values: dict[str, tuple[float, str]] = {}
        self._once: dict[str, float] = {}
        self._writes = 0

    # -- sessions ---------------------------------------------------------------
    def put_session(self, key: str, record: dict[str, Any], ttl: float, user: str) -> None:
        expires = _deadline(ttl)
        text = _dump(record)
        with self._lock:
            old = self._sessions.get(key)
            if old is not None and old[1] != user:
                self._unindex(old[1], key)
            self._sessions[key] = (expires, user, text)
            self._users.setdefault(user, {})[key] = expires
            self._wrote()

    def get_session(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._sessions.get(key)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                self._drop_session(key)
                return None
            text = entry[2]
        record: dict[str, Any] = json.loads(text)
        return record

    def touch_session(self, key: str, record: dict[str, Any], ttl: float, user: str) -> bool:
        del user  # the stored user is authoritative here
        expires = _deadline(ttl)
        text = _dump(record)
        with self._lock:
            entry = self._sessions.get(key)
            if entry is None:
                return False
            if entry[0] <= time.monotonic():
                self._drop_session(key)
                return False
            self._sessions[key] = (expires, entry[1], text)
            self._users.setdefault(entry[1], {})[key] = expires
            return True

    def delete_session(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._sessions.get(key)
            if entry is None:
                return None
            self._drop_session(key)
        if entry[0] <= time.monotonic():
            return None
        record: dict[str, Any] = json.loads(entry[2])
        return record

    def user_sessions(self, user: str) -> list[str]:
        now = time.monotonic()
        with self._lock:
            index = self._users.get(user)
            if not index:
                return []
            for key in [k for k, exp in index.items() if exp <= now]:
                entry = self._sessions.get(key)
                if entry is not None and entry[1] == user:
                    del self._sessions[key]
                self._unindex(user, key)
            live = sorted(self._users.get(user, {}).items(), key=lambda kv: (kv[1], kv[0]))
        return [key for key, _ in live]

    def iter_sessions(self) -> Iterator[tuple[str, dict[str, Any]]]:
        now = time.monotonic()
        with self._lock:
            snapshot = [(k, e[2]) for k, e in self._sessions.items() if e[0] > now]
        for key, text in snapshot:
            yield key, json.loads(text)

    # -- counters ---------------------------------------------------------------
    def incr(self, key: str, window: float) -> int:
        expires = _deadline(window)
        with self._lock:
            entry = self._counters.get(key)
            if entry is None or entry[0] <= time.monotonic():
                entry = (expires, 0)
            value = entry[1] + 1
            self._counters[key] = (entry[0], value)
            self._wrote()
        return value

    def get_counter(self, key: str) -> int:
        with self._lock:
            entry = self._counters.get(key)
            if entry is None:
                return 0
            if entry[0] <= time.monotonic():
                del self._counters[key]
                return 0
            return entry[1]

    def reset_counter(self, key: str) -> None:
        with self._lock:
            self._counters.pop(key, None)

    # -- short-lived values -----------------------------------------------------
    def put_value(self, key: str, value: dict[str, Any], ttl: float) -> None:
        expires = _deadline(ttl)
        text = _dump(value)
        with self._lock:
            self._values[key] = (expires, text)
            self._wrote()

    def pop_value(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._values.pop(key, None)
        if entry is None or entry[0] <= time.monotonic():
            return None
        value: dict[str, Any] = json.loads(entry[1])
        return value

    def add_once(self, key: str, ttl: float) -> bool:
        expires = _deadline(ttl)
        with self._lock:
            seen = self._once.get(key)
            if seen is not None and seen > time.monotonic():
                return False
            self._once[key] = expires
            self._wrote()
            return True

    # -- health and housekeeping -------------------------------------------------
    def ping(self) -> None:
        """Always answers: the store lives in this process."""

    def close(self) -> None:
        """Nothing to release; the data stays readable until the object is dropped."""

    def purge_expired(self) -> int:
        """Drop every expired entry now; return how many were removed."""
        with self._lock:
            return self._sweep()

    # -- internals (call with self._lock held) -----------------------------------
    def _wrote(self) -> None:
        self._writes += 1
        if self._writes >= _SWEEP_EVERY:
            self._sweep()

    def _sweep(self) -> int:
        self._writes = 0
        now = time.monotonic()
        dead_sessions = [k for k, e in self._sessions.items() if e[0] <= now]
        for key in dead_sessions:
            self._drop_session(key)
        removed = len(dead_sessions)
        for user in list(self._users):
            index = self._users[user]
            for key in [k for k, exp in index.items() if exp <= now]:
                del index[key]
            if not index:
                del self._users[user]
        for table in (self._counters, self._values):
            dead = [k for k, e in table.items() if e[0] <= now]
            for key in dead:
                del table[key]
            removed += len(dead)
        dead_once = [k for k, exp in self._once.items() if exp <= now]
        for key in dead_once:
            del self._once[key]
        return removed + len(dead_once)

    def _drop_session(self, key: str) -> None:
        entry = self._sessions.pop(key, None)
        if entry is not None:
            self._unindex(entry[1], key)

    def _unindex(self, user: str, key: str) -> None:
        index = self._users.get(user)
        if index is None:
            return
        index.pop(key, None)
        if not index:
            del self._users[user]
