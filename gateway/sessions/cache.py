"""A short-lived, per-process cache of session records in front of a shared store.

``/.sso/auth`` runs on every request of every dashboard; reading the record from
Redis each time costs more than the rest of the check.  The cache keeps records
for a few seconds, and stays correct because:

* it is only **enabled while the store's invalidation feed is healthy** (Redis
  pub/sub, pinged every second).  Every delete (logout, revocation, expiry) is
  published; each process drops the key at once.  When the feed breaks, the
  cache is cleared and bypassed until the feed is back, so a hung or lost Redis
  makes requests fail closed instead of being answered from memory;
* a record read from the store is only cached if no invalidation arrived while
  it was being read (an *epoch* counter), so a revocation racing a read cannot
  leave a stale copy behind;
* callers re-read from the store before declaring a cached session expired.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class SessionCache:
    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._epoch = 0
        self._healthy = False

    # -- fed by the store's invalidation listener --------------------------------
    def invalidate(self, key: str | None) -> None:
        """Drop one key (or everything, for None)."""
        with self._lock:
            self._epoch += 1
            if key is None:
                self._entries.clear()
            else:
                self._entries.pop(key, None)

    def set_healthy(self, healthy: bool) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()
            self._healthy = healthy

    # -- used by the session manager -----------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    def get(self, key: str) -> Any:
        if not self._healthy:
            return None
        hit = self._entries.get(key)  # one get: atomic; the lock guards the changes
        if hit is None:
            return None
        if hit[0] <= self._monotonic():
            with self._lock:
                if self._entries.get(key) is hit:
                    del self._entries[key]
            return None
        return hit[1]

    def put(self, key: str, record: Any, epoch: int) -> None:
        """Cache ``record`` (the parsed session) unless an invalidation arrived
        since ``epoch`` was read."""
        with self._lock:
            if not self._healthy or epoch != self._epoch:
                return
            self._entries[key] = (self._monotonic() + self.ttl, record)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        """Drop a key this process changed itself (no epoch bump needed)."""
        with self._lock:
            self._entries.pop(key, None)
