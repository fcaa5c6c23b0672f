"""Reverse-proxy mode through Flask's test client (the app exactly as built by
create_app) to a real upstream server in a thread: the forwarding headers with
``proxy.trusted_hops``, Host preservation, and identity-header spoofing in
spellings gunicorn itself would already drop (so the gateway's own layer is
what is tested here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.flows.conftest import Gateway, GatewayFactory
from tests.integration.conftest import SeenRequest
from tests.integration.proxy_upstream import ProxyUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[ProxyUpstream]:
    server = ProxyUpstream()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _gateway(
    make_gateway: GatewayFactory, upstream: ProxyUpstream, *, hops: int, preserve: bool = False
) -> Gateway:
    return make_gateway(
        extra_yaml=(
            "proxy:\n"
            f"  trusted_hops: {hops}\n"
            "  upstreams:\n"
            "    - name: console\n"
            "      match: {hosts: [intercom.test, localhost]}\n"
            f"      url: {upstream.url}\n"
            f"      preserve_host: {'true' if preserve else 'false'}\n"
        )
    )


def _last(upstream: ProxyUpstream) -> SeenRequest:
    return upstream.seen[-1]


def test_forwarding_headers_from_trusted_hops(
    make_gateway: GatewayFactory, upstream: ProxyUpstream
) -> None:
    gw = _gateway(make_gateway, upstream, hops=1)
    assert gw.login("alice").status_code == 303
    forwarded = {
        "X-Forwarded-For": "6.6.6.6, 10.1.1.1",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example, intercom.test",
    }
    # from a trusted proxy (127.0.0.1 is in network.trusted_proxies)
    resp = gw.get("/console/", headers=forwarded, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    seen = _last(upstream)
    assert seen.get("X-Forwarded-For") == "10.1.1.1, 127.0.0.1"  # one hop kept, not two
    assert seen.get("X-Forwarded-Proto") == "https"
    assert seen.get("X-Forwarded-Host") == "intercom.test"
    assert seen.get("X-Auth-Request-User") == "alice"
    # malformed entries are not passed on
    gw.get(
        "/console/",
        headers={"X-Forwarded-For": "unknown"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert _last(upstream).get("X-Forwarded-For") == "127.0.0.1"


def test_forwarding_headers_from_an_untrusted_peer_are_replaced(
    make_gateway: GatewayFactory, upstream: ProxyUpstream
) -> None:
    gw = _gateway(make_gateway, upstream, hops=1)
    headers = {
        "X-Forwarded-For": "10.1.1.1",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "evil.example",
    }
    resp = gw.get(
        "/health",
        headers=headers,
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
        base_url="https://intercom.test",
    )
    assert resp.status_code == 200
    seen = _last(upstream)
    assert seen.get("X-Forwarded-For") == "203.0.113.9"
    assert seen.get("X-Forwarded-Proto") == "https"  # the test client's own scheme
    assert seen.get("X-Forwarded-Host") == "intercom.test"


def test_zero_trusted_hops_ignores_even_trusted_proxies(
    make_gateway: GatewayFactory, upstream: ProxyUpstream
) -> None:
    gw = _gateway(make_gateway, upstream, hops=0)
    upstream.reset()
    resp = gw.get(
        "/health",
        headers={"X-Forwarded-For": "10.1.1.1"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
        base_url="https://intercom.test",
    )
    assert resp.status_code == 200
    assert _last(upstream).get("X-Forwarded-For") == "127.0.0.1"


@pytest.mark.parametrize("preserve", [False, True])
def test_host_header(make_gateway: GatewayFactory, upstream: ProxyUpstream, preserve: bool) -> None:
    gw = _gateway(make_gateway, upstream, hops=0, preserve=preserve)
    assert gw.get("/health", base_url="https://intercom.test").status_code == 200
    expected = "intercom.test" if preserve else f"127.0.0.1:{upstream.port}"
    assert _last(upstream).get("Host") == expected


def test_spoofed_identity_headers_in_every_spelling(
    make_gateway: GatewayFactory, upstream: ProxyUpstream
) -> None:
    gw = _gateway(make_gateway, upstream, hops=0)
    assert gw.login("alice").status_code == 303
    spoofed = [
        ("X-Auth-Request-User", "bob"),
        ("x_auth_request_user", "bob"),
        ("X_AUTH-REQUEST_USER", "bob"),
        ("X-Auth-Request-Tier", "admin"),
        ("x_auth_request_groups", "Intercom-Admins"),
        ("X-AUTH-REQUEST-JWT", "forged"),
        ("X_Auth_Request_Extension", "0000"),
    ]
    resp = gw.get("/console/", headers=spoofed)
    assert resp.status_code == 200
    seen = _last(upstream)
    assert seen.get_all("X-Auth-Request-User") == ["alice"]
    assert seen.get_all("X-Auth-Request-Tier") == ["operator"]
    assert seen.get_all("X-Auth-Request-Groups") == ["Intercom-Operators"]
    assert seen.get_all("X-Auth-Request-Extension") == ["4711"]
    assert seen.get_all("X-Auth-Request-Jwt") != ["forged"]
    # and without a session, on a public route, none at all
    anonymous = _gateway(make_gateway, upstream, hops=0)
    upstream.reset()
    resp = anonymous.get("/health", headers=spoofed, base_url="https://intercom.test")
    assert resp.status_code == 200
    seen = _last(upstream)
    for name, _ in spoofed:
        assert seen.get_all(name) == [], name


def test_websocket_upgrade_outside_gunicorn_is_501(
    make_gateway: GatewayFactory, upstream: ProxyUpstream
) -> None:
    gw = _gateway(make_gateway, upstream, hops=0)
    assert gw.login("alice").status_code == 303
    resp = gw.get("/console/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert resp.status_code == 501


def test_proxied_requests_are_timed_in_the_metrics(
    make_gateway: GatewayFactory, upstream: ProxyUpstream
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    gw = _gateway(make_gateway, upstream, hops=0)
    assert gw.login("alice").status_code == 303
    for _ in range(3):
        assert gw.get("/console/").status_code == 200
    text = gw.get("/.sso/metrics").get_data(as_text=True)
    counts = {
        s.labels.get("endpoint"): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "sso_gateway_request_duration_seconds_count"
    }
    assert counts.get("proxy") == 3
