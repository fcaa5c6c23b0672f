"""The Redis store through Redis Sentinel, against real servers.

A master and a replica (both with ``requirepass``) and a sentinel (with its own
``requirepass``) run on loopback ports picked here.  The store is built the way
the gateway builds it (settings -> ``_build_store``), with the passwords coming
from an environment variable and a file.  The failover test kills the master and
waits for the sentinel to promote the replica; the store follows without being
rebuilt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import _build_store
from gateway.core.errors import StoreUnavailable
from gateway.sessions.redis_store import RedisStore
from gateway.settings import load_settings
from tests.peers import SentinelGroup, free_port, wait_for

pytestmark = pytest.mark.redis


def start_sentinel_set() -> SentinelGroup:
    group = SentinelGroup()
    group.start()
    return group


def _config(tmp_path: Path, group: SentinelGroup) -> Path:
    assert group.sentinel is not None
    password_file = tmp_path / "redis-password"
    password_file.write_text(group.password + "\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""\
session:
  store: redis
  redis_socket_timeout: 0.5
  redis_sentinel:
    master: {group.name}
    sentinels: ["{group.sentinel.address}"]
    password: {{file: {password_file}}}
    sentinel_password: {{env: TEST_SENTINEL_PASSWORD}}
""",
        encoding="utf-8",
    )
    return config


@pytest.fixture
def sentinel_store(
    sentinel_group: SentinelGroup, tmp_path: Path
) -> Iterator[Callable[[], RedisStore]]:
    """``make()`` -> a RedisStore built from settings naming the sentinel."""
    made: list[RedisStore] = []
    config = _config(tmp_path, sentinel_group)
    environ = {"TEST_SENTINEL_PASSWORD": sentinel_group.sentinel_password}

    def make() -> RedisStore:
        store = _build_store(load_settings(config, environ=environ))
        assert isinstance(store, RedisStore)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def test_the_master_is_found_through_the_sentinel(
    sentinel_group: SentinelGroup, sentinel_store: Callable[[], RedisStore]
) -> None:
    store = sentinel_store()
    assert "redis+sentinel://127.0.0.1:" in repr(store)
    assert sentinel_group.password not in repr(store)
    store.ping()
    record: dict[str, Any] = {"identity": {"subject": "alice"}, "n": 1}
    store.put_session("k1", record, 60, "alice")
    assert store.get_session("k1") == record
    assert store.user_sessions("alice") == ["k1"]
    assert store.incr("fail:alice", 60) == 1
    assert store.add_once("saml-id-1", 60) is True
    assert store.add_once("saml-id-1", 60) is False
    # the data is on the master the sentinel named, and replicated
    with sentinel_group.admin(sentinel_group.master) as admin:
        assert admin.exists(b"ssogw:session:k1") == 1
        assert admin.execute_command("WAIT", 1, 2000) == 1
    assert sentinel_group.replica is not None
    with sentinel_group.admin(sentinel_group.replica) as replica:
        assert replica.exists(b"ssogw:session:k1") == 1
    assert store.delete_session("k1") == record
    assert store.get_session("k1") is None


def test_sessions_are_shared_between_stores(sentinel_store: Callable[[], RedisStore]) -> None:
    """Two gateway processes (two stores) see the same sessions."""
    one, two = sentinel_store(), sentinel_store()
    one.put_session("shared", {"v": 1}, 60, "bob")
    assert two.get_session("shared") == {"v": 1}
    assert two.delete_session("shared") == {"v": 1}
    assert one.get_session("shared") is None


def test_invalidations_reach_every_store_through_the_sentinel(
    sentinel_store: Callable[[], RedisStore],
) -> None:
    listener, other = sentinel_store(), sentinel_store()
    got: list[str | None] = []
    healthy = threading.Event()
    arrived = threading.Event()

    def on_key(key: str | None) -> None:
        got.append(key)
        arrived.set()

    listener.subscribe_invalidations(on_key, lambda ok: healthy.set() if ok else healthy.clear())
    assert healthy.wait(5), "the invalidation feed did not come up"
    other.put_session("gone", {"v": 1}, 60, "carol")
    other.delete_session("gone")
    assert arrived.wait(2)
    assert "gone" in got


