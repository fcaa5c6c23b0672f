"""Login throttling per username and per client address."""

from __future__ import annotations

import hashlib
import time

import pytest

from gateway.core.errors import AuthenticationFailed, StoreUnavailable, Throttled
from gateway.sessions.memory_store import MemoryStore
from gateway.throttle import LoginThrottle


def make_store() -> MemoryStore:
    return MemoryStore()


IP = "192.0.2.10"
OTHER_IP = "198.51.100.7"


def throttle_with(
    store: object,
    *,
    max_user_failures: int = 5,
    max_client_failures: int = 20,
    window: float = 900,
) -> LoginThrottle:
    return LoginThrottle(
        store,  # type: ignore[arg-type]  # only the counter methods are needed
        max_user_failures=max_user_failures,
        max_client_failures=max_client_failures,
        window=window,
    )


def reason(throttle: LoginThrottle, username: str, ip: str) -> str | None:
    try:
        throttle.check(username, ip)
    except Throttled as exc:
        return exc.reason
    return None


def test_user_is_locked_out_after_max_failures() -> None:
    throttle = throttle_with(make_store(), max_user_failures=3, max_client_failures=100)
    for _ in range(2):
        throttle.check("alice", IP)
        throttle.record_failure("alice", IP)
    throttle.check("alice", IP)  # two failures: still allowed
    throttle.record_failure("alice", IP)
    assert reason(throttle, "alice", IP) == "throttled-user"
    # from any address, in any spelling
    assert reason(throttle, "ALICE", OTHER_IP) == "throttled-user"
    # other users are not affected
    assert reason(throttle, "bob", OTHER_IP) is None


def test_client_is_locked_out_after_max_failures() -> None:
    throttle = throttle_with(make_store(), max_user_failures=100, max_client_failures=4)
    for i in range(4):
        throttle.check(f"user{i}", IP)
        throttle.record_failure(f"user{i}", IP)
    assert reason(throttle, "someone-new", IP) == "throttled-client"
    assert reason(throttle, "someone-new", OTHER_IP) is None


def test_throttled_is_an_authentication_failure() -> None:
    throttle = throttle_with(make_store(), max_user_failures=1)
    throttle.record_failure("alice", IP)
    with pytest.raises(AuthenticationFailed):
        throttle.check("alice", IP)


def test_unknown_usernames_are_counted_too() -> None:
    store = make_store()
    throttle = throttle_with(store, max_user_failures=2)
    throttle.record_failure("no-such-user", IP)
    throttle.record_failure("no-such-user", IP)
    assert reason(throttle, "no-such-user", IP) == "throttled-user"


def test_keys_hash_the_lowercased_username() -> None:
    store = make_store()
    throttle = throttle_with(store)
    throttle.record_failure("Alice", IP)
    digest = hashlib.sha256(b"alice").hexdigest()
    assert store.get_counter(f"throttle:user:{digest}") == 1
    assert store.get_counter(f"throttle:ip:{IP}") == 1
    assert store.get_counter("throttle:user:alice") == 0
    assert store.get_counter("throttle:user:Alice") == 0


def test_window_expiry_forgets_failures() -> None:
    throttle = throttle_with(make_store(), max_user_failures=2, max_client_failures=2, window=0.3)
    throttle.record_failure("alice", IP)
    throttle.record_failure("alice", IP)
    assert reason(throttle, "alice", IP) == "throttled-user"
    deadline = time.monotonic() + 5
    while reason(throttle, "alice", IP) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reason(throttle, "alice", IP) is None


def test_success_resets_user_counter_but_not_client_counter() -> None:
    store = make_store()
    throttle = throttle_with(store, max_user_failures=3, max_client_failures=3)
    throttle.record_failure("alice", IP)
    throttle.record_failure("alice", IP)
    throttle.record_success("alice", IP)
    # the user's count starts over ...
    throttle.record_failure("alice", OTHER_IP)
    throttle.record_failure("alice", OTHER_IP)
    assert reason(throttle, "alice", "203.0.113.1") is None
    # ... the address still carries its two earlier failures
    throttle.record_failure("bob", IP)
    assert reason(throttle, "carol", IP) == "throttled-client"


def test_user_limit_is_checked_before_client_limit() -> None:
    throttle = throttle_with(make_store(), max_user_failures=1, max_client_failures=1)
    throttle.record_failure("alice", IP)
    assert reason(throttle, "alice", IP) == "throttled-user"
    assert reason(throttle, "bob", IP) == "throttled-client"


class BrokenStore:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def incr(self, key: str, window: float) -> int:
        raise self.error

    def get_counter(self, key: str) -> int:
        raise self.error

    def reset_counter(self, key: str) -> None:
        raise self.error


@pytest.mark.parametrize("error", [StoreUnavailable("down"), ConnectionError("refused")])
def test_store_errors_surface_as_store_unavailable(error: Exception) -> None:
    throttle = throttle_with(BrokenStore(error))
    with pytest.raises(StoreUnavailable):
        throttle.check("alice", IP)
    with pytest.raises(StoreUnavailable):
        throttle.record_failure("alice", IP)
    with pytest.raises(StoreUnavailable):
        throttle.record_success("alice", IP)


class GarbageStore(MemoryStore):
    def get_counter(self, key: str) -> int:
        return "3"  # type: ignore[return-value]


def test_garbage_counter_fails_closed() -> None:
    throttle = throttle_with(GarbageStore())
    with pytest.raises(StoreUnavailable):
        throttle.check("alice", IP)


@pytest.mark.parametrize(
    ("users", "clients", "window"),
    [(0, 20, 900.0), (5, 0, 900.0), (5, 20, 0.0), (5, 20, -1.0), (True, 20, 900.0)],
)
def test_invalid_limits_are_refused(users: int, clients: int, window: float) -> None:
    with pytest.raises(ValueError):
        throttle_with(
            make_store(), max_user_failures=users, max_client_failures=clients, window=window
        )


def test_begin_counts_concurrent_attempts_atomically() -> None:
    """Twenty simultaneous guesses at one account: only the first five get a
    password check, however the threads interleave."""
    import threading

    from gateway.core.errors import Throttled
    from gateway.sessions.memory_store import MemoryStore
    from gateway.throttle import LoginThrottle

    throttle = LoginThrottle(MemoryStore(), max_user_failures=5, max_client_failures=100)
    admitted: list[int] = []
    start = threading.Barrier(20)

    def attempt(n: int) -> None:
        start.wait()
        try:
            throttle.begin("alice", f"10.0.0.{n}")
        except Throttled:
            return
        admitted.append(n)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 5


def test_begin_failed_succeeded_cycle() -> None:
    from gateway.core.errors import Throttled
    from gateway.sessions.memory_store import MemoryStore
    from gateway.throttle import LoginThrottle

    throttle = LoginThrottle(MemoryStore(), max_user_failures=2, max_client_failures=3)
    throttle.begin("alice", "10.0.0.1")
    throttle.succeeded("alice", "10.0.0.1")  # success forgets the user's attempts
    for _ in range(2):
        throttle.begin("alice", "10.0.0.1")
        throttle.failed("alice", "10.0.0.1")
    try:
        throttle.begin("alice", "10.0.0.1")
    except Throttled as exc:
        assert exc.reason == "throttled-user"
    else:
        raise AssertionError("third attempt should be throttled")
    throttle.begin("bob", "10.0.0.1")
    throttle.failed("bob", "10.0.0.1")  # third client failure
    try:
        throttle.begin("carol", "10.0.0.1")
    except Throttled as exc:
        assert exc.reason == "throttled-client"
    else:
        raise AssertionError("the client is over its limit")
