"""The per-process memos of the reverse proxy's header handling
(gateway/views/proxy.py): the same answers as computing afresh, bounded however
many distinct names and values clients and upstreams send."""

from __future__ import annotations

from gateway.views import proxy


def test_header_names_are_spelt_as_before_and_the_memo_stays_bounded() -> None:
    proxy._header_name.cache_clear()
    assert proxy._header_name("HTTP_X_DOOR_ID") == ("x-door-id", "X-Door-Id")
    assert proxy._header_name("HTTP_X_DOOR_ID") == ("x-door-id", "X-Door-Id")
    assert proxy._header_name.cache_info().hits == 1
    for i in range(proxy._MEMO_LIMIT + 50):  # hostile: a new name on every request
        assert proxy._header_name(f"HTTP_X_JUNK_{i}") == (f"x-junk-{i}", f"X-Junk-{i}")
    assert proxy._header_name.cache_info().currsize == proxy._MEMO_LIMIT


def test_connection_tokens_as_before_and_bounded() -> None:
    cache = proxy._remembered_tokens
    cache.cache_clear()
    assert proxy._connection_tokens(["keep-alive, X-Secret ", "Upgrade"]) == {
        "keep-alive",
        "x-secret",
        "upgrade",
    }
    assert proxy._connection_tokens([" , ,"]) == frozenset()
    assert proxy._connection_tokens([""]) == frozenset()
    long = ", ".join(f"x-{i}" for i in range(100))  # over 256 characters: never kept
    assert "x-99" in proxy._connection_tokens([long])
    assert cache.cache_info().currsize == 3
    for i in range(proxy._MEMO_LIMIT + 50):
        assert proxy._connection_tokens([f"x-{i}"]) == {f"x-{i}"}
    assert cache.cache_info().currsize == proxy._MEMO_LIMIT
