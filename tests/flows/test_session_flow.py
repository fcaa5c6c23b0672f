"""Server-side session lifetime, revocation, restarts and store outages."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.assertion import generate_key_file
from gateway.sessions.redis_store import RedisStore
from tests.flows.conftest import Clock, Gateway, GatewayFactory
from tests.peers import RedisServer

DOORS = "https://intercom.test/doors/"
EVENTS = "https://intercom.test/api/events"


def _remaining(gw: Gateway) -> dict[str, int]:
    resp = gw.get("/.sso/session")
    assert resp.status_code == 200, resp.status_code
    data: dict[str, int] = resp.get_json()
    return data


def test_idle_timeout_ends_the_session_on_the_server(gw: Gateway) -> None:
    gw.login("alice")
    gw.clock.advance(899)
    assert gw.auth(DOORS).status_code == 202  # activity extends the idle timer
    gw.clock.advance(899)
    assert gw.auth(DOORS).status_code == 202
    gw.clock.advance(901)
    assert gw.auth(DOORS).status_code == 401
    expired = gw.events("session_expired")[-1]
    assert expired["user"] == "alice" and expired["why"] == "idle"


def test_absolute_lifetime_ends_the_session_whatever_the_activity(gw: Gateway) -> None:
    gw.login("alice")
    for _ in range(9):  # 9 x 800 s = 7200 s = the absolute lifetime
        gw.clock.advance(800)
        if gw.clock.now - 1_800_000_000 < 7200:
            assert gw.auth(DOORS).status_code == 202
    assert gw.auth(DOORS).status_code == 401
    assert gw.events("session_expired")[-1]["why"] == "absolute"


def test_passive_paths_do_not_extend_the_idle_timer(gw: Gateway) -> None:
    gw.login("alice")
    for _ in range(8):  # dashboard polling for 800 s
        gw.clock.advance(100)
        assert gw.auth(EVENTS).status_code == 202
    assert _remaining(gw)["idle_remaining"] == 100
    gw.clock.advance(101)
    assert gw.auth(EVENTS).status_code == 401


def test_session_endpoint_does_not_extend_the_session(gw: Gateway) -> None:
    gw.login("alice")
    gw.clock.advance(300)
    first = _remaining(gw)
    gw.clock.advance(300)
    second = _remaining(gw)
    assert first["idle_remaining"] == 600 and second["idle_remaining"] == 300
    assert second["absolute_remaining"] == 7200 - 600
    assert second["warn"] is False
    gw.clock.advance(250)
    assert _remaining(gw)["warn"] is True  # warn_before defaults to 120 s
    gw.clock.advance(51)
    assert gw.get("/.sso/session").status_code == 401


def test_tier_limits_apply(gw: Gateway) -> None:
    gw.login("bob")  # admin: idle 600, absolute 3600
    state = _remaining(gw)
    assert state["idle_remaining"] == 600 and state["absolute_remaining"] == 3600


def test_security_room_workstations_get_shorter_sessions(gw: Gateway) -> None:
    # the trusted proxy (127.0.0.1) says the person sits at 10.20.30.7
    gw.login("alice", headers={"X-Forwarded-For": "10.20.30.7"})
    state = _remaining(gw)
    assert state["idle_remaining"] == 120 and state["absolute_remaining"] == 900
    login = gw.events("login")[-1]
    assert login["client_ip"] == "10.20.30.7" and login["idle"] == 120


def test_revoking_a_user_ends_every_session_at_once(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    gw.login("alice")
    other = gw.app.test_client()
    gw2 = Gateway(gw.app, other, gw.clock, gw.audit_stream, gw.root)
    gw2.login("alice")
    gw3 = Gateway(gw.app, gw.app.test_client(), gw.clock, gw.audit_stream, gw.root)
    gw3.login("zoe")
    assert len(gw.services.sessions.list("alice")) == 2
    removed = gw.services.sessions.revoke_user("alice")
    assert len(removed) == 2
    assert gw.auth(DOORS).status_code == 401
    assert gw2.auth(DOORS).status_code == 401
    assert gw3.auth(DOORS).status_code == 202  # other people keep theirs


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_sessions_survive_a_gateway_restart(
    make_gateway: GatewayFactory, kind: str, request: pytest.FixtureRequest
) -> None:
    clock = Clock()

    def build() -> Gateway:
        if kind == "redis":
            url = request.getfixturevalue("redis_url")
            return make_gateway(store=RedisStore(url), store_kind="memory", clock=clock)
        return make_gateway(store_kind="file", clock=clock)

    first = build()
    first.login("alice")
    cookie = first.session_cookie()
    assert cookie is not None
    second = build()  # a new process: same data dir / same Redis, same secret
    second.client.set_cookie(second.services.cookie_name, cookie, domain="localhost")
    assert second.auth(DOORS).status_code == 202


def test_redis_outage_fails_closed_and_recovers(
    make_gateway: GatewayFactory, redis_server: RedisServer, redis_url: str
) -> None:
    gw = make_gateway(
        store=RedisStore(redis_url, socket_timeout=0.3),
        store_kind="memory",
        session_yaml="  cache_seconds: 0\n",  # every request reads Redis
    )
    gw.login("alice")
    assert gw.auth(DOORS).status_code == 202
    token = gw.csrf()
    redis_server.pause()  # hung Redis: commands time out
    try:
        resp = gw.auth(DOORS)
        assert resp.status_code == 503
        ready = gw.get("/.sso/readyz")
        assert ready.status_code == 503
        # nothing about where the store is: the endpoint answers anyone, on any host
        assert ready.get_json()["store"] == "unavailable"
        assert str(redis_server.port) not in ready.get_data(as_text=True)
        assert gw.get("/.sso/healthz").status_code == 200
        assert gw.get("/.sso/session").status_code == 503
        assert gw.get("/.sso/login?prompt=login").status_code == 503
        form = {"username": "zoe", "password": "correct horse battery", "csrf_token": token}
        assert gw.post("/.sso/login", data=form).status_code == 503
    finally:
        redis_server.resume()
    assert gw.auth(DOORS).status_code == 202  # same session, no restart
    assert gw.get("/.sso/readyz").status_code == 200
    assert gw.events("store_unavailable")

    redis_server.stop()  # Redis gone entirely
    assert gw.auth(DOORS).status_code == 503
    redis_server.start()  # back, empty (no persistence in tests)
    assert gw.auth(DOORS).status_code == 401
    assert gw.login("alice").status_code == 303
    assert gw.auth(DOORS).status_code == 202


def test_userinfo_without_session(gw: Gateway) -> None:
    resp = gw.get("/.sso/userinfo", headers={"Accept": "text/html"})
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/.sso/login?rd=")
    resp = gw.get("/.sso/userinfo", headers={"Accept": "application/json"})
    assert resp.status_code == 401


def test_health_ready_and_jwks(gw: Gateway) -> None:
    assert gw.get("/.sso/healthz").get_json() == {"status": "ok"}
    ready = gw.get("/.sso/readyz").get_json()
    assert ready["status"] == "ok" and ready["store"] == "ok"
    keys = gw.get("/.sso/jwks.json").get_json()["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "EC" and "d" not in keys[0]


def test_jwks_publishes_the_keys_of_a_rotation(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """jwt.published_key_files: the next (or previous) key is published beside
    the signing key, public half only, and never signs."""
    site = tmp_path / "site"
    site.mkdir()
    nxt = site / "jwt-next.json"
    kid = generate_key_file(nxt)
    gw = make_gateway(extra_yaml="jwt:\n  published_key_files: [jwt-next.json]\n", root=site)
    resp = gw.get("/.sso/jwks.json")
    assert resp.headers["Cache-Control"] == "public, max-age=300"
    keys = resp.get_json()["keys"]
    assert len(keys) == 2 and keys[1]["kid"] == kid and keys[0]["kid"] != kid
    assert all("d" not in k for k in keys)
    gw.login("alice")
    assert gw.auth(DOORS).status_code == 202
    token = gw.auth(DOORS).headers["X-Auth-Request-Jwt"]
    header = token.split(".")[0]
    assert (
        json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
        == (keys[0]["kid"])
    )


def test_broken_policy_file_keeps_the_old_policy(gw: Gateway) -> None:
    gw.login("alice")
    assert gw.auth(DOORS).status_code == 202
    (gw.root / "policies" / "site.yaml").write_text("routes: [: broken", encoding="utf-8")
    for _ in range(2):  # a change is loaded once it held still for one check
        gw.clock.advance(3)
        assert gw.auth(DOORS).status_code == 202
    assert gw.events("policy_reload_failed")
    assert "previous in force" in gw.get("/.sso/readyz").get_json()["policy"]


def _until(check: Callable[[], bool], timeout: float = 6.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_cached_sessions_are_revoked_at_once_from_another_process(
    make_gateway: GatewayFactory, redis_url: str
) -> None:
    # two gateway "processes" sharing Redis, each with its own session cache
    clock = Clock()
    a = make_gateway(store=RedisStore(redis_url), store_kind="memory", clock=clock)
    b = make_gateway(
        store=RedisStore(redis_url), store_kind="memory", clock=clock, root=a.root.parent / "b"
    )
    a.login("alice")
    cookie = a.session_cookie()
    assert cookie is not None
    # b shares a's secret so it accepts a's cookie, like a second replica
    b.services.sessions._signer = a.services.sessions._signer
    b.client.set_cookie(b.services.cookie_name, cookie, domain="localhost")
    _until(lambda: b.auth(DOORS).status_code == 202)  # feed up, session cached in b
    assert b.auth(DOORS).status_code == 202
    a.services.sessions.revoke_user("alice")  # "sso-gateway sessions revoke" elsewhere
    _until(lambda: b.auth(DOORS).status_code == 401, timeout=1.0)


def test_cache_is_bypassed_when_redis_hangs(
    make_gateway: GatewayFactory, redis_server: RedisServer, redis_url: str
) -> None:
    gw = make_gateway(store=RedisStore(redis_url, socket_timeout=0.3), store_kind="memory")
    gw.login("alice")
    _until(lambda: gw.auth(DOORS).status_code == 202)
    redis_server.pause()
    try:
        # the feed's pings go unanswered: cached sessions stop counting
        waited = _until(lambda: gw.auth(DOORS).status_code == 503, timeout=8.0)
        assert waited < 8.0
    finally:
        redis_server.resume()
    _until(lambda: gw.auth(DOORS).status_code == 202)


def test_opening_the_identity_page_is_activity(gw: Gateway) -> None:
    gw.login("alice")
    gw.clock.advance(800)
    assert gw.get("/.sso/userinfo", headers={"Accept": "text/html"}).status_code == 200
    gw.clock.advance(800)  # 1600 s after login, 800 s after the page view
    assert _remaining(gw)["idle_remaining"] == 100
