"""OpenID Connect callback cost: completed logins per second through the real
provider, and the gateway's own CPU time per login.

``make bench`` runs it after the forward-auth benchmark (or ``python bench/oidc.py``).
It starts, on loopback ports it picks, the node ``oidc-provider`` of the tests
(``tests/oidc_op``; Entra ID-shaped tokens) and the gateway (``sso-gateway serve``,
gunicorn, gevent workers, on-disk sessions), then runs complete logins - the
gateway's ``/.sso/start``, the provider's authorization request and login form,
the callback with its code exchange and ID-token validation, the session - from
``--clients`` concurrent HTTP clients for ``--logins`` logins in all.

Reported: logins/s (wall clock, whole flow, both servers on this machine), the
gateway's CPU milliseconds per login (user + system time of the gunicorn master
and workers, from /proc) and the provider's, for scale.  Written to
``bench/results/oidc.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script: make tests.* importable

from tests.integration.conftest import GatewayProcess  # noqa: E402
from tests.oidc.conftest import ACCOUNTS, POLICIES, Browser, OidcSite  # noqa: E402
from tests.oidc_peer import (  # noqa: E402
    GATEWAY_CLIENT,
    GATEWAY_SECRET,
    GraphServer,
    OpenIdProvider,
)
from tests.peers import free_port  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "oidc.json"
TICKS = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                text = Path(f"/proc/{current}/task/{task}/children").read_text()
                todo.extend(int(c) for c in text.split())
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=int(os.environ.get("BENCH_LOGINS", "200")))
    parser.add_argument("--clients", type=int, default=int(os.environ.get("BENCH_CLIENTS", "4")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("BENCH_WORKERS", "2")))
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-oidc-") as tmp:
        directory = Path(tmp)
        port = free_port()
        base = f"http://localhost:{port}"
        provider = OpenIdProvider(
            directory / "op",
            ACCOUNTS,
            redirect_uris=[f"{base}/.sso/oidc/callback"],
            post_logout_uris=[f"{base}/.sso/logout"],
        )
        provider.start()
        graph = GraphServer(provider, {}, page=100)
        site = OidcSite(provider, graph, [port], directory, directory, directory)
        settings = site.gateway_settings()
        settings["providers"]["oidc"].update(client_id=GATEWAY_CLIENT, client_secret=GATEWAY_SECRET)
        gateway = GatewayProcess(
            directory / "gw", users=(), policies=POLICIES, settings=settings, workers=args.workers
        )
        gateway.port = port
        gateway.start()
        try:
            people = ("adam", "sue", "alice", "carl")

            def one(i: int) -> None:
                login = people[i % len(people)]
                browser = Browser(site)
                final = browser.login(login, rd="/.sso/healthz")
                if final.status_code != 200 or not final.url.endswith("/.sso/healthz"):
                    status = final.status_code
                    raise RuntimeError(f"login {i} ({login}) ended at {final.url} ({status})")

            # warm-up: discovery, JWKS, connection pools, code paths
            for i in range(8):
                one(i)
            assert gateway.pid is not None and provider._process is not None
            gw_cpu0 = cpu_seconds(gateway.pid)
            op_cpu0 = cpu_seconds(provider._process.pid)
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(one, range(args.logins)))
            wall = time.perf_counter() - started
            gw_cpu = cpu_seconds(gateway.pid) - gw_cpu0
            op_cpu = cpu_seconds(provider._process.pid) - op_cpu0
        finally:
            gateway.stop()
            provider.stop()
    report: dict[str, Any] = {
        "logins": args.logins,
        "clients": args.clients,
        "workers": args.workers,
        "seconds": round(wall, 2),
        "logins_per_second": round(args.logins / wall, 1),
        "gateway_cpu_ms_per_login": round(1000 * gw_cpu / args.logins, 2),
        "provider_cpu_ms_per_login": round(1000 * op_cpu / args.logins, 2),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print("OIDC logins (gateway + node oidc-provider on this machine):")
    for key, value in report.items():
        print(f"  {key:28} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
