"""WebSockets and long-lived streams through the reverse proxy, and their end
when the session ends: the real gateway under gunicorn (gevent workers) in front
of a real WebSocket server (the ``websockets`` library) and the streaming test
upstream.

* upgrades are judged like any request (401 without a session, 403 when
  denied), then relayed both ways with the identity headers on the handshake;
* logout closes the session's WebSockets and streams within 5 s, whichever of the
  two workers holds them;
* revocation from another process (``sso-gateway sessions revoke``) does too;
* with Redis, a logout on another gateway process closes them.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import (
    ALICE,
    GatewayProcess,
    LocalUser,
    form_fields,
    http_client,
    start_gateway,
    submit_login,
)
from tests.integration.proxy_upstream import STALLED_SIZE, ProxyUpstream, WebSocketUpstream

BOB = LocalUser(
    username="bob",
    password="security-room-2-pw",
    groups=("Intercom-Operators",),
    name="Bob Operator",
)
CLOSE_WITHIN = 5.0


def _proxy_settings(ws: WebSocketUpstream, http_upstream: ProxyUpstream) -> dict[str, Any]:
    hosts = ["127.0.0.1", "localhost"]
    return {
        "proxy": {
            "upstreams": [
                {"name": "events", "match": {"hosts": hosts, "path_prefix": "/events"},
                 "url": ws.url},
                {"name": "intercom", "match": {"hosts": hosts}, "url": http_upstream.url},
            ]
        }
    }  # fmt: skip


@pytest.fixture(scope="module")
def upstreams(request: pytest.FixtureRequest) -> tuple[WebSocketUpstream, ProxyUpstream]:
    ws = WebSocketUpstream()
    ws.start()
    request.addfinalizer(ws.stop)
    plain = ProxyUpstream()
    plain.start()
    request.addfinalizer(plain.stop)
    return ws, plain


@pytest.fixture(scope="module")
def gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstreams: tuple[WebSocketUpstream, ProxyUpstream],
) -> GatewayProcess:
    started = start_gateway(
        request,
        tmp_path_factory.mktemp("proxy-ws"),
        users=(ALICE, BOB),
        settings=_proxy_settings(*upstreams),
        workers=2,  # a logout lands on either worker; the WebSocket on either
    )
    request.addfinalizer(_close_clients)  # runs first: no idle keep-alive delays the stop
    return started


_CLIENTS: list[requests.Session] = []


def _close_clients() -> None:
    while _CLIENTS:
        _CLIENTS.pop().close()


def _signed_in(gateway: GatewayProcess, user: LocalUser) -> requests.Session:
    client = http_client()
    _CLIENTS.append(client)
    assert submit_login(client, gateway.url, user).status_code == 303
    return client


def _cookie(client: requests.Session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies)


def _ws(
    gateway: GatewayProcess, path: str, client: requests.Session | None, **headers: str
) -> ClientConnection:
    if client is not None:
        headers["Cookie"] = _cookie(client)
    return connect(
        f"ws://127.0.0.1:{gateway.port}{path}",
        additional_headers=headers,
        open_timeout=10,
        close_timeout=1,
    )


def _closed_within(conn: ClientConnection, seconds: float) -> float:
    """Seconds until the gateway closed ``conn`` (fails after ``seconds``)."""
    started = time.monotonic()
    while True:
        left = seconds - (time.monotonic() - started)
        assert left > 0, f"still open after {seconds} s"
        try:
            conn.recv(timeout=left)
        except ConnectionClosed:
            return time.monotonic() - started
        except TimeoutError:
            pytest.fail(f"still open after {seconds} s")


def _logout(gateway: GatewayProcess, client: requests.Session, base: str | None = None) -> None:
    url = (base or gateway.url) + "/.sso/logout"
    form = client.get(url, timeout=10)
    resp = client.post(url, data=form_fields(form.text), allow_redirects=False, timeout=10)
    assert resp.status_code == 200, resp.text[:300]


def test_websocket_is_relayed_with_identity(gateway: GatewayProcess) -> None:
    client = _signed_in(gateway, ALICE)
    with _ws(gateway, "/events/live?door=3", client, X_Auth_Request_User="admin") as conn:
        hello = json.loads(conn.recv(timeout=10))
        assert hello["path"] == "/events/live?door=3"
        headers = [(k.lower(), v) for k, v in hello["headers"]]
        assert [v for k, v in headers if k == "x-auth-request-user"] == ["alice"]
        assert [v for k, v in headers if k == "x-auth-request-tier"] == ["operator"]
        assert not any("sso_gw" in v for k, v in headers if k == "cookie")
        for message in ("open door 3", "x" * 200_000):
            conn.send(message)
            assert conn.recv(timeout=10) == message
    opened = gateway.audit_events("websocket_opened")[-1]
    assert opened["user"] == "alice" and opened["upstream"] == "events"


def test_cross_site_websockets_are_refused(gateway: GatewayProcess) -> None:
    client = _signed_in(gateway, ALICE)
    for origin in ("https://evil.example", "null", f"http://127.0.0.1:{gateway.port}.evil"):
        with pytest.raises(InvalidStatus) as refused:
            _ws(gateway, "/events/live", client, Origin=origin)
        assert refused.value.response.status_code == 403, origin
    denied = gateway.audit_events("denied")[-1]
    assert denied["reason"] == "websocket-cross-origin" and denied["user"] == "alice"
    with _ws(gateway, "/events/live", client, Origin=f"http://127.0.0.1:{gateway.port}") as conn:
        assert json.loads(conn.recv(timeout=10))["path"] == "/events/live"


def test_origin_is_checked_against_the_public_host_behind_a_trusted_proxy(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    upstreams: tuple[WebSocketUpstream, ProxyUpstream],
) -> None:
    """Behind a front proxy that rewrites Host (trusted, proxy.trusted_hops: 1),
    the browser's Origin names the public host, which the proxy passes on in
    X-Forwarded-Host: that one is compared, and another site is still refused."""
    settings = _proxy_settings(*upstreams)
    settings["proxy"]["trusted_hops"] = 1
    behind = start_gateway(request, tmp_path / "behind", users=(ALICE,), settings=settings)
    client = _signed_in(behind, ALICE)
    public = {"X-Forwarded-Host": "doors.example", "X-Forwarded-Proto": "https"}
    with _ws(behind, "/events/live", client, Origin="https://doors.example", **public) as conn:
        assert json.loads(conn.recv(timeout=10))["path"] == "/events/live"
    with pytest.raises(InvalidStatus) as refused:
        _ws(behind, "/events/live", client, Origin="https://evil.example", **public)
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as own_host:  # the rewritten Host is not the origin
        _ws(behind, "/events/live", client, Origin=f"http://127.0.0.1:{behind.port}", **public)
    assert own_host.value.response.status_code == 403


def test_websocket_upgrade_needs_a_session_and_the_tier(gateway: GatewayProcess) -> None:
    with pytest.raises(InvalidStatus) as anonymous:
        _ws(gateway, "/events/live", None)
    assert anonymous.value.response.status_code == 401
    client = _signed_in(gateway, ALICE)
    with pytest.raises(InvalidStatus) as denied:
        _ws(gateway, "/admin/events", client)
    assert denied.value.response.status_code == 403


def test_logout_closes_websockets_within_5_seconds(gateway: GatewayProcess) -> None:
    client = _signed_in(gateway, ALICE)
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(_ws(gateway, "/events/live", client)) for _ in range(3)]
        for conn in conns:  # spread over both workers
            conn.recv(timeout=10)
        _logout(gateway, client)
        for conn in conns:
            _closed_within(conn, CLOSE_WITHIN)
            # a close frame of the gateway's, so the console knows why (not 1006)
            assert (conn.close_code, conn.close_reason) == (1008, "session ended")
    closed = [e for e in gateway.audit_events("stream_closed") if e["user"] == "alice"]
    assert len(closed) >= 3


def test_revocation_from_another_process_closes_websockets_and_streams(
    gateway: GatewayProcess, upstreams: tuple[WebSocketUpstream, ProxyUpstream]
) -> None:
    _, plain = upstreams
    plain.reset()
    client = _signed_in(gateway, BOB)
    with _ws(gateway, "/events/live", client) as conn:
        conn.recv(timeout=10)
        _revoke_bob(gateway, client, conn, plain)


def test_revoking_one_session_by_id_closes_its_websockets_only(gateway: GatewayProcess) -> None:
    """``sessions revoke --id``: the security-room workstation's session ends, the
    same person's session elsewhere carries on."""
    workstation = _signed_in(gateway, BOB)
    listed = gateway.cli("sessions", "list", "--user", "bob")
    assert listed.returncode == 0, listed.stderr
    before = {line.split("\t")[0] for line in listed.stdout.splitlines()}
    elsewhere = _signed_in(gateway, BOB)
    listed = gateway.cli("sessions", "list", "--user", "bob")
    (other_id,) = {line.split("\t")[0] for line in listed.stdout.splitlines()} - before
    (workstation_id,) = before - {other_id}
    with (
        _ws(gateway, "/events/live", workstation) as cut,
        _ws(gateway, "/events/live", elsewhere) as kept,
    ):
        cut.recv(timeout=10)
        kept.recv(timeout=10)
        revoked = gateway.cli("sessions", "revoke", "--id", workstation_id)
        assert revoked.returncode == 0, revoked.stderr
        _closed_within(cut, CLOSE_WITHIN)
        assert (cut.close_code, cut.close_reason) == (1008, "session ended")
        kept.send("still here?")
        assert kept.recv(timeout=10)  # the other session's console is untouched
    assert workstation.get(gateway.url + "/console/", allow_redirects=False).status_code == 302
    assert elsewhere.get(gateway.url + "/console/", allow_redirects=False).status_code == 200


