"""The SessionStore contract, run against every implementation.

The same tests run against the in-process store, the on-disk store (in tmp_path)
and the Redis store (against a real, private redis-server, once with a URL and
once found through a real Redis Sentinel); backend-specific
tests (file layout, corruption, cross-process atomicity, Redis outages) follow.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.errors import StoreUnavailable
from gateway.sessions.file_store import FileStore
from gateway.sessions.memory_store import MemoryStore
from gateway.sessions.redis_store import RedisStore
from gateway.sessions.store import SessionStore
from tests.peers import RedisServer

StoreFactory = Callable[..., SessionStore]

SHORT = 0.3  # ttl of entries that a test lets expire
PAST = 0.45  # a sleep after which SHORT entries are gone
LONG = 60.0

KINDS = [
    "memory",
    "file",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("sentinel", marks=pytest.mark.redis),  # the Redis store through Sentinel
]
PERSISTENT = [
    "file",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("sentinel", marks=pytest.mark.redis),
]

HOSTILE_KEYS = [
    "../../etc/passwd",
    "/etc/shadow",
    "..",
    ".",
    "",
    "a" * 5000,
    "sessión-ключ-🔑",
    "nul\x00byte",
    "new\nline\r\ttab",
    "glob *?[x]\\",
    "ssogw:session:other",
    "\ud800 lone surrogate",
]
SAFE_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def store(store_factory: StoreFactory, kind: str) -> SessionStore:
    return store_factory(kind)


def race(workers: int, job: Callable[[int], Any]) -> list[Any]:
    """Run ``job(i)`` in ``workers`` threads released together; return the results."""
    barrier = threading.Barrier(workers)

    def run(i: int) -> Any:
        barrier.wait(timeout=10)
        return job(i)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, range(workers)))


# -- sessions -----------------------------------------------------------------------


def test_put_get_delete_round_trip(store: SessionStore) -> None:
    record = {"identity": {"subject": "alice", "groups": ["a", "b"]}, "n": 1.5, "ok": True}
    store.put_session("k1", record, LONG, "alice")
    assert store.get_session("k1") == record
    assert store.delete_session("k1") == record
    assert store.get_session("k1") is None
    assert store.delete_session("k1") is None
    assert store.user_sessions("alice") == []


def test_unknown_keys_are_absent(store: SessionStore) -> None:
    assert store.get_session("nope") is None
    assert store.delete_session("nope") is None
    assert store.touch_session("nope", {"x": 1}, LONG, "u") is False
    assert store.get_session("nope") is None  # a touch never creates a session
    assert store.user_sessions("nobody") == []
    assert store.get_counter("nope") == 0
    assert store.pop_value("nope") is None
    store.reset_counter("nope")


def test_records_are_copies(store: SessionStore) -> None:
    record: dict[str, Any] = {"groups": ["a"]}
    store.put_session("k", record, LONG, "alice")
    record["groups"].append("admin")
    got = store.get_session("k")
    assert got == {"groups": ["a"]}
    assert got is not None
    got["groups"].append("admin")
    assert store.get_session("k") == {"groups": ["a"]}


def test_put_replaces_and_moves_between_users(store: SessionStore) -> None:
    store.put_session("k", {"v": 1}, LONG, "alice")
    store.put_session("k", {"v": 2}, LONG, "alice")
    assert store.get_session("k") == {"v": 2}
    assert store.user_sessions("alice") == ["k"]
    store.put_session("k", {"v": 3}, LONG, "bob")
    assert store.user_sessions("alice") == []
    assert store.user_sessions("bob") == ["k"]
    assert store.delete_session("k") == {"v": 3}
    assert store.user_sessions("bob") == []


def test_touch_replaces_only_live_sessions(store: SessionStore) -> None:
    store.put_session("k", {"seen": 1}, SHORT, "alice")
    store.put_session("short", {"seen": 1}, SHORT, "alice")
    store.put_session("gone", {"seen": 1}, LONG, "alice")
    assert store.touch_session("k", {"seen": 2}, LONG, "alice") is True
    assert store.delete_session("gone") == {"seen": 1}
    assert store.touch_session("gone", {"seen": 2}, LONG, "alice") is False  # no resurrection
    assert store.get_session("gone") is None
    time.sleep(PAST)
    assert store.get_session("k") == {"seen": 2}  # the touch extended the ttl...
    assert store.user_sessions("alice") == ["k"]  # ...and the index entry, same user
    assert store.touch_session("short", {"seen": 2}, LONG, "alice") is False
    assert store.get_session("short") is None


def test_entries_expire(store: SessionStore) -> None:
    store.put_session("short", {"v": 1}, SHORT, "alice")
    store.put_session("long", {"v": 2}, LONG, "alice")
    store.put_value("value", {"v": 3}, SHORT)
    assert store.add_once("nonce", SHORT) is True
    assert store.user_sessions("alice") == ["short", "long"]  # ordered by expiry
    time.sleep(PAST)
    assert store.get_session("short") is None
    assert store.delete_session("short") is None
    assert store.user_sessions("alice") == ["long"]
    assert dict(store.iter_sessions()) == {"long": {"v": 2}}
    assert store.pop_value("value") is None
    assert store.add_once("nonce", SHORT) is True


def test_revoke_all_sessions_of_a_user(store: SessionStore) -> None:
    for i in range(3):
        store.put_session(f"alice-{i}", {"i": i}, LONG, "alice")
    store.put_session("bob-0", {"i": 0}, LONG, "bob")
    assert sorted(store.user_sessions("alice")) == ["alice-0", "alice-1", "alice-2"]
    for key in store.user_sessions("alice"):
        assert store.delete_session(key) is not None
    assert store.user_sessions("alice") == []
    assert all(store.get_session(f"alice-{i}") is None for i in range(3))
    assert store.user_sessions("bob") == ["bob-0"]
    assert store.get_session("bob-0") == {"i": 0}


def test_iter_sessions_lists_every_live_session(store: SessionStore) -> None:
    expected = {f"key-{i:04d}": {"i": i} for i in range(600)}
    for i, (key, record) in enumerate(expected.items()):
        store.put_session(key, record, LONG, f"user-{i % 7}")
    listed = list(store.iter_sessions())
    assert len(listed) == len(expected)
    assert dict(listed) == expected


def test_iter_sessions_tolerates_deletion_while_iterating(store: SessionStore) -> None:
    for i in range(20):
        store.put_session(f"k{i}", {"i": i}, LONG, "alice")
    for key, _ in store.iter_sessions():
        store.delete_session(key)
    assert list(store.iter_sessions()) == []
    assert store.user_sessions("alice") == []


# -- counters ------------------------------------------------------------------------


def test_counters(store: SessionStore) -> None:
    assert [store.incr("c", LONG) for _ in range(3)] == [1, 2, 3]
    assert store.get_counter("c") == 3
    assert store.get_counter("other") == 0
    store.reset_counter("c")
    assert store.get_counter("c") == 0
    assert store.incr("c", LONG) == 1


def test_counter_window_is_fixed_by_the_first_increment(store: SessionStore) -> None:
    assert store.incr("c", 0.5) == 1
    time.sleep(0.3)
    assert store.incr("c", 0.5) == 2  # does not push the window out
    time.sleep(0.3)
    assert store.get_counter("c") == 0
    assert store.incr("c", 0.5) == 1


def test_concurrent_increments_are_all_counted(store: SessionStore) -> None:
    race(8, lambda _: [store.incr("c", LONG) for _ in range(25)])
    assert store.get_counter("c") == 200


# -- short-lived values --------------------------------------------------------------


def test_values_are_popped_once(store: SessionStore) -> None:
    store.put_value("state", {"nonce": "n", "next": "/x"}, LONG)
    assert store.pop_value("state") == {"nonce": "n", "next": "/x"}
    assert store.pop_value("state") is None
    store.put_value("state", {"v": 1}, LONG)
    store.put_value("state", {"v": 2}, LONG)
    assert store.pop_value("state") == {"v": 2}


def test_concurrent_pop_has_exactly_one_winner(store: SessionStore) -> None:
    keys = [f"state-{i}" for i in range(30)]
    for key in keys:
        store.put_value(key, {"key": key}, LONG)
    results = race(8, lambda _: {k: v for k in keys if (v := store.pop_value(k)) is not None})
    for key in keys:
        winners = [r[key] for r in results if key in r]
        assert winners == [{"key": key}], key


def test_add_once_detects_replays(store: SessionStore) -> None:
    assert store.add_once("assertion-1", LONG) is True
    assert store.add_once("assertion-1", LONG) is False
    assert store.add_once("assertion-2", LONG) is True
    assert store.add_once("assertion-1", LONG) is False  # expiry: test_entries_expire


def test_concurrent_add_once_has_exactly_one_winner(store: SessionStore) -> None:
    for n in range(10):
        key = f"nonce-{n}"
        results = race(8, lambda _: store.add_once(key, LONG))  # noqa: B023 - run at once
        assert sorted(results) == [False] * 7 + [True]


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf])
def test_nonsense_ttls_are_refused(store: SessionStore, ttl: float) -> None:
    with pytest.raises(ValueError):
        store.put_session("k", {}, ttl, "alice")
    with pytest.raises(ValueError):
        store.incr("c", ttl)
    with pytest.raises(ValueError):
        store.put_value("v", {}, ttl)
    with pytest.raises(ValueError):
        store.add_once("o", ttl)
    store.put_session("k", {}, LONG, "alice")
    with pytest.raises(ValueError):
        store.touch_session("k", {}, ttl, "alice")
    assert store.get_session("k") == {}
    assert store.get_counter("c") == 0
    assert store.pop_value("v") is None


# -- keys, restarts, health ------------------------------------------------------------


def test_hostile_keys_round_trip(store: SessionStore, kind: str, tmp_path: Path) -> None:
    for n, key in enumerate(HOSTILE_KEYS):
        store.put_session(key, {"key": key}, LONG, key)
        store.put_value(key, {"key": key}, LONG)
        assert store.incr(key, LONG) == 1
        assert store.add_once(key, LONG) is True
        assert store.get_session(key) == {"key": key}, n
        assert store.user_sessions(key) == [key], n
    assert dict(store.iter_sessions()) == {key: {"key": key} for key in HOSTILE_KEYS}
    for n, key in enumerate(HOSTILE_KEYS):
        assert store.get_counter(key) == 1, n
        assert store.add_once(key, LONG) is False, n
        assert store.pop_value(key) == {"key": key}, n
        assert store.touch_session(key, {"key": key, "touched": True}, LONG, key) is True, n
        assert store.delete_session(key) == {"key": key, "touched": True}, n
        assert store.user_sessions(key) == [], n
    if kind == "file":
        assert [p.name for p in tmp_path.iterdir()] == ["store"]
        for path in (tmp_path / "store").rglob("*"):
            assert all(SAFE_NAME.fullmatch(part) for part in path.parts[len(tmp_path.parts) :])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=8,
)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=200)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=ANY_TEXT, user=ANY_TEXT, record=st.dictionaries(st.text(), JSON_VALUES, max_size=5))
def test_any_key_and_record_round_trip(
    store: SessionStore, key: str, user: str, record: dict[str, Any]
) -> None:
    store.put_session(key, record, LONG, user)
    assert store.get_session(key) == record
    assert key in store.user_sessions(user)
    store.put_value(key, record, LONG)
    assert store.pop_value(key) == record
    assert store.delete_session(key) == record
    assert key not in store.user_sessions(user)


@pytest.mark.parametrize("kind", PERSISTENT)
def test_data_survives_a_new_store_instance(store_factory: StoreFactory, kind: str) -> None:
    first = store_factory(kind)
    first.put_session("k", {"v": 1}, LONG, "alice")
    first.incr("c", LONG)
    first.put_value("v", {"v": 2}, LONG)
    first.add_once("o", LONG)
    first.close()
    second = store_factory(kind)
    assert second.get_session("k") == {"v": 1}
    assert second.user_sessions("alice") == ["k"]
    assert dict(second.iter_sessions()) == {"k": {"v": 1}}
    assert second.incr("c", LONG) == 2
    assert second.pop_value("v") == {"v": 2}
    assert second.add_once("o", LONG) is False


def test_ping_answers(store: SessionStore) -> None:
    store.ping()


def test_records_must_be_json(store: SessionStore) -> None:
    with pytest.raises(TypeError):
        store.put_session("k", {"when": object()}, LONG, "alice")
    with pytest.raises(TypeError):
        store.put_value("v", {"when": object()}, LONG)
    assert store.get_session("k") is None
    assert store.user_sessions("alice") == []


# -- the on-disk store -----------------------------------------------------------------


def _entry_file(root: Path, kind: str, key: str) -> Path:
    name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest() + ".json"
    return root / kind / name


def test_file_store_permissions(tmp_path: Path) -> None:
    root = tmp_path / "a" / "store"
    store = FileStore(root)
    store.put_session("k", {}, LONG, "alice")
    store.incr("c", LONG)
    store.put_value("v", {}, LONG)
    store.add_once("o", LONG)
    assert root.stat().st_mode & 0o777 == 0o700
    for path in root.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert path.stat().st_mode & 0o777 == expected, path


def test_file_store_tightens_a_loose_directory(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    FileStore(root)
    assert root.stat().st_mode & 0o777 == 0o700


def test_file_store_corrupt_files_read_as_absent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    for key in ("torn", "wrong-shape", "moved"):
        store.put_session(key, {"key": key}, LONG, "alice")
    store.put_session("good", {"key": "good"}, LONG, "alice")
    _entry_file(root, "sessions", "torn").write_bytes(b'{"key": "torn", "rec')
    _entry_file(root, "sessions", "wrong-shape").write_text('["a list"]')
    _entry_file(root, "sessions", "moved").write_bytes(
        _entry_file(root, "sessions", "good").read_bytes()
    )
    with caplog.at_level("WARNING", logger="gateway.sessions.file_store"):
        for key in ("torn", "wrong-shape", "moved"):
            assert store.get_session(key) is None, key
        assert dict(store.iter_sessions()) == {"good": {"key": "good"}}
    assert "corrupt" in caplog.text
    assert store.delete_session("good") == {"key": "good"}
    store.put_session("torn", {"fresh": True}, LONG, "alice")  # a corrupt file is replaced
    assert store.get_session("torn") == {"fresh": True}


def test_file_store_rebuilds_a_corrupt_user_index(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    store.put_session("a1", {}, LONG, "alice")
    store.put_session("a2", {}, LONG, "alice")
    store.put_session("b1", {}, LONG, "bob")
    _entry_file(root, "users", "alice").write_bytes(b"\x00garbage")
    assert sorted(store.user_sessions("alice")) == ["a1", "a2"]  # revoke-all still works
    assert json.loads(_entry_file(root, "users", "alice").read_text())["user"] == "alice"


def test_file_store_corrupt_counters_values_and_markers(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    store.incr("c", LONG)
    store.put_value("v", {"v": 1}, LONG)
    store.add_once("o", LONG)
    for kind, key in (("counters", "c"), ("values", "v"), ("once", "o")):
        _entry_file(root, kind, key).write_text("{not json")
    assert store.get_counter("c") == 0
    assert store.incr("c", LONG) == 1
    assert store.pop_value("v") is None
    assert not list((root / "values").iterdir())
    assert store.add_once("o", LONG) is False  # a replay marker fails closed
    assert store.add_once("o", LONG) is False


def test_file_store_unusable_directory_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    store.put_session("k", {}, LONG, "alice")
    (root / "old").mkdir()
    (root / "sessions").rename(root / "old" / "sessions")
    (root / "sessions").write_text("not a directory")
    for call in (
        lambda: store.get_session("k"),
        lambda: store.put_session("k", {}, LONG, "alice"),
        lambda: list(store.iter_sessions()),
        store.ping,
    ):
        with pytest.raises(StoreUnavailable):
            call()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreUnavailable):
        FileStore(blocker / "store")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_file_store_read_only_directory_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    (root / "values").chmod(0o500)
    try:
        with pytest.raises(StoreUnavailable):
            store.put_value("v", {}, LONG)
    finally:
        (root / "values").chmod(0o700)


def test_file_store_recreates_a_removed_sub_directory(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    (root / "values").rmdir()
    store.put_value("v", {"v": 1}, LONG)
    assert store.pop_value("v") == {"v": 1}


def test_file_store_removes_expired_entries(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    store.put_session("lazy", {}, SHORT, "alice")
    store.put_session("swept", {}, SHORT, "bob")
    store.put_session("kept", {}, LONG, "carol")
    store.incr("c", SHORT)
    store.put_value("v", {}, SHORT)
    store.add_once("o", SHORT)
    stale = root / "values" / ".tmp-left-by-a-crash"
    stale.write_text("{}")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    time.sleep(PAST)
    assert store.get_session("lazy") is None
    assert not _entry_file(root, "sessions", "lazy").exists()  # removed lazily
    assert not _entry_file(root, "users", "alice").exists()
    assert store.purge_expired() == 4  # swept session, counter, value, marker
    assert [p.name for p in (root / "sessions").iterdir()] == [
        _entry_file(root, "sessions", "kept").name
    ]
    assert [p.name for p in (root / "users").iterdir()] == [
        _entry_file(root, "users", "carol").name
    ]
    for kind in ("counters", "values", "once"):
        assert not list((root / kind).iterdir()), kind


def _pop_in_process(directory: str, keys: list[str], barrier: Any, results: Any) -> None:
    store = FileStore(Path(directory))
    barrier.wait(timeout=60)
    results.put([key for key in keys if store.pop_value(key) is not None])


def _incr_in_process(directory: str, times: int, barrier: Any, results: Any) -> None:
    store = FileStore(Path(directory))
    barrier.wait(timeout=60)
    results.put([store.incr("shared", LONG) for _ in range(times)])


def _run_processes(target: Callable[..., None], args: tuple[Any, ...], count: int) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(count), ctx.Queue()
    processes = [ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(count)]
    for process in processes:
        process.start()
    try:
        return [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        assert [p.exitcode for p in processes] == [0] * count


def test_file_store_pop_is_atomic_across_processes(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    keys = [f"state-{i}" for i in range(300)]
    for key in keys:
        store.put_value(key, {"key": key}, LONG)
    won = _run_processes(_pop_in_process, (str(tmp_path / "store"), keys), 2)
    assert sorted(won[0] + won[1]) == sorted(keys)  # every value popped exactly once


def test_file_store_increments_are_atomic_across_processes(tmp_path: Path) -> None:
    FileStore(tmp_path / "store")
    seen = _run_processes(_incr_in_process, (str(tmp_path / "store"), 100), 2)
    assert sorted(seen[0] + seen[1]) == list(range(1, 201))


def test_memory_store_purge_expired() -> None:
    store = MemoryStore()
    store.put_session("s", {}, SHORT, "alice")
    store.incr("c", SHORT)
    store.put_value("v", {}, SHORT)
    store.add_once("o", SHORT)
    store.put_session("kept", {}, LONG, "bob")
    time.sleep(PAST)
    assert store.purge_expired() == 4
    assert store.user_sessions("alice") == []
    assert dict(store.iter_sessions()) == {"kept": {}}


# -- the Redis store --------------------------------------------------------------------


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.mark.redis
def test_redis_layout_and_expiry(redis_url: str, admin: redis.Redis) -> None:
    store = RedisStore(redis_url)
    store.put_session("k1", {}, 10, "alice")
    store.put_session("k2", {}, 20, "alice")
    store.put_session("k3", {}, 5, "alice")
    assert admin.type("ssogw:user:alice") == b"zset"
    assert 19_000 < admin.pttl("ssogw:user:alice") <= 20_000  # the longest session
    assert 9_000 < admin.pttl("ssogw:session:k1") <= 10_000
    store.incr("c", 1.0)
    time.sleep(0.2)
    store.incr("c", 1.0)
    assert admin.pttl("ssogw:counter:c") <= 800
    store.close()


@pytest.mark.redis
def test_redis_get_session_is_a_single_command(redis_url: str, admin: redis.Redis) -> None:
    store = RedisStore(redis_url)
    store.put_session("k", {"v": 1}, LONG, "alice")
    assert store.get_session("k") == {"v": 1}  # the connection is set up by now

    def processed() -> int:
        return int(admin.info("stats")["total_commands_processed"])

    before = processed()
    info_cost = processed() - before
    before = processed()
    for _ in range(10):
        store.get_session("k")
    assert processed() - before - info_cost == 10
    store.close()


@pytest.mark.redis
def test_redis_garbage_is_unavailable(redis_url: str, admin: redis.Redis) -> None:
    store = RedisStore(redis_url)
    admin.set("ssogw:session:text", b"not json")
    admin.set("ssogw:session:list", b"[1, 2]")
    admin.set("ssogw:session:shape", b'{"user": 1, "record": {}}')
    admin.rpush("ssogw:session:type", b"x")
    for key in ("text", "list", "shape", "type"):
        with pytest.raises(StoreUnavailable):
            store.get_session(key)
        with pytest.raises(StoreUnavailable):
            store.delete_session(key)
    with pytest.raises(StoreUnavailable):
        list(store.iter_sessions())
    admin.set("ssogw:counter:c", b"many")
    with pytest.raises(StoreUnavailable):
        store.get_counter("c")
    with pytest.raises(StoreUnavailable):
        store.incr("c", LONG)
    admin.set("ssogw:value:v", b"\xff\xfe")
    with pytest.raises(StoreUnavailable):
        store.pop_value("v")
    store.close()


@pytest.mark.redis
def test_redis_prefixes_keep_stores_apart(redis_url: str) -> None:
    one = RedisStore(redis_url, prefix="one*[x]:")
    two = RedisStore.from_url(redis_url, prefix="two:")
    one.put_session("k", {"who": 1}, LONG, "alice")
    two.put_session("k", {"who": 2}, LONG, "alice")
    assert dict(one.iter_sessions()) == {"k": {"who": 1}}
    assert dict(two.iter_sessions()) == {"k": {"who": 2}}
    assert one.delete_session("k") == {"who": 1}
    assert two.user_sessions("alice") == ["k"]
    one.close()
    two.close()


@pytest.mark.redis
def test_redis_store_leaves_a_supplied_client_open(redis_url: str, admin: redis.Redis) -> None:
    store = RedisStore("redis://user:secret@elsewhere:1/0", client=admin)
    store.put_value("v", {"v": 1}, LONG)
    store.close()
    assert admin.ping()
    assert store.pop_value("v") == {"v": 1}
    assert "secret" not in repr(store)


@pytest.mark.redis
def test_redis_outage_fails_fast_and_recovers(redis_server: RedisServer, redis_url: str) -> None:
    store = RedisStore(redis_url, socket_timeout=0.5)
    store.put_session("k", {"v": 1}, LONG, "alice")
    calls: list[Callable[[], object]] = [
        store.ping,
        lambda: store.put_session("k2", {}, LONG, "alice"),
        lambda: store.get_session("k"),
        lambda: store.touch_session("k", {}, LONG, "u"),
        lambda: store.delete_session("k"),
        lambda: store.user_sessions("alice"),
        lambda: list(store.iter_sessions()),
        lambda: store.incr("c", LONG),
        lambda: store.get_counter("c"),
        lambda: store.reset_counter("c"),
        lambda: store.put_value("v", {}, LONG),
        lambda: store.pop_value("v"),
        lambda: store.add_once("o", LONG),
    ]
    redis_server.stop()
    try:
        for n, call in enumerate(calls):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                call()
            assert time.monotonic() - started < 3, n
            assert "redis://127.0.0.1" in str(caught.value)
    finally:
        redis_server.start()
    store.ping()  # the same instance, no reconstruction
    store.put_session("k", {"v": 2}, LONG, "alice")
    assert store.get_session("k") == {"v": 2}
    store.close()


@pytest.mark.redis
def test_redis_restart_between_calls_is_invisible(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(redis_url)
    store.put_value("v", {}, LONG)
    assert store.pop_value("v") == {}  # leaves a pooled connection behind
    redis_server.stop()
    redis_server.start()
    store.put_session("k", {"v": 1}, LONG, "alice")  # the stale connection is replaced
    assert store.get_session("k") == {"v": 1}
    store.close()


@pytest.mark.redis
def test_redis_hung_server_times_out(redis_server: RedisServer, redis_url: str) -> None:
    store = RedisStore(redis_url, socket_timeout=0.3)
    store.put_session("k", {"v": 1}, LONG, "alice")
    redis_server.pause()
    try:
        calls: list[Callable[[], object]] = [lambda: store.get_session("k"), store.ping]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - started < 1.5
    finally:
        redis_server.resume()
    assert store.get_session("k") == {"v": 1}
    store.close()
