"""StreamRegistry: which open streams a session check closes, against the real
in-process store (and a Redis store nobody answers for the outage case)."""

from __future__ import annotations

import io
import json
from typing import Any

from gateway.audit import AuditLog
from gateway.core.model import Identity
from gateway.sessions.manager import SessionManager
from gateway.sessions.memory_store import MemoryStore
from gateway.sessions.redis_store import RedisStore
from gateway.streams import StreamRegistry
from tests.peers import free_port

ALICE = Identity(subject="alice", provider="local")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _setup(
    store: Any = None,
) -> tuple[StreamRegistry, SessionManager, Clock, io.StringIO, list[str]]:
    clock = Clock()
    stream = io.StringIO()
    manager = SessionManager(store or MemoryStore(), "secret" * 8)
    registry = StreamRegistry(manager, AuditLog(stream=stream), clock, interval=3600)
    # no watcher thread: these tests call check_now themselves
    registry._ensure_watcher = lambda: None  # type: ignore[method-assign]
    return registry, manager, clock, stream, []


def _events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in stream.getvalue().splitlines() if x]
    return [e for e in lines if e["event"] == name]


def _session(manager: SessionManager, clock: Clock, idle: int = 60) -> str:
    _, session = manager.create(
        ALICE, tier="operator", idle=idle, absolute=600, client_ip="127.0.0.1", now=clock.now
    )
    return session.key


def test_live_sessions_keep_their_streams_and_ended_ones_lose_them() -> None:
    registry, manager, clock, audit, cut = _setup()
    live, gone = _session(manager, clock), _session(manager, clock)
    registry.open(live, "alice", "websocket", "events", lambda: cut.append("live"))
    registry.open(gone, "alice", "stream", "intercom", lambda: cut.append("gone"))
    registry.check_now()
    assert cut == []
    manager.delete(gone)
    registry.check_now()
    assert cut == ["gone"] and registry.open_count() == 1
    [line] = _events(audit, "stream_closed")
    assert line["why"] == "session-ended" and line["kind"] == "stream"


def test_idle_expiry_closes_streams() -> None:
    registry, manager, clock, audit, cut = _setup()
    key = _session(manager, clock, idle=30)
    handle = registry.open(key, "alice", "websocket", "events", lambda: cut.append("ws"))
    clock.now += 31
    registry.check_now()
    assert cut == ["ws"] and handle.closed_because == "expired-idle"
    assert _events(audit, "session_expired")[0]["why"] == "idle"


def test_done_streams_are_forgotten() -> None:
    registry, manager, clock, _, cut = _setup()
    key = _session(manager, clock)
    handle = registry.open(key, "alice", "stream", "intercom", lambda: cut.append("x"))
    registry.done(handle)
    assert registry.end_session(key, "logout") == 0 and cut == []


def test_a_failing_closer_does_not_stop_the_others() -> None:
    registry, manager, clock, _, cut = _setup()
    key = _session(manager, clock)

    def broken() -> None:
        raise OSError("already closed")

    registry.open(key, "alice", "stream", "intercom", broken)
    registry.open(key, "alice", "websocket", "events", lambda: cut.append("ws"))
    assert registry.end_session(key, "logout") == 2 and cut == ["ws"]


def test_an_unreadable_store_closes_everything_after_the_grace_time() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2)  # nobody there
    registry, _, clock, audit, cut = _setup(store)
    registry.open("k" * 64, "alice", "websocket", "events", lambda: cut.append("ws"))
    registry.check_now()
    assert cut == []  # one failure is not yet an outage
    clock.now += registry.fail_closed_after
    registry.check_now()
    assert cut == ["ws"]
    assert _events(audit, "stream_closed")[0]["why"] == "store-unavailable"
    store.close()
