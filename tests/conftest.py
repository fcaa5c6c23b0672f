"""Fixtures shared by every test directory (sub-directories add their own)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.sessions.file_store import FileStore
from gateway.sessions.memory_store import MemoryStore
from gateway.sessions.redis_store import RedisStore
from gateway.sessions.store import SessionStore
from tests.peers import RedisServer, SentinelGroup, require_binary

StoreFactory = Callable[..., SessionStore]
STORE_KINDS = ("memory", "file", "redis", "sentinel")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole run (never the machine's own)."""
    binary = require_binary("redis-server", "the Redis session store tests need a real Redis")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared redis-server, running and empty for this test."""
    redis_server.start()  # an outage test may have left it stopped
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_sentinel_group() -> Iterator[SentinelGroup]:
    """A private Redis master, replica and sentinel for the whole run."""
    binary = require_binary("redis-server", "the Redis Sentinel tests need a real Redis")
    group = SentinelGroup(binary)
    group.start()
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def sentinel_group(redis_sentinel_group: SentinelGroup) -> SentinelGroup:
    """The shared Sentinel group, its master empty for this test."""
    redis_sentinel_group.flush()
    return redis_sentinel_group


@pytest.fixture
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """``store_factory(kind, **options)`` builds a store ("memory", "file", "redis", or
    "sentinel": the Redis store built through a real Redis Sentinel).

    Stores of the same kind made in one test share their data (same directory,
    same Redis), like a restarted process would; all are closed afterwards.
    """
    made: list[SessionStore] = []

    def make(kind: str, **options: Any) -> SessionStore:
        store: SessionStore
        if kind == "memory":
            store = MemoryStore(**options)
        elif kind == "file":
            store = FileStore(tmp_path / "store", **options)
        elif kind == "redis":
            store = RedisStore(request.getfixturevalue("redis_url"), **options)
        elif kind == "sentinel":
            group: SentinelGroup = request.getfixturevalue("sentinel_group")
            store = RedisStore.from_sentinel(
                group.name,
                group.sentinels,
                password=group.password,
                sentinel_password=group.sentinel_password,
                **options,
            )
        else:
            raise ValueError(f"unknown store kind {kind!r}")
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
