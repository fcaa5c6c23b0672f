"""The offloader: a plain call without gevent, and never more than `limit` at once."""

from __future__ import annotations

import threading
import time

import pytest

from gateway.offload import Offloader


def test_calls_through_and_returns_or_raises() -> None:
    run = Offloader()
    assert run(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        run(lambda: 1 / 0)


def test_at_most_limit_calls_run_at_once() -> None:
    run = Offloader(limit=2)
    lock = threading.Lock()
    active = peak = 0

    def work() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with lock:
            active -= 1

    threads = [threading.Thread(target=run, args=(work,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Offloader(limit=0)
