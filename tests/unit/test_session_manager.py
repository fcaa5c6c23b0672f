"""SessionManager against the in-process store, in real time."""

from __future__ import annotations

import time

import pytest

from gateway.core.model import Identity
from gateway.sessions.manager import Expired, Session, SessionManager
from gateway.sessions.memory_store import MemoryStore

ALICE = Identity(subject="alice", provider="local")


def test_an_expired_session_is_recognised_not_just_forgotten() -> None:
    """The store keeps the record past its end, so the expiry can be audited."""
    manager = SessionManager(MemoryStore(), "secret" * 8)
    cookie, session = manager.create(
        ALICE, tier=None, idle=1, absolute=60, client_ip="127.0.0.1", now=time.time()
    )
    key = manager.key_from_cookie(cookie)
    assert key == session.key
    assert isinstance(manager.load(key, time.time()), Session)
    time.sleep(1.2)
    expired = manager.load(key, time.time())
    assert isinstance(expired, Expired) and expired.why == "idle" and expired.user == "alice"
    assert manager.load(key, time.time()) is None  # and it is gone now
    assert manager.list() == []


def test_tampered_cookies_give_no_key() -> None:
    manager = SessionManager(MemoryStore(), "secret" * 8)
    cookie, _ = manager.create(
        ALICE, tier=None, idle=60, absolute=60, client_ip="127.0.0.1", now=time.time()
    )
    assert manager.key_from_cookie(cookie) is not None
    # flip a character inside the signature (the last base64 character may only
    # carry padding bits, so changing it can leave the bytes the same)
    i = len(cookie) - 5
    flipped = cookie[:i] + ("A" if cookie[i] != "A" else "B") + cookie[i + 1 :]
    for bad in (flipped, "", "x" * 600, cookie + "."):
        assert manager.key_from_cookie(bad) is None
    other = SessionManager(MemoryStore(), "another-secret" * 4)
    assert other.key_from_cookie(cookie) is None


def test_a_short_id_that_two_stored_sessions_share_revokes_neither() -> None:
    store = MemoryStore()
    manager = SessionManager(store, "secret" * 8)
    _, session = manager.create(
        ALICE, tier="operator", idle=60, absolute=600, client_ip="127.0.0.1", now=time.time()
    )
    twin = session.key[:12] + "f" * (len(session.key) - 12)
    assert twin != session.key
    store.put_session(twin, dict(session.record), 600, "alice")

    with pytest.raises(ValueError, match="2 sessions start with"):
        manager.revoke_short_id(session.short_id)
    assert store.get_session(session.key) is not None
    assert store.get_session(twin) is not None


def test_a_login_fact_added_later_keeps_the_rest_and_never_revives_a_session() -> None:
    manager = SessionManager(MemoryStore(), "secret" * 8)
    now = time.time()
    _, session = manager.create(
        ALICE, tier="operator", idle=60, absolute=600, client_ip="127.0.0.1", now=now,
        login={"saml": {"name_id": "n"}},
    )  # fmt: skip
    assert manager.add_login_fact(session.key, "directory", {"guid": "g"}, now=now + 1)
    loaded = manager.load(session.key, now + 2)
    assert isinstance(loaded, Session)
    assert loaded.login == {"saml": {"name_id": "n"}, "directory": {"guid": "g"}}
    assert loaded.last_seen == session.last_seen and loaded.tier == "operator"
    # a session that has ended (deleted, or past its limits) gets nothing
    assert not manager.add_login_fact(session.key, "directory", {}, now=now + 61)
    assert manager.delete(session.key)
    assert not manager.add_login_fact(session.key, "directory", {}, now=now + 2)
    assert manager.load(session.key, now + 2) is None
