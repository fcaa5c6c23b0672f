"""Reverse-proxy streams: a 1 GB download through the gateway against the same
download straight from the upstream, and 1,000 concurrent WebSockets through
one gateway worker.

``make bench`` runs it (or ``python bench/proxy_streams.py``).  On loopback
ports it picks, it starts nginx serving a 1 GB file (sparse, so it costs no disk),
a WebSocket echo server (the ``websockets`` library), and the gateway
(``sso-gateway serve``, ONE gevent worker, local users, on-disk sessions) with
both as ``proxy.upstreams``.  It signs in through the real login form, then:

* downloads the file with ``curl`` directly, through the gateway and - when
  ``haproxy`` is installed - through HAProxy with splice (the established C
  relay, no authentication), alternating, ``--rounds`` times each; reports the
  median and the best of each, and samples the gateway worker's RSS every 50 ms
  during its downloads;
* opens ``--websockets`` WebSockets through the gateway at once (each sends and
  receives a message), holds them, and reads the worker's RSS.

Targets: download throughput >= 0.8x direct (median of rounds), RSS growth
< 50 MB; RSS with 1,000 open WebSockets < 200 MB.  Written to ``bench/results/proxy_streams.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script: make tests.* and bench.* importable

from bench.haproxy_relay import HaproxyRelay, haproxy_binary  # noqa: E402
from bench.run import fail, which  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    ALICE,
    GatewayProcess,
    NginxProcess,
    http_client,
    submit_login,
)
from tests.integration.proxy_upstream import WebSocketUpstream  # noqa: E402
from tests.peers import free_port  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "proxy_streams.json"
SIZE = 1024**3
THROUGHPUT_TARGET = 0.8
RSS_GROWTH_TARGET_MB = 50
WS_RSS_TARGET_MB = 200

POLICIES = {
    "00-site.yaml": """\
timezone: UTC
tiers:
  operator: {rank: 30, groups: [Intercom-Operators]}
routes:
  - {name: console, hosts: [127.0.0.1], path: /, allow: [operator]}
""",
}

STATIC_SERVER = """\
server {
    listen {{LISTEN}};
    access_log off;
    sendfile on;
    location / {
        root {{ROOT}};
    }
}
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if len(children) != 1:
        fail(f"expected one gunicorn worker under {master}, found {children}")
    return int(children[0])


