"""/.sso/metrics under the real gunicorn: every worker's samples are added up
(prometheus-client multiprocess mode), and the exposition parses."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ALICE, GatewayProcess, http_client, submit_login


def _scrape(gw: GatewayProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = requests.get(gw.url + "/.sso/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def test_samples_of_every_worker_are_added_up(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(workers=2)
    with http_client() as client:
        assert submit_login(client, gw.url, ALICE).status_code == 303
    metrics_dir = gw.directory / "var" / "metrics"

    def worker_pids() -> set[str]:
        return {p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}

    def check(_: int) -> None:
        resp = requests.get(
            gw.url + "/.sso/auth",
            headers={"X-Original-URL": "http://127.0.0.1/admin/", "Connection": "close"},
            timeout=10,
        )
        assert resp.status_code == 401

    # concurrent bursts on new connections until both workers have answered some
    total = 0
    with ThreadPoolExecutor(8) as pool:
        while total < 800 and (total < 40 or len(worker_pids()) < 2):
            list(pool.map(check, range(40)))
            total += 40
    found = _scrape(gw)
    labels = frozenset({("outcome", "login"), ("route", "intercom-admin")})
    key = ("sso_gateway_decisions_total", labels)
    assert found[key] == total
    login = ("sso_gateway_logins_total", frozenset({("provider", "local"), ("result", "success")}))
    assert found[login] == 1
    assert len(worker_pids()) == 2  # both workers wrote samples, and they add up


def test_proxied_scrape_is_refused(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory(workers=1)
    resp = requests.get(
        gw.url + "/.sso/metrics", headers={"X-Forwarded-For": "203.0.113.7"}, timeout=10
    )
    assert resp.status_code == 403
