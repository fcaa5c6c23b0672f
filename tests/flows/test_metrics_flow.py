"""/.sso/metrics: who may scrape it, and that the counters move."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.flows.conftest import Gateway, GatewayFactory

CONSOLE = "https://intercom.test/console/"
ADMIN = "https://intercom.test/admin/"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(gw: Gateway, **kw: object) -> Samples:
    """One scrape, parsed by prometheus-client's own parser."""
    metrics = gw.services.metrics
    assert metrics is not None
    metrics._sessions._cached = None  # the session count is cached for 15 s
    resp = gw.get("/.sso/metrics", **kw)
    assert resp.status_code == 200, resp.status_code
    assert resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    before = samples(gw)
    gw.login("alice", password="wrong")
    gw.login("alice")
    assert gw.auth(CONSOLE).status_code == 202
    assert gw.auth(ADMIN).status_code == 403
    after = samples(gw)
    assert value(after, "sso_gateway_logins_total", provider="local", result="success") == 1
    assert value(after, "sso_gateway_logins_total", provider="local", result="failure") == 1
    assert value(after, "sso_gateway_decisions_total", outcome="allow", route="console") == 1
    assert value(after, "sso_gateway_decisions_total", outcome="deny", route="admin") == 1
    count = "sso_gateway_request_duration_seconds_count"
    assert value(after, count, endpoint="auth") - value(before, count, endpoint="auth") == 2
    assert value(after, "sso_gateway_active_sessions") == 1
    gw.logout()
    final = samples(gw)
    assert value(final, "sso_gateway_active_sessions") == 0
    assert value(final, "sso_gateway_sessions_revoked_total", reason="logout") == 1


def test_scrapes_through_a_proxy_are_refused(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    for header in ("X-Forwarded-For", "Forwarded", "X-Original-URL", "X-Real-IP"):
        resp = gw.get("/.sso/metrics", headers={header: "203.0.113.9"})
        assert resp.status_code == 403, header
    assert gw.events("metrics_refused")[0]["reason"] == "proxied"


def test_scrapes_from_other_networks_are_refused(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    resp = gw.get("/.sso/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert resp.status_code == 403
    assert samples(gw, environ_base={"REMOTE_ADDR": "10.1.2.3"})


def test_bearer_token(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(extra_yaml="metrics:\n  token: scrape-secret-4711\n")
    assert gw.get("/.sso/metrics").status_code == 403
    bad = gw.get("/.sso/metrics", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 403
    assert samples(gw, headers={"Authorization": "Bearer scrape-secret-4711"})


def test_metrics_can_be_switched_off(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(extra_yaml="metrics:\n  enabled: false\n")
    assert gw.get("/.sso/metrics").status_code == 404
    assert gw.auth(CONSOLE).status_code == 401  # forward-auth unaffected


def test_expired_sessions_are_not_counted_as_active(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    gw.login("alice")
    assert value(samples(gw), "sso_gateway_active_sessions") == 1
    gw.clock.advance(7200 + 1)  # past the absolute lifetime; the record stays a while
    assert sum(1 for _ in gw.services.store.iter_sessions()) == 1  # still stored
    assert value(samples(gw), "sso_gateway_active_sessions") == 0