def gunicorn_master(serve_pid: int) -> int:
    """``sso-gateway serve`` runs gunicorn's arbiter in its own process."""
    return serve_pid


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def curl_download(curl: str, url: str, cookie: str | None) -> float:
    """Bytes per second of one download to /dev/null."""
    args = [curl, "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url]
    if cookie:
        args[1:1] = ["-H", f"Cookie: {cookie}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True).stdout
    size, seconds = out.split()
    if int(size) != SIZE:
        fail(f"downloaded {size} bytes from {url}, expected {SIZE}")
    return SIZE / float(seconds)


async def open_websockets(url: str, cookie: str, count: int) -> tuple[int, Any]:
    from websockets.asyncio.client import connect

    async def one(i: int) -> Any:
        conn = await connect(url, additional_headers={"Cookie": cookie}, open_timeout=60)
        await conn.recv()  # the upstream's hello
        await conn.send(f"ping {i}")
        if await conn.recv() != f"ping {i}":
            raise RuntimeError("echo mismatch")
        return conn

    conns = []
    for start in range(0, count, 100):  # in batches, as consoles would come and go
        conns.extend(await asyncio.gather(*(one(i) for i in range(start, min(count, start + 100)))))
    return len(conns), conns


def _mb(rates: list[float]) -> dict[str, Any]:
    """Median and best of bytes-per-second figures, in MB/s."""
    return {
        "median": round(statistics.median(rates) / 1e6, 1),
        "best": round(max(rates) / 1e6, 1),
        "rounds": [round(r / 1e6, 1) for r in rates],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=int(env("BENCH_STREAM_ROUNDS", "5")))
    p.add_argument("--websockets", type=int, default=int(env("BENCH_WEBSOCKETS", "1000")))
    p.add_argument("--output", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    curl = which("curl") or fail("curl is not installed")
    nginx = which("nginx") or fail("nginx is not installed")
    work = Path(tempfile.mkdtemp(prefix="ssogw-bench-streams-"))
    report: dict[str, Any] = {}
    try:
        with ExitStack() as stack:
            www = work / "www"
            www.mkdir()
            with (www / "firmware.bin").open("wb") as f:
                f.truncate(SIZE)  # sparse: 1 GB of zeros without the disk space
            template = work / "static.conf"
            template.write_text(STATIC_SERVER, encoding="utf-8")
            upstream = NginxProcess(
                work / "nginx", {"ROOT": str(www)}, template=template, binary=nginx
            )
            stack.callback(upstream.stop)
            upstream.start()
            relay: HaproxyRelay | None = None
            if haproxy_binary() is not None:
                relay = HaproxyRelay(
                    work / "haproxy", port=free_port(), upstream=f"127.0.0.1:{upstream.port}"
                )
                stack.callback(relay.stop)
                relay.start()
            ws = WebSocketUpstream()
            ws.start()
            stack.callback(ws.stop)
            gateway = GatewayProcess(
                work / "gateway",
                policies=POLICIES,
                workers=1,
                settings={
                    "listen": {"worker_connections": args.websockets + 200},
                    "proxy": {
                        "upstreams": [
                            {
                                "name": "events",
                                "match": {"hosts": ["127.0.0.1"], "path_prefix": "/events"},
                                "url": ws.url,
                            },
                            {
                                "name": "files",
                                "match": {"hosts": ["127.0.0.1"]},
                                "url": f"http://127.0.0.1:{upstream.port}",
                            },
                        ]
                    },
                },
            )
            stack.callback(gateway.stop)
            gateway.start()
            with http_client() as client:
                if submit_login(client, gateway.url, ALICE).status_code != 303:
                    fail("could not sign in at the gateway")
                cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies)
            assert gateway.pid is not None
            worker = worker_pid(gunicorn_master(gateway.pid))

            direct_url = f"http://127.0.0.1:{upstream.port}/firmware.bin"
            proxied_url = f"{gateway.url}/firmware.bin"
            direct: list[float] = []
            proxied: list[float] = []
            relayed: list[float] = []
            rss_before = rss_mb(worker)
            peak = rss_before
            for _ in range(args.rounds):  # alternating: drifts of the machine hit all alike
                direct.append(curl_download(curl, direct_url, None))
                with RssSampler(worker) as sampler:
                    proxied.append(curl_download(curl, proxied_url, cookie))
                peak = max(peak, sampler.peak)
                if relay is not None:
                    relayed.append(curl_download(curl, f"{relay.url}/firmware.bin", None))
            report["download"] = {
                "bytes": SIZE,
                "rounds": args.rounds,
                "direct_mb_per_s": _mb(direct),
                "gateway_mb_per_s": _mb(proxied),
                "haproxy_mb_per_s": _mb(relayed) if relayed else None,
                "ratio": round(statistics.median(proxied) / statistics.median(direct), 3),
                "ratio_best": round(max(proxied) / max(direct), 3),
                "haproxy_ratio": (
                    round(statistics.median(relayed) / statistics.median(direct), 3)
                    if relayed
                    else None
                ),
                "worker_rss_before_mb": round(rss_before, 1),
                "worker_rss_peak_mb": round(peak, 1),
                "worker_rss_growth_mb": round(peak - rss_before, 1),
            }

            ws_url = gateway.url.replace("http://", "ws://") + "/events/live"
            rss_idle = rss_mb(worker)

            async def hold() -> tuple[int, float]:
                opened, conns = await open_websockets(ws_url, cookie, args.websockets)
                rss_open = rss_mb(worker)
                await asyncio.gather(*(c.close() for c in conns))
                return opened, rss_open

            opened, rss_open = asyncio.run(hold())
            report["websockets"] = {
                "open": opened,
                "worker_rss_idle_mb": round(rss_idle, 1),
                "worker_rss_with_all_open_mb": round(rss_open, 1),
                "per_websocket_kb": round((rss_open - rss_idle) * 1024 / max(1, opened), 1),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    d, w = report["download"], report["websockets"]
    report["targets"] = {
        "download_ratio_met": d["ratio"] >= THROUGHPUT_TARGET,
        "download_rss_growth_met": d["worker_rss_growth_mb"] < RSS_GROWTH_TARGET_MB,
        "websocket_rss_met": w["worker_rss_with_all_open_mb"] < WS_RSS_TARGET_MB,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"1 GB download (curl to /dev/null, {d['rounds']} alternating rounds; MB/s):")
    print(f"  {'':8} {'median':>8} {'best':>8}  ratio to direct (median; best)")
    print(f"  direct  {d['direct_mb_per_s']['median']:8.1f} {d['direct_mb_per_s']['best']:8.1f}")
    print(
        f"  gateway {d['gateway_mb_per_s']['median']:8.1f} {d['gateway_mb_per_s']['best']:8.1f}"
        f"  {d['ratio']}; {d['ratio_best']} (target >= 0.8)"
    )
    if d["haproxy_mb_per_s"] is not None:
        print(
            f"  haproxy {d['haproxy_mb_per_s']['median']:8.1f} {d['haproxy_mb_per_s']['best']:8.1f}"
            f"  {d['haproxy_ratio']} (splice, no authentication: the C reference)"
        )
    else:
        print("  haproxy not installed (Debian package haproxy): no C reference measured")
    print(
        f"  gateway worker RSS {d['worker_rss_before_mb']} -> peak {d['worker_rss_peak_mb']} MB"
        f" (growth {d['worker_rss_growth_mb']} MB, target < 50)"
    )
    print(f"{w['open']} WebSockets open through one worker:")
    print(
        f"  worker RSS {w['worker_rss_idle_mb']} -> {w['worker_rss_with_all_open_mb']} MB"
        f" ({w['per_websocket_kb']} KB each; target < 200 MB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
