"""The per-process session cache: pure bookkeeping, no store needed."""

from __future__ import annotations

from gateway.sessions.cache import SessionCache


class Tick:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def healthy_cache(ttl: float = 2.0, **kw: object) -> tuple[SessionCache, Tick]:
    tick = Tick()
    cache = SessionCache(ttl, monotonic=tick, **kw)  # type: ignore[arg-type]
    cache.set_healthy(True)
    return cache, tick


def test_nothing_is_cached_until_the_feed_is_healthy() -> None:
    cache = SessionCache(2.0)
    cache.put("k", "record", cache.epoch)
    assert cache.get("k") is None
    cache.set_healthy(True)
    cache.put("k", "record", cache.epoch)
    assert cache.get("k") == "record"


def test_entries_expire_after_ttl() -> None:
    cache, tick = healthy_cache()
    cache.put("k", "record", cache.epoch)
    tick.now += 1.9
    assert cache.get("k") == "record"
    tick.now += 0.2
    assert cache.get("k") is None


def test_invalidation_drops_one_key_or_all() -> None:
    cache, _ = healthy_cache()
    for key in ("a", "b", "c"):
        cache.put(key, key, cache.epoch)
    cache.invalidate("a")
    assert cache.get("a") is None and cache.get("b") == "b"
    cache.invalidate(None)
    assert cache.get("b") is None and cache.get("c") is None


def test_a_read_racing_an_invalidation_is_not_cached() -> None:
    cache, _ = healthy_cache()
    epoch = cache.epoch  # a request starts reading the record from the store...
    cache.invalidate("k")  # ...the session is revoked meanwhile...
    cache.put("k", "stale", epoch)  # ...and the (stale) read comes back
    assert cache.get("k") is None


def test_losing_the_feed_clears_and_bypasses_the_cache() -> None:
    cache, _ = healthy_cache()
    cache.put("k", "record", cache.epoch)
    cache.set_healthy(False)
    assert cache.get("k") is None
    cache.put("k", "record", cache.epoch)
    assert cache.get("k") is None
    cache.set_healthy(True)
    assert cache.get("k") is None  # nothing survives a gap in the feed


def test_size_is_bounded() -> None:
    cache, _ = healthy_cache(max_entries=3)
    for n in range(10):
        cache.put(str(n), n, cache.epoch)
    assert [cache.get(str(n)) for n in range(10)] == [None] * 7 + [7, 8, 9]


def test_forget_drops_a_key_without_blocking_other_reads() -> None:
    cache, _ = healthy_cache()
    cache.put("a", 1, cache.epoch)
    epoch = cache.epoch
    cache.forget("a")
    cache.put("b", 2, epoch)
    assert cache.get("a") is None and cache.get("b") == 2
