"""A per-process background flush for buffers filled on the request path (the
access log's lines, the request-duration histogram's observations).

The flusher is a daemon thread (a greenlet under gevent's monkey-patching, its
sleep yields) that calls ``flush`` every ``interval`` seconds.  It is started
by the first use in each process, so that every worker forked from a process
that built the buffer runs its own, and ``flush`` is also registered to run at
exit.  A flush that raises is logged and the flusher carries on: a dead flusher
would let its buffer grow.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable

from gateway.sockets import current_pid

log = logging.getLogger(__name__)


class ProcessFlusher:
    def __init__(self, flush: Callable[[], None], interval: float, name: str) -> None:
        self._flush = flush
        self.interval = interval
        self._name = name
        self._pid = 0  # the process whose flusher runs
        self._stopped = False
        self._lock = threading.Lock()

    def ensure(self) -> bool:
        """Start this process's flusher unless it runs (one comparison when it
        does).  True when this call started it in a process forked from one
        that had its own: what waits in the buffer may be the parent's."""
        pid = current_pid()
        if self._pid == pid:
            return False
        with self._lock:
            if self._pid == pid or self._stopped:
                return False
            forked = self._pid != 0
            self._pid = pid
        threading.Thread(target=self._run, args=(pid,), name=self._name, daemon=True).start()
        atexit.register(self._flush)
        return forked

    def stop(self) -> None:
        """No more background flushes, nor the one at exit (the owner closes)."""
        with self._lock:
            self._stopped = True
        atexit.unregister(self._flush)

    def _run(self, pid: int) -> None:
        while True:
            time.sleep(self.interval)
            if self._stopped or self._pid != pid:
                return  # stopped, or a forked child's copy: that process runs its own
            try:
                self._flush()
            except Exception:
                log.exception("the %s flusher failed; it carries on", self._name)
