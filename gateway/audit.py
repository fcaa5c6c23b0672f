"""Audit log: one JSON object per line for every login, failure, denial, logout,
expiry and revocation.

Values that could be credentials never reach the log: keys named like a secret
are dropped before writing, whatever the caller passed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, TextIO

from gateway.files import open_destination

# A field whose name contains one of these is never written, whatever it holds.
_FORBIDDEN_PARTS = ("password", "token", "cookie", "secret", "jwt", "assertion", "csrf")
_FORBIDDEN_KEYS = frozenset({"code", "session_id", "credentials"})


def _forbidden(key: str) -> bool:
    lowered = key.lower()
    return lowered in _FORBIDDEN_KEYS or any(part in lowered for part in _FORBIDDEN_PARTS)


class AuditLog:
    """Writes audit events.  ``destination`` is ``stderr``, ``stdout`` or a file path."""

    def __init__(self, destination: str = "stderr", *, stream: TextIO | None = None) -> None:
        self._logger = logging.Logger(f"gateway.audit.{id(self)}", level=logging.INFO)
        self._owned: TextIO | None = None  # a file this log opened (closed by close())
        if stream is None:
            stream, owned = open_destination(destination)
            self._owned = stream if owned else None
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)
        self._listeners: list[Any] = []

    def add_listener(self, listener: Any) -> None:
        """Call ``listener(event_dict)`` for every event (tests, metrics)."""
        self._listeners.append(listener)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "type": "audit",
            "event": event,
        }
        for key, value in fields.items():
            if value is None or _forbidden(key):
                continue
            record[key] = list(value) if isinstance(value, tuple) else value
        self._logger.info(json.dumps(record, sort_keys=False, default=str))
        for listener in self._listeners:
            listener(record)
        return record

    def close(self) -> None:
        for handler in list(self._logger.handlers):
            handler.close()
            self._logger.removeHandler(handler)
        if self._owned is not None:
            self._owned.close()
            self._owned = None


class AuditLimiter:
    """At most one audit line per key per ``interval`` seconds, for events an
    outsider can trigger at will (so they cannot flood the log).  Bounded."""

    def __init__(self, interval: float = 60.0, max_keys: int = 10_000) -> None:
        self.interval = interval
        self._max = max_keys
        self._last: dict[Any, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: Any, now: float) -> bool:
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                return False
            if len(self._last) >= self._max:
                self._last.clear()
            self._last[key] = now
            return True
