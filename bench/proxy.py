"""Reverse-proxy benchmark: a small GET through the gateway's proxy mode, against
the same upstream reached directly and against Apache + mod_auth_openidc doing
the same job (the established C implementation).

``make bench`` runs it (or ``python bench/proxy.py``).  On loopback ports it
picks, it starts:

* the upstream: nginx serving a small static file (``/console/door-events.json``,
  1 KiB);
* the OpenID provider of the tests (node ``oidc-provider``, Entra ID-shaped);
* Apache httpd (event MPM) with mod_auth_openidc and mod_proxy_http in front of
  the upstream (``bench/apache_oidc.py``);
* the gateway, ``sso-gateway serve`` in reverse-proxy mode (``proxy.upstreams``)
  in front of the same upstream, OIDC default provider, Redis sessions.

It logs in at Apache and at the gateway through the real provider (a real HTTP
client following every redirect and submitting the provider's form), then runs
``wrk`` with each one's session cookie against the three targets, alternating
rounds, and reports medians and ratios: gateway vs mod_auth_openidc (target
req/s >= 1.0x, p99 no worse) and both vs direct.  Written to
``bench/results/proxy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script: make tests.* and bench.* importable

from bench.apache_oidc import ApacheOidc, apache_binary  # noqa: E402
from bench.run import WRK_DONE, Round, fail, run_wrk, summary, to_round, which  # noqa: E402
from tests.integration.conftest import GatewayProcess, NginxProcess  # noqa: E402
from tests.oidc.conftest import ACCOUNTS, POLICIES, Browser, OidcSite  # noqa: E402
from tests.oidc_peer import (  # noqa: E402
    GATEWAY_CLIENT,
    GATEWAY_SECRET,
    GraphServer,
    OpenIdProvider,
)
from tests.peers import RedisServer, free_port  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "proxy.json"
PATH = "/console/door-events.json"
RPS_TARGET = 1.0  # gateway req/s >= mod_auth_openidc's
P99_TARGET = 1.0  # gateway p99 no worse than mod_auth_openidc's

STATIC_SERVER = """\
server {
    listen {{LISTEN}};
    access_log off;
    location / {
        root {{ROOT}};
    }
}
"""

WRK_SCRIPT = """\
-- written by bench/proxy.py
wrk.method = "GET"
{cookie}
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=int(env("BENCH_THREADS", "2")))
    p.add_argument("--connections", type=int, default=int(env("BENCH_CONNECTIONS", "20")))
    p.add_argument("--duration", default=env("BENCH_DURATION", "10s"))
    p.add_argument("--warmup", default=env("BENCH_WARMUP", "3s"))
    p.add_argument("--rounds", type=int, default=int(env("BENCH_ROUNDS", "3")))
    p.add_argument("--workers", type=int, default=int(env("BENCH_WORKERS", "2")))
    p.add_argument("--output", type=Path, default=RESULTS)
    return p.parse_args(argv)