def _revoke_bob(
    gateway: GatewayProcess, client: requests.Session, conn: ClientConnection, plain: ProxyUpstream
) -> None:
    # a live MJPEG stream whose upstream never finishes (its second frame waits)
    with client.get(gateway.url + "/console/mjpeg", stream=True, timeout=10) as stream:
        assert stream.status_code == 200
        chunks = stream.iter_content(chunk_size=None)
        assert b"frame-0" in next(chunks)
        revoked = gateway.cli("sessions", "revoke", "--user", "bob")
        assert revoked.returncode == 0, revoked.stderr
        started = time.monotonic()
        _closed_within(conn, CLOSE_WITHIN)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for _ in chunks:  # the connection is dropped, not ended as if complete
                assert time.monotonic() - started < CLOSE_WITHIN
        assert time.monotonic() - started < CLOSE_WITHIN
    kinds = {e["kind"] for e in gateway.audit_events("stream_closed") if e["user"] == "bob"}
    assert kinds == {"websocket", "stream"}
    plain.release.set()


def test_revocation_cuts_a_long_download_within_5_seconds(
    gateway: GatewayProcess, upstreams: tuple[WebSocketUpstream, ProxyUpstream]
) -> None:
    """A long answer with a Content-Length moves kernel to kernel (splice); the
    end of the session still cuts it, and the client sees a cut, not an end."""
    _, plain = upstreams
    plain.reset()
    client = _signed_in(gateway, BOB)
    with client.get(gateway.url + "/console/stalled", stream=True, timeout=10) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Length"] == str(STALLED_SIZE)
        chunks = resp.iter_content(chunk_size=1024 * 1024)
        got = len(next(chunks))
        revoked = gateway.cli("sessions", "revoke", "--user", "bob")
        assert revoked.returncode == 0, revoked.stderr
        started = time.monotonic()
        with pytest.raises(
            (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)
        ):
            for chunk in chunks:
                got += len(chunk)
                assert time.monotonic() - started < CLOSE_WITHIN
        assert time.monotonic() - started < CLOSE_WITHIN
        assert got < STALLED_SIZE
    closed = [e for e in gateway.audit_events("stream_closed") if e["user"] == "bob"]
    assert any(e["kind"] == "stream" for e in closed)
    plain.release.set()


@pytest.mark.redis
def test_logout_on_another_gateway_process_closes_websockets(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,
    upstreams: tuple[WebSocketUpstream, ProxyUpstream],
) -> None:
    shared = {
        "secret_key": "proxy-ws-replicas-share-this-secret-0123456789",
        "session": {"store": "redis", "redis_url": redis_url},
        **_proxy_settings(*upstreams),
    }
    first, second = (
        start_gateway(request, tmp_path / name, settings=shared, workers=1) for name in ("a", "b")
    )
    client = _signed_in(first, ALICE)
    with _ws(first, "/events/live", client) as conn:
        conn.recv(timeout=10)
        _logout(second, client)  # same cookie, the other gateway
        elapsed = _closed_within(conn, CLOSE_WITHIN)
    client.close()
    assert elapsed < CLOSE_WITHIN
    assert any(e["why"] == "session-ended" for e in first.audit_events("stream_closed"))
