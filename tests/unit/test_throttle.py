"""Login throttling per username and per client address."""

from __future__ import annotations

import hashlib
import threading
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
    """Try one attempt (it counts against the user, as every attempt does)."""
    try:
        throttle.begin(username, ip)
    except Throttled as exc:
        return exc.reason
    return None


def fail(throttle: LoginThrottle, username: str, ip: str) -> None:
    """One admitted attempt with a wrong password."""
    throttle.begin(username, ip)
    throttle.failed(username, ip)


def test_user_is_locked_out_after_max_failures() -> None:
    throttle = throttle_with(make_store(), max_user_failures=3, max_client_failures=100)
    for _ in range(3):  # the third attempt is still admitted
        fail(throttle, "alice", IP)
    assert reason(throttle, "alice", IP) == "throttled-user"
    # from any address, in any spelling
    assert reason(throttle, "ALICE", OTHER_IP) == "throttled-user"
    # other users are not affected
    assert reason(throttle, "bob", OTHER_IP) is None


def test_client_is_locked_out_after_max_failures() -> None:
    throttle = throttle_with(make_store(), max_user_failures=100, max_client_failures=4)
    for i in range(4):
        fail(throttle, f"user{i}", IP)
    assert reason(throttle, "someone-new", IP) == "throttled-client"
    assert reason(throttle, "someone-new", OTHER_IP) is None


def test_throttled_is_an_authentication_failure() -> None:
    throttle = throttle_with(make_store(), max_user_failures=1)
    fail(throttle, "alice", IP)
    with pytest.raises(AuthenticationFailed):
        throttle.begin("alice", IP)


def test_unknown_usernames_are_counted_too() -> None:
    store = make_store()
    throttle = throttle_with(store, max_user_failures=2)
    fail(throttle, "no-such-user", IP)
    fail(throttle, "no-such-user", IP)
    assert reason(throttle, "no-such-user", IP) == "throttled-user"


def test_keys_hash_the_lowercased_username() -> None:
    store = make_store()
    throttle = throttle_with(store)
    fail(throttle, "Alice", IP)
    digest = hashlib.sha256(b"alice").hexdigest()
    assert store.get_counter(f"throttle:user:{digest}") == 1
    assert store.get_counter(f"throttle:ip:{IP}") == 1
    assert store.get_counter("throttle:user:alice") == 0
    assert store.get_counter("throttle:user:Alice") == 0


def test_window_expiry_forgets_failures() -> None:
    throttle = throttle_with(make_store(), max_user_failures=2, max_client_failures=100, window=0.3)
    fail(throttle, "alice", IP)
    fail(throttle, "alice", IP)
    assert reason(throttle, "alice", IP) == "throttled-user"
    deadline = time.monotonic() + 5
    while reason(throttle, "alice", IP) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reason(throttle, "alice", IP) is None


def test_success_resets_user_counter_but_not_client_counter() -> None:
    store = make_store()
    throttle = throttle_with(store, max_user_failures=3, max_client_failures=3)
    fail(throttle, "alice", IP)
    fail(throttle, "alice", IP)
    throttle.succeeded("alice", IP)
    # the user's count starts over ...
    fail(throttle, "alice", OTHER_IP)
    fail(throttle, "alice", OTHER_IP)
    assert reason(throttle, "alice", "203.0.113.1") is None
    # ... the address still carries its two earlier failures
    fail(throttle, "bob", IP)
    assert reason(throttle, "carol", IP) == "throttled-client"


def test_client_limit_is_checked_before_the_attempt_is_counted() -> None:
    store = make_store()
    throttle = throttle_with(store, max_user_failures=1, max_client_failures=1)
    fail(throttle, "alice", IP)
    assert reason(throttle, "alice", IP) == "throttled-client"
    # refused before counting: the user's count is still the one failure
    digest = hashlib.sha256(b"alice").hexdigest()
    assert store.get_counter(f"throttle:user:{digest}") == 1
    assert reason(throttle, "alice", OTHER_IP) == "throttled-user"


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
        throttle.begin("alice", IP)
    with pytest.raises(StoreUnavailable):
        throttle.failed("alice", IP)
    with pytest.raises(StoreUnavailable):
        throttle.succeeded("alice", IP)


class GarbageStore(MemoryStore):
    def get_counter(self, key: str) -> int:
        return "3"  # type: ignore[return-value]


def test_garbage_counter_fails_closed() -> None:
    throttle = throttle_with(GarbageStore())
    with pytest.raises(StoreUnavailable):
        throttle.begin("alice", IP)


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
    throttle = throttle_with(make_store(), max_user_failures=5, max_client_failures=100)
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


def test_started_logins_are_limited_per_address() -> None:
    throttle = LoginThrottle(MemoryStore(), max_starts_per_minute=3)
    for _ in range(3):
        throttle.started("10.0.0.1")
    with pytest.raises(Throttled) as info:
        throttle.started("10.0.0.1")
    assert info.value.reason == "throttled-starts"
    throttle.started("10.0.0.2")  # another address has its own count
