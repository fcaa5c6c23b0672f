"""Long-lived connections (WebSockets, live streams) per session, closed when
their session ends - on whichever process it was ended.

Every open stream registers a closer under its session key.  Two things close
them:

* the store's invalidation feed (Redis: every process hears every logout and
  revocation at once), for a store that has one;
* a watcher that re-reads every session with open streams every
  ``interval`` seconds (any store: a deleted, revoked or expired session ends its
  streams within that time; it also covers a feed that is down).  A session
  store that cannot be read for longer than ``fail_closed_after`` seconds ends
  every stream: the gateway cannot vouch for them any more.

The watcher is a thread (a greenlet under gunicorn's gevent worker, which
patches ``threading``), started when the first stream opens in a process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count

from gateway.audit import AuditLog
from gateway.core.errors import StoreUnavailable
from gateway.sessions.manager import Expired, InvalidationFeed, Session, SessionManager
from gateway.sockets import current_pid

log = logging.getLogger(__name__)

__all__ = ["StreamHandle", "StreamRegistry"]


@dataclass
class StreamHandle:
    key: str
    user: str
    kind: str  # "websocket" or "stream"
    upstream: str
    closer: Callable[[], None]
    ident: int = 0
    closed_because: str | None = field(default=None)


class StreamRegistry:
    def __init__(
        self,
        sessions: SessionManager,
        audit: AuditLog,
        clock: Callable[[], float],
        *,
        feed: InvalidationFeed | None = None,
        interval: float = 2.0,
        fail_closed_after: float = 5.0,
    ) -> None:
        self._sessions = sessions
        self._audit = audit
        self._clock = clock
        self._feed = feed
        self.interval = interval
        self.fail_closed_after = fail_closed_after
        self._lock = threading.Lock()
        self._by_key: dict[str, dict[int, StreamHandle]] = {}
        self._ids = count(1)
        self._pid = 0
        self._wake = threading.Event()
        self._store_down_since: float | None = None

    # -- registration --------------------------------------------------------------
    def open(
        self, key: str, user: str, kind: str, upstream: str, closer: Callable[[], None]
    ) -> StreamHandle:
        self._ensure_watcher()
        handle = StreamHandle(key, user, kind, upstream, closer, next(self._ids))
        with self._lock:
            self._by_key.setdefault(key, {})[handle.ident] = handle
        return handle

    def done(self, handle: StreamHandle) -> None:
        with self._lock:
            streams = self._by_key.get(handle.key)
            if streams is not None:
                streams.pop(handle.ident, None)
                if not streams:
                    del self._by_key[handle.key]

    def open_count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._by_key.values())

    # -- closing -----------------------------------------------------------------------
    def end_session(self, key: str, why: str) -> int:
        """Close every stream of session ``key``; returns how many."""
        with self._lock:
            streams = list(self._by_key.pop(key, {}).values())
        for handle in streams:
            handle.closed_because = why
            try:
                handle.closer()
            except Exception:  # a closer must never stop the others
                log.exception("closing a stream failed")
            self._audit.emit(
                "stream_closed",
                user=handle.user,
                session=key[:12],
                kind=handle.kind,
                upstream=handle.upstream,
                why=why,
            )
        return len(streams)

    def check_now(self) -> None:
        """Re-read every session with open streams; close those that ended."""
        with self._lock:
            keys = list(self._by_key)
        if not keys:
            self._store_down_since = None
            return
        now = self._clock()
        for key in keys:
            try:
                result = self._sessions.load(key, now)
            except StoreUnavailable as exc:
                since = self._store_down_since
                if since is None:
                    self._store_down_since = now
                elif now - since >= self.fail_closed_after:
                    self._audit.emit("store_unavailable", where="stream-watch", detail=str(exc))
                    for open_key in keys:
                        self.end_session(open_key, "store-unavailable")
                return
            self._store_down_since = None
            if isinstance(result, Session):
                continue
            if isinstance(result, Expired):
                self._audit.emit(
                    "session_expired", user=result.user, session=key[:12], why=result.why
                )
                self.end_session(key, f"expired-{result.why}")
            else:
                self.end_session(key, "session-ended")

    # -- the watcher -------------------------------------------------------------------
    def _ensure_watcher(self) -> None:
        pid = current_pid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            self._pid = pid
        if self._feed is not None:
            self._feed.subscribe_invalidations(self._on_invalidation, lambda ok: None)
        threading.Thread(target=self._watch, name="stream-watch", daemon=True).start()

    def _on_invalidation(self, key: str | None) -> None:
        if key is None:
            self._wake.set()  # "everything changed": re-read them all now
            return
        with self._lock:
            known = key in self._by_key
        if known:
            self._wake.set()  # the session may have been deleted or merely touched

    def _watch(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.check_now()
            except Exception:
                log.exception("stream watcher failed")
