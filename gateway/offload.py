"""Run CPU-heavy calls (password hashing) off the gevent event loop.

Under gunicorn's gevent workers one argon2 verification (~50-100 ms) would stall
every other request of that worker, ``/.sso/auth`` checks of everyone included.
:class:`Offloader` hands such calls to gevent's native thread pool (argon2-cffi
releases the GIL while hashing), at most ``limit`` at a time per process, so a
burst of sign-ins neither blocks the loop nor runs unbounded in parallel (which
also keeps the login throttle's check-then-count window small).  Without gevent
(tests, sync workers) it simply calls the function.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("threading"))


class Offloader:
    def __init__(self, limit: int = 2) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        # built in the worker after gevent patched threading: a cooperative semaphore
        self._slots = threading.BoundedSemaphore(limit)
        self._gevent = _gevent_patched()

    def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        with self._slots:
            if self._gevent:
                import gevent

                result: T = gevent.get_hub().threadpool.apply(fn, args)
                return result
            return fn(*args)
