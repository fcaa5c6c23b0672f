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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway import _build_store
from gateway.core.errors import StoreUnavailable
from gateway.sessions.redis_store import RedisStore
from gateway.settings import load_settings
from tests.peers import RedisServer, SentinelServer, require_binary

pytestmark = pytest.mark.redis

DATA_PASSWORD = "data-node-pw-7f3a"
SENTINEL_PASSWORD = "sentinel-pw-91c2"
MASTER_NAME = "ssogw-master"


@dataclass
class SentinelSet:
    master: RedisServer
    replica: RedisServer
    sentinel: SentinelServer

    def close(self) -> None:
        self.sentinel.close()
        self.replica.close()
        self.master.close()

    def admin(self, server: RedisServer) -> redis.Redis:
        return redis.Redis(port=server.port, password=DATA_PASSWORD, socket_timeout=2)

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel.port, password=SENTINEL_PASSWORD, socket_timeout=2)

    def master_port(self) -> int:
        with self.sentinel_client() as client:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        assert host in (b"127.0.0.1", "127.0.0.1")
        return int(port)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError, StoreUnavailable):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_sentinel_set() -> SentinelSet:
    """Master, replica (in sync) and a sentinel that knows both."""
    binary = require_binary("redis-server", "the Sentinel tests need a real redis-server")
    # no 5 s wait before the first (diskless) sync of the replica
    master = RedisServer(binary, password=DATA_PASSWORD, args=["--repl-diskless-sync-delay", "0"])
    made = SentinelSet(master, None, None)  # type: ignore[arg-type]
    try:
        master.start()
        made.replica = RedisServer(
            binary,
            password=DATA_PASSWORD,
            args=["--replicaof", "127.0.0.1", str(master.port), "--masterauth", DATA_PASSWORD],
        )
        made.replica.start()
        with made.admin(made.replica) as replica:
            _wait(
                lambda: replica.info("replication")["master_link_status"] == "up",
                10,
                "the replica to sync",
            )
        made.sentinel = SentinelServer(master, name=MASTER_NAME, password=SENTINEL_PASSWORD)
        made.sentinel.start()

        def replica_known() -> bool:
            with made.sentinel_client() as client:
                replicas = client.sentinel_slaves(MASTER_NAME)
            return any(
                r.get("is_slave") and not r.get("is_disconnected") and not r.get("is_sdown")
                for r in replicas
            )

        _wait(replica_known, 15, "the sentinel to see the replica")
    except BaseException:
        for part in (made.sentinel, made.replica, master):
            if part is not None:
                part.close()
        raise
    return made


@pytest.fixture(scope="module")
def sentinel_set() -> Iterator[SentinelSet]:
    made = start_sentinel_set()
    try:
        yield made
    finally:
        made.close()


def _config(tmp_path: Path, sentinel: SentinelServer, extra: str = "") -> Path:
    password_file = tmp_path / "redis-password"
    password_file.write_text(DATA_PASSWORD + "\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""\
session:
  store: redis
  redis_socket_timeout: 0.5
  redis_sentinel:
    master: {MASTER_NAME}
    sentinels: ["{sentinel.address}"]
    password: {{file: {password_file}}}
    sentinel_password: {{env: TEST_SENTINEL_PASSWORD}}
{extra}""",
        encoding="utf-8",
    )
    return config


@pytest.fixture
def sentinel_store(sentinel_set: SentinelSet, tmp_path: Path) -> Iterator[Callable[[], RedisStore]]:
    """``make()`` -> a RedisStore built from settings naming the sentinel."""
    with sentinel_set.admin(sentinel_set.master) as admin:
        admin.flushall()
    made: list[RedisStore] = []
    config = _config(tmp_path, sentinel_set.sentinel)

    def make() -> RedisStore:
        settings = load_settings(config, environ={"TEST_SENTINEL_PASSWORD": SENTINEL_PASSWORD})
        store = _build_store(settings)
        assert isinstance(store, RedisStore)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def test_the_master_is_found_through_the_sentinel(
    sentinel_set: SentinelSet, sentinel_store: Callable[[], RedisStore]
) -> None:
    store = sentinel_store()
    assert "redis+sentinel://127.0.0.1:" in repr(store)
    assert DATA_PASSWORD not in repr(store)
    store.ping()
    record: dict[str, Any] = {"identity": {"subject": "alice"}, "n": 1}
    store.put_session("k1", record, 60, "alice")
    assert store.get_session("k1") == record
    assert store.user_sessions("alice") == ["k1"]
    assert store.incr("fail:alice", 60) == 1
    assert store.add_once("saml-id-1", 60) is True
    assert store.add_once("saml-id-1", 60) is False
    # the data is on the master the sentinel named, and replicated
    with sentinel_set.admin(sentinel_set.master) as admin:
        assert admin.exists(b"ssogw:session:k1") == 1
        assert admin.execute_command("WAIT", 1, 2000) == 1
    with sentinel_set.admin(sentinel_set.replica) as replica:
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


@pytest.mark.parametrize(
    ("environ", "what"),
    [
        ({"TEST_SENTINEL_PASSWORD": "wrong-sentinel-pw"}, "sentinel password"),
        ({"TEST_SENTINEL_PASSWORD": SENTINEL_PASSWORD}, "data password"),
    ],
)
def test_wrong_passwords_fail_closed_without_leaking_them(
    sentinel_set: SentinelSet, tmp_path: Path, environ: dict[str, str], what: str
) -> None:
    config = _config(tmp_path, sentinel_set.sentinel)
    if what == "data password":
        (tmp_path / "redis-password").write_text("wrong-data-pw\n", encoding="utf-8")
    store = _build_store(load_settings(config, environ=environ))
    try:
        with pytest.raises(StoreUnavailable) as caught:
            store.get_session("k")
        with pytest.raises(StoreUnavailable):
            store.ping()
        message = str(caught.value)
        assert "redis+sentinel://" in message
        for secret in ("wrong-sentinel-pw", "wrong-data-pw", DATA_PASSWORD, SENTINEL_PASSWORD):
            assert secret not in message
    finally:
        store.close()


def test_no_sentinel_answering_fails_closed(tmp_path: Path) -> None:
    from tests.peers import free_port

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


def test_failover_promotes_the_replica_and_the_store_follows(tmp_path: Path) -> None:
    """The master dies; the sentinel promotes the replica; the same store (not
    rebuilt) reads what was written before and writes to the new master, and
    its invalidation feed comes back on the new master."""
    made = start_sentinel_set()
    store: RedisStore | None = None
    try:
        config = _config(tmp_path, made.sentinel)
        environ = {"TEST_SENTINEL_PASSWORD": SENTINEL_PASSWORD}
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

        made.master.stop()
        with pytest.raises(StoreUnavailable):  # fails closed while there is no master
            store.get_session("before")
        _wait(lambda: made.master_port() == made.replica.port, 20, "the sentinel to fail over")
        assert made.master_port() != old_port

        _wait(lambda: store.get_session("before") == {"v": "kept"}, 5, "the store to follow")
        store.put_session("after", {"v": "new"}, 60, "alice")
        with made.admin(made.replica) as promoted:
            assert promoted.exists(b"ssogw:session:after") == 1
        assert healthy.wait(5), "the invalidation feed did not come back"
        with made.admin(made.replica) as promoted:
            _wait(
                lambda: promoted.pubsub_numsub(b"ssogw:invalidate")[0][1] >= 1,
                5,
                "the feed to resubscribe on the new master",
            )
        store.delete_session("after")
        _wait(lambda: "after" in got, 3, "the invalidation through the new master")
    finally:
        if store is not None:
            store.close()
        made.close()
