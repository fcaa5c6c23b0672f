"""Several gateway replicas sharing one Redis, behind a real nginx load balancer.

Three ``sso-gateway serve`` processes (own data folders, the same secret key,
JWT signing key and Redis) behind nginx's round-robin; the real OpenID provider
of the OIDC tests for logins.  What must hold, as on Kubernetes:

* a login started on one replica is finished on another (OIDC state, nonce and
  PKCE verifier in Redis);
* a logout on one replica is honoured by the others within 1 s (the per-process
  session caches are invalidated through Redis pub/sub);
* a Redis restart needs no gateway restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.integration.conftest import GatewayProcess, NginxProcess
from tests.oidc.conftest import POLICIES, Browser, OidcSite, oidc_site  # noqa: F401 - fixture
from tests.peers import RedisServer

LB_SLOT = 5  # the load balancer answers on this registered redirect-URI port

LB_TEMPLATE = """\
upstream gateways {
    server {{G1}};
    server {{G2}};
    server {{G3}};
}
log_format lb '$request_method $uri $upstream_addr $status';
server {
    listen {{LISTEN}};
    access_log {{DIR}}/lb.log lb;
    location / {
        proxy_pass http://gateways;
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_next_upstream off;
    }
}
"""


class Replicas:
    def __init__(self, gateways: list[GatewayProcess], lb: NginxProcess, directory: Path):
        self.gateways = gateways
        self.lb = lb
        self.directory = directory

    def by_address(self, address: str) -> GatewayProcess:
        return next(g for g in self.gateways if g.address == address)

    def handled(self, method: str, path: str) -> list[str]:
        """Upstream addresses that answered ``method path`` through the balancer."""
        lines = (self.directory / "lb.log").read_text(encoding="utf-8").splitlines()
        return [line.split()[2] for line in lines if line.startswith(f"{method} {path} ")]


@pytest.fixture
def replicas(
    oidc_site: OidcSite,  # noqa: F811 - the imported fixture
    redis_url: str,
    nginx_binary: str,
    tmp_path: Path,
) -> Iterator[Replicas]:
    shared: dict[str, Any] = {
        "secret_key": "replicas-share-this-secret-key-0123456789abcdef",
        "jwt": {"key_file": str(tmp_path / "jwt-signing-key.json")},
        "session": {"store": "redis", "redis_url": redis_url, "redis_socket_timeout": 0.5},
    }
    gateways: list[GatewayProcess] = []
    lb: NginxProcess | None = None
    try:
        for n in range(3):
            gw = GatewayProcess(
                tmp_path / f"replica-{n}",
                users=(),
                policies=POLICIES,
                settings={**oidc_site.gateway_settings(), **shared},
                workers=1,
            )
            gateways.append(gw)
            gw.start()  # one after the other: the first creates the JWT key
        lb_dir = tmp_path / "lb"
        lb_dir.mkdir()
        template = lb_dir / "lb.conf.template"
        template.write_text(LB_TEMPLATE, encoding="utf-8")
        lb = NginxProcess(
            lb_dir,
            {
                "LISTEN": f"127.0.0.1:{oidc_site.gateway_ports[LB_SLOT]}",
                "DIR": str(lb_dir),
                **{f"G{n + 1}": g.address for n, g in enumerate(gateways)},
            },
            template=template,
            binary=nginx_binary,
        )
        lb.port = oidc_site.gateway_ports[LB_SLOT]  # the port LISTEN names
        lb.start()
        yield Replicas(gateways, lb, lb_dir)
    finally:
        if lb is not None:
            lb.stop()
        for gw in gateways:
            gw.stop()


def _within(seconds: float, check: Callable[[], bool]) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if check():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def test_login_started_on_one_replica_finishes_on_another(
    replicas: Replicas,
    oidc_site: OidcSite,  # noqa: F811
) -> None:
    browser = Browser(oidc_site, slot=LB_SLOT)
    browser.login("alice", rd="/console/")
    started = replicas.handled("GET", "/.sso/start")
    finished = replicas.handled("GET", "/.sso/oidc/callback")
    assert len(started) == 1 and len(finished) == 1
    assert started[0] != finished[0]  # round robin: never the same replica twice in a row
    assert replicas.by_address(finished[0]).audit_events("login")
    # and every replica honours the session
    for gw in replicas.gateways:
        resp = browser.http.get(
            f"http://localhost:{gw.port}/.sso/auth",
            headers={"X-Original-URL": browser.base + "/console/"},
            timeout=10,
        )
        assert resp.status_code == 202, gw.address
        assert resp.headers["X-Auth-Request-Tier"] == "operator"


def test_logout_on_one_replica_reaches_the_others_within_a_second(
    replicas: Replicas,
    oidc_site: OidcSite,  # noqa: F811
) -> None:
    browser = Browser(oidc_site, slot=LB_SLOT)
    browser.login("adam")
    cookie = browser.http.cookies.get("sso_gw")
    assert cookie

    def allowed(gw: GatewayProcess) -> bool:
        """The session cookie as it was before the logout, straight to one replica."""
        resp = requests.get(
            f"http://127.0.0.1:{gw.port}/.sso/auth",
            headers={"X-Original-URL": browser.base + "/admin/", "Cookie": f"sso_gw={cookie}"},
            timeout=10,
        )
        return resp.status_code == 202

    first, *others = replicas.gateways
    assert all(allowed(gw) for gw in replicas.gateways)  # every cache holds the session
    page = browser.http.get(f"http://localhost:{first.port}/.sso/logout", timeout=10)
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    out = browser.http.post(
        f"http://localhost:{first.port}/.sso/logout",
        data={"csrf_token": token},
        allow_redirects=False,
        timeout=10,
    )
    assert out.status_code == 303
    for gw in others:
        took = _within(1.0, lambda gw=gw: not allowed(gw))  # type: ignore[misc]
        assert took is not None, f"{gw.address} still allows the logged-out session"


def test_redis_restart_needs_no_gateway_restart(
    replicas: Replicas,
    oidc_site: OidcSite,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    browser = Browser(oidc_site, slot=LB_SLOT)
    browser.login("alice")
    redis_server.stop()
    try:
        down = browser.auth("/console/")
        assert down.status_code == 503  # fails closed, never a stale allow
    finally:
        redis_server.start()  # empty again: the sessions went with it
    assert _within(5.0, lambda: browser.auth("/console/").status_code == 401) is not None
    again = Browser(oidc_site, slot=LB_SLOT)
    again.login("alice")
    assert again.userinfo().json()["tier"] == "operator"
    assert urlsplit(again.base).port == oidc_site.gateway_ports[LB_SLOT]
    for gw in replicas.gateways:
        assert gw.running