def gateway_supports_proxy() -> bool:
    from gateway.settings import Settings

    return "proxy" in Settings.model_fields


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = which("wrk") or fail("wrk is not installed (Debian package wrk)")
    nginx = which("nginx") or fail("nginx is not installed")
    redis_binary = which("redis-server") or fail("redis-server is not installed")
    if apache_binary() is None:
        fail(
            "apache2 with mod_auth_openidc is not installed (apache2, libapache2-mod-auth-openidc)"
        )
    with_gateway = gateway_supports_proxy()
    work = Path(tempfile.mkdtemp(prefix="ssogw-bench-proxy-"))
    rounds: dict[str, list[Round]] = {}
    try:
        with ExitStack() as stack:
            root = work / "www" / "console"
            root.mkdir(parents=True)
            (root / "door-events.json").write_text(
                json.dumps({"events": ["door 1 opened"] * 40})[:1024].ljust(1024), "utf-8"
            )
            template = work / "static.conf"
            template.write_text(STATIC_SERVER, encoding="utf-8")
            upstream = NginxProcess(
                work / "nginx", {"ROOT": str(work / "www")}, template=template, binary=nginx
            )
            stack.callback(upstream.stop)
            upstream.start()

            apache_port, gateway_port = free_port(), free_port()
            provider = OpenIdProvider(
                work / "op",
                ACCOUNTS,
                redirect_uris=[
                    f"http://localhost:{apache_port}/redirect_uri",
                    f"http://localhost:{gateway_port}/.sso/oidc/callback",
                ],
            )
            stack.callback(provider.stop)
            provider.start()
            apache = ApacheOidc(
                work / "apache",
                port=apache_port,
                upstream=f"127.0.0.1:{upstream.port}",
                discovery=provider.issuer + "/.well-known/openid-configuration",
                client_id=GATEWAY_CLIENT,
                client_secret=GATEWAY_SECRET,
            )
            stack.callback(apache.stop)
            apache.start()

            site = OidcSite(
                provider, GraphServer(provider, {}, 100), [gateway_port], work, work, work
            )
            targets: dict[str, tuple[str, str]] = {
                "direct": (f"http://127.0.0.1:{upstream.port}{PATH}", ""),
            }
            # mod_auth_openidc: its session cookie after a real login
            browser = Browser(site)
            form = browser.http.get(apache.url + PATH, timeout=10)  # -> the provider's form
            final = browser.submit_login(form, "alice", ACCOUNTS["alice"].password)
            if final.status_code != 200 or not final.url.endswith(PATH):
                fail(f"mod_auth_openidc login ended at {final.url} ({final.status_code})")
            cookie = browser.http.cookies.get("mod_auth_openidc_session")
            targets["mod_auth_openidc"] = (
                f"http://localhost:{apache_port}{PATH}",
                f"mod_auth_openidc_session={cookie}",
            )
            if with_gateway:
                redis = RedisServer(redis_binary)
                stack.callback(redis.close)
                redis.start()
                settings: dict[str, Any] = site.gateway_settings()
                settings["session"] = {"store": "redis", "redis_url": redis.url}
                settings["proxy"] = {
                    "upstreams": [
                        {
                            "name": "console",
                            "match": {"hosts": ["localhost"]},
                            "url": f"http://127.0.0.1:{upstream.port}",
                        }
                    ]
                }
                gateway = GatewayProcess(
                    work / "gateway",
                    users=(),
                    policies=POLICIES,
                    settings=settings,
                    workers=args.workers,
                )
                gateway.port = gateway_port
                stack.callback(gateway.stop)
                gateway.start()
                gw_browser = Browser(site)
                final = gw_browser.login("alice", rd=PATH)
                if final.status_code != 200 or not final.url.endswith(PATH):
                    fail(f"gateway login ended at {final.url} ({final.status_code})")
                gw_cookie = gw_browser.http.cookies.get("sso_gw")
                targets["gateway"] = (
                    f"http://localhost:{gateway_port}{PATH}",
                    f"sso_gw={gw_cookie}",
                )

            def measure(name: str, duration: str) -> Round:
                url, cookie_header = targets[name]
                line = (
                    f'wrk.headers["Cookie"] = {json.dumps(cookie_header)}' if cookie_header else ""
                )
                script = work / f"{name}.lua"
                script.write_text(WRK_SCRIPT.format(cookie=line) + WRK_DONE, encoding="utf-8")
                data, _raw = run_wrk(
                    wrk,
                    url,
                    script,
                    threads=args.threads,
                    connections=args.connections,
                    duration=duration,
                )
                answer = requests.get(
                    url, headers={"Cookie": cookie_header}, allow_redirects=False, timeout=10
                )
                if answer.status_code != 200:  # wrk counts a redirect to a login as success
                    fail(f"{name} answered {answer.status_code} after its round, not 200")
                return to_round(name, data)

            print(
                f"bench proxy: wrk -t{args.threads} -c{args.connections} -d{args.duration}, "
                f"{args.rounds} round(s) each, {os.cpu_count()} CPU(s)"
                + ("" if with_gateway else " (this gateway has no proxy mode: not measured)")
            )
            for name in targets:
                measure(name, args.warmup)
            for number in range(1, args.rounds + 1):
                for name in targets:
                    result = measure(name, args.duration)
                    rounds.setdefault(name, []).append(result)
                    print(
                        f"  round {number} {name:17} {result.rps:9.1f} req/s  "
                        f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                        f"errors {result.errors}"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report: dict[str, Any] = {name: summary(rs) for name, rs in rounds.items()}
    direct = report["direct"]
    apache_s = report["mod_auth_openidc"]
    report["ratios"] = {
        "mod_auth_openidc_vs_direct_rps": round(apache_s["median_rps"] / direct["median_rps"], 3)
    }
    if "gateway" in report:
        gw = report["gateway"]
        report["ratios"].update(
            gateway_vs_direct_rps=round(gw["median_rps"] / direct["median_rps"], 3),
            gateway_vs_mod_auth_openidc_rps=round(gw["median_rps"] / apache_s["median_rps"], 3),
            gateway_vs_mod_auth_openidc_p99=round(
                gw["median_p99_ms"] / apache_s["median_p99_ms"], 3
            ),
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print("medians:")
    for name in rounds:
        s = report[name]
        print(f"  {name:17} {s['median_rps']:9.1f} req/s  p99 {s['median_p99_ms']:7.2f} ms")
    for key, value in report["ratios"].items():
        print(f"  {key:34} {value}")
    if "gateway" in report:
        ok_rps = report["ratios"]["gateway_vs_mod_auth_openidc_rps"] >= RPS_TARGET
        ok_p99 = report["ratios"]["gateway_vs_mod_auth_openidc_p99"] <= P99_TARGET
        print(
            f"  targets: req/s >= {RPS_TARGET}x {'met' if ok_rps else 'MISSED'}, "
            f"p99 <= {P99_TARGET}x {'met' if ok_p99 else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
