"""gateway.flusher.ProcessFlusher: one background flush per process, started by
the first use, surviving a failed flush, stopped by its owner."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.flusher import ProcessFlusher


def _until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_one_flusher_per_process_that_carries_on_after_a_failed_flush() -> None:
    calls: list[int] = []

    def flush() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the first flush fails")

    flusher = ProcessFlusher(flush, 0.02, "test")
    assert flusher.ensure() is False  # started, in a process that had none
    assert flusher.ensure() is False  # already running: nothing started
    assert _until(lambda: len(calls) >= 3)  # the failure did not end it
    flusher.stop()
    time.sleep(0.1)
    stopped_at = len(calls)
    time.sleep(0.1)
    assert len(calls) == stopped_at


def test_a_forked_process_starts_its_own_and_is_told_so(monkeypatch: Any) -> None:
    flusher = ProcessFlusher(lambda: None, 10.0, "test")
    assert flusher.ensure() is False
    monkeypatch.setattr("gateway.flusher.current_pid", lambda: 4242)  # now "in the child"
    assert flusher.ensure() is True  # what waits may be the parent's
    assert flusher.ensure() is False
    flusher.stop()


def test_a_stopped_flusher_is_not_started_again() -> None:
    flusher = ProcessFlusher(lambda: None, 10.0, "test")
    flusher.stop()
    assert flusher.ensure() is False
    assert flusher._pid == 0