@pytest.mark.parametrize("what", ["sentinel password", "data password"])
def test_wrong_passwords_fail_closed_without_leaking_them(
    sentinel_group: SentinelGroup, tmp_path: Path, what: str
) -> None:
    config = _config(tmp_path, sentinel_group)
    environ = {"TEST_SENTINEL_PASSWORD": sentinel_group.sentinel_password}
    if what == "sentinel password":
        environ["TEST_SENTINEL_PASSWORD"] = "wrong-sentinel-pw"
    else:
        (tmp_path / "redis-password").write_text("wrong-data-pw\n", encoding="utf-8")
    store = _build_store(load_settings(config, environ=environ))
    try:
        with pytest.raises(StoreUnavailable) as caught:
            store.get_session("k")
        with pytest.raises(StoreUnavailable):
            store.ping()
        message = str(caught.value)
        assert "redis+sentinel://" in message
        secrets = ("wrong-sentinel-pw", "wrong-data-pw")
        for secret in (*secrets, sentinel_group.password, sentinel_group.sentinel_password):
            assert secret not in message
    finally:
        store.close()


def test_no_sentinel_answering_fails_closed(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "session:\n  store: redis\n  redis_socket_timeout: 0.3\n"
        f"  redis_sentinel: {{master: m, sentinels: ['127.0.0.1:{free_port()}']}}\n",
        encoding="utf-8",
    )
    store = _build_store(load_settings(config, environ={}))
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.put_session("k", {}, 60, "u")
        assert time.monotonic() - started < 3
    finally:
        store.close()


def _read(store: RedisStore, key: str) -> dict[str, Any] | None:
    """The record, or None while the store is unavailable (no master yet)."""
    try:
        return store.get_session(key)
    except StoreUnavailable:
        return None


def test_failover_promotes_the_replica_and_the_store_follows(tmp_path: Path) -> None:
    """The master dies; the sentinel promotes the replica; the same store (not
    rebuilt) reads what was written before and writes to the new master, and
    its invalidation feed comes back on the new master."""
    made = start_sentinel_set()
    store: RedisStore | None = None
    try:
        config = _config(tmp_path, made)
        environ = {"TEST_SENTINEL_PASSWORD": made.sentinel_password}
        built = _build_store(load_settings(config, environ=environ))
        assert isinstance(built, RedisStore)
        store = built
        healthy = threading.Event()
        got: list[str | None] = []
        store.subscribe_invalidations(
            got.append, lambda ok: healthy.set() if ok else healthy.clear()
        )
        assert healthy.wait(5)
        store.put_session("before", {"v": "kept"}, 60, "alice")
        with made.admin(made.master) as admin:  # replicated before the master dies
            assert admin.execute_command("WAIT", 1, 2000) == 1
        old_port = made.master.port
        replica = made.replica
        assert replica is not None

        made.master.stop()
        with pytest.raises(StoreUnavailable):  # fails closed while there is no master
            store.get_session("before")
        wait_for(lambda: made.master_port() == replica.port, 20, "the sentinel to fail over")
        assert made.master_port() != old_port

        wait_for(lambda: _read(store, "before") == {"v": "kept"}, 5, "the store to follow")
        store.put_session("after", {"v": "new"}, 60, "alice")
        with made.admin(replica) as promoted:
            assert promoted.exists(b"ssogw:session:after") == 1
        assert healthy.wait(5), "the invalidation feed did not come back"
        with made.admin(replica) as promoted:
            wait_for(
                lambda: promoted.pubsub_numsub(b"ssogw:invalidate")[0][1] >= 1,
                5,
                "the feed to resubscribe on the new master",
            )
        store.delete_session("after")
        wait_for(lambda: "after" in got, 3, "the invalidation through the new master")
    finally:
        if store is not None:
            store.close()
        made.close()
