"""Forward-auth benchmark: the gateway's ``/.sso/auth`` against a bare-Flask floor.

``make bench`` (or ``python bench/run.py``) starts, on loopback ports it picks:

* a private ``redis-server`` (no persistence);
* the gateway, ``sso-gateway serve``, with ``session.store: redis``, the shipped
  ``policies/`` and one local user, under gunicorn (gevent workers);
* the floor, ``bench/floor_app.py``: a Flask app whose view answers 202, under the
  same gunicorn server class and options as the gateway.

It signs in through the real login form to get a session cookie, then drives
both with ``wrk`` (keep-alive connections, every request carrying that cookie
and the headers nginx ``auth_request`` sends: ``X-Original-URL``,
``X-Original-Method``, ``X-Forwarded-For``).  Every gateway answer is an allowed
202 with identity headers and a signed JWT; any other status spoils the run.

Rounds alternate floor, gateway, floor, gateway ... after a warm-up of each, and
the medians are reported: requests/s, p99 latency, and the ratios against the
targets (gateway rps >= 0.85 x floor, gateway p99 <= 1.5 x floor).  The figures
are printed and written to ``bench/results/latest.json``.

Options (or environment): --threads (BENCH_THREADS, 2), --connections
(BENCH_CONNECTIONS, 20), --duration (BENCH_DURATION, 10s), --rounds
(BENCH_ROUNDS, 3), --warmup (BENCH_WARMUP, 3s), --workers (BENCH_WORKERS, 2);
--check exits 1 when a target is missed; --keep keeps the temporary directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script: make tests.peers importable

from tests.peers import RedisServer, child_env, free_port, stop_process, tail  # noqa: E402

BIN_DIR = Path(sys.executable).parent
RESULTS = REPO_ROOT / "bench" / "results" / "latest.json"
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")

RPS_TARGET = 0.85  # gateway requests/s >= 0.85 x floor
P99_TARGET = 1.5  # gateway p99 <= 1.5 x floor

USER = "alice"
PASSWORD = "bench-door-station-pw"
GROUPS = ("Intercom-Operators", "UC-Users")
# judged by the shipped policies/: route intercom-console, allowed for operators
ORIGINAL_URL = "https://intercom.site-a.example/console/door-events"
CLIENT_ADDRESS = "10.0.0.15"

WRK_SCRIPT = """\
-- written by bench/run.py: the headers nginx auth_request sends, then a JSON summary
wrk.method = "GET"
wrk.headers["Cookie"] = {cookie}
wrk.headers["X-Original-URL"] = {original_url}
wrk.headers["X-Original-Method"] = "GET"
wrk.headers["X-Forwarded-For"] = {client}
wrk.headers["Accept"] = "*/*"
"""

# the JSON summary every benchmark's wrk script ends with (parsed by run_wrk)
WRK_DONE = """\
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


# -- small helpers ------------------------------------------------------------------


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))


def fail(message: str) -> NoReturn:
    print(f"bench: {message}", file=sys.stderr)
    raise SystemExit(2)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _status(url: str, headers: dict[str, str] | None = None) -> tuple[int | None, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _NO_PROXY.open(request, timeout=2) as response:
            return int(response.status), dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items())
    except OSError:
        return None, {}


@contextmanager
def running(args: Sequence[str], log: Path, env: dict[str, str]) -> Iterator[int]:
    """Run a server process for the duration of the block; yields its PID."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process.pid
    finally:
        stop_process(process)


def wait_http(url: str, log: Path, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _status(url)[0] == 200:
            return
        time.sleep(0.05)
    fail(f"{what} did not answer {url}:\n{tail(log)}")


# -- Redis ----------------------------------------------------------------------------


# -- the two servers ------------------------------------------------------------------


def write_gateway_files(directory: Path, redis_url: str) -> Path:
    from gateway.providers.local import add_user

    users_file = directory / "users.yaml"
    add_user(
        users_file,
        USER,
        PASSWORD,
        name="Alice Operator",
        email="alice@example.test",
        groups=GROUPS,
        attributes={"ipPhone": "4711", "department": "Security"},
    )
    config = directory / "config.yaml"
    config.write_text(
        "# written by bench/run.py\n"
        "site_name: Forward-auth benchmark\n"
        f"data_dir: {directory / 'var'}\n"
        f"policies_dir: {REPO_ROOT / 'policies'}\n"
        "cookie: {secure: false}   # plain HTTP on loopback\n"
        f"session: {{store: redis, redis_url: '{redis_url}'}}\n"
        f"providers: {{local: {{users_file: {users_file}}}}}\n"
        f"audit: {{destination: {directory / 'audit.log'}}}\n"
        "listen: {workers: 2, worker_class: gevent}\n",
        encoding="utf-8",
    )
    return config


class _Fields(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "input" and "name" in values:
            self.fields[values["name"]] = values.get("value", "")


def sign_in(base_url: str) -> str:
    """Log in through the form; the Cookie header value that carries the session."""
    import requests

    with requests.Session() as client:
        client.trust_env = False  # never a proxy: loopback only
        form = client.get(base_url + "/.sso/login", timeout=10)
        parser = _Fields()
        parser.feed(form.text)
        fields = {**parser.fields, "username": USER, "password": PASSWORD}
        answer = client.post(
            base_url + "/.sso/login", data=fields, allow_redirects=False, timeout=10
        )
        if answer.status_code != 303:
            fail(f"login answered {answer.status_code}: {answer.text[:300]}")
        return "; ".join(f"{c.name}={c.value}" for c in client.cookies)


# -- wrk --------------------------------------------------------------------------------


@dataclass
class Round:
    target: str
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int
    error_kinds: dict[str, int]


def run_wrk(
    wrk: str, url: str, script: Path, *, threads: int, connections: int, duration: str
) -> tuple[dict[str, Any], str]:
    args = [
        wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}",
        "--latency", "--timeout", "5s", "-s", str(script), url,
    ]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    match = re.search(r"^BENCH_JSON (\{.*\})$", result.stdout, re.MULTILINE)
    if result.returncode != 0 or match is None:
        fail(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    data: dict[str, Any] = json.loads(match.group(1))
    return data, result.stdout


def to_round(target: str, data: dict[str, Any]) -> Round:
    seconds = data["duration_us"] / 1e6
    kinds = ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    error_kinds = {k: int(data[k]) for k in kinds if data[k]}
    return Round(
        target=target,
        requests=data["requests"],
        rps=round(data["requests"] / seconds, 1),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        mean_ms=round(data["mean_us"] / 1000, 3),
        max_ms=data["max_us"] / 1000,
        errors=sum(error_kinds.values()),
        error_kinds=error_kinds,
    )


def count_events(audit_log: Path) -> dict[str, int]:
    """How many audit events of each kind the gateway wrote (allowed requests write none)."""
    counts: Counter[str] = Counter()
    try:
        lines = audit_log.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            counts[str(json.loads(line).get("event"))] += 1
        except (ValueError, AttributeError):
            counts["(unreadable line)"] += 1
    return dict(counts)


def summary(rounds: list[Round]) -> dict[str, Any]:
    return {
        "median_rps": round(statistics.median(r.rps for r in rounds), 1),
        "median_p99_ms": round(statistics.median(r.p99_ms for r in rounds), 3),
        "median_p50_ms": round(statistics.median(r.p50_ms for r in rounds), 3),
        "rounds": [asdict(r) for r in rounds],
    }


def versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    for dist in ("intercom-sso-gateway", "gunicorn", "gevent", "flask", "redis"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


# -- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Forward-auth benchmark (gateway vs floor).")
    parser.add_argument("--threads", type=int, default=int(_env("BENCH_THREADS", "2")))
    parser.add_argument("--connections", type=int, default=int(_env("BENCH_CONNECTIONS", "20")))
    parser.add_argument("--duration", default=_env("BENCH_DURATION", "10s"))
    parser.add_argument("--warmup", default=_env("BENCH_WARMUP", "3s"))
    parser.add_argument("--rounds", type=int, default=int(_env("BENCH_ROUNDS", "3")))
    parser.add_argument("--workers", type=int, default=int(_env("BENCH_WORKERS", "2")))
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = which("wrk") or fail("wrk is not installed (Debian package wrk)")
    redis_binary = which("redis-server") or fail("redis-server is not installed")
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="ssogw-bench-"))
    try:
        with ExitStack() as stack:
            redis = RedisServer(redis_binary)
            stack.callback(redis.close)
            redis.start()

            config = write_gateway_files(work, redis.url)
            env = child_env()
            gateway_port, floor_port = free_port(), free_port()
            gateway_log, floor_log = work / "gateway.log", work / "floor.log"
            workers = ["--workers", str(args.workers)]
            gateway_cmd = [
                str(BIN_DIR / "sso-gateway"), "--config", str(config), "serve",
                "--bind", f"127.0.0.1:{gateway_port}", *workers,
            ]  # fmt: skip
            floor_cmd = [
                sys.executable, str(REPO_ROOT / "bench" / "floor_app.py"), "--config", str(config),
                "--bind", f"127.0.0.1:{floor_port}", *workers,
            ]  # fmt: skip
            stack.enter_context(running(gateway_cmd, gateway_log, env))
            stack.enter_context(running(floor_cmd, floor_log, env))
            gateway = f"http://127.0.0.1:{gateway_port}"
            floor = f"http://127.0.0.1:{floor_port}"
            wait_http(gateway + "/.sso/healthz", gateway_log, "the gateway")
            deadline = time.monotonic() + 30
            while _status(floor + "/.sso/auth")[0] != 202:
                if time.monotonic() > deadline:
                    fail(f"the floor did not start:\n{tail(floor_log)}")
                time.sleep(0.05)

            cookie = sign_in(gateway)
            headers = {
                "Cookie": cookie,
                "X-Original-URL": ORIGINAL_URL,
                "X-Original-Method": "GET",
                "X-Forwarded-For": CLIENT_ADDRESS,
            }
            status, answer = _status(gateway + "/.sso/auth", headers)
            if status != 202 or answer.get("X-Auth-Request-User") != USER:
                fail(f"the gateway did not allow the benchmark request ({status}): {answer}")
            if not answer.get("X-Auth-Request-Jwt"):
                fail("the gateway answered without a signed assertion")

            script = work / "auth.lua"
            script.write_text(
                WRK_SCRIPT.format(
                    cookie=json.dumps(cookie),
                    original_url=json.dumps(ORIGINAL_URL),
                    client=json.dumps(CLIENT_ADDRESS),
                )
                + WRK_DONE,
                encoding="utf-8",
            )
            targets: dict[str, str] = {"floor": floor, "gateway": gateway}

            def measure(url: str, duration: str) -> tuple[dict[str, Any], str]:
                return run_wrk(
                    wrk,
                    url + "/.sso/auth",
                    script,
                    threads=args.threads,
                    connections=args.connections,
                    duration=duration,
                )

            print(
                f"bench: wrk -t{args.threads} -c{args.connections} -d{args.duration}, "
                f"{args.rounds} round(s) each, gunicorn {args.workers} gevent workers, "
                f"{os.cpu_count()} CPU(s)"
            )
            for url in targets.values():  # warm-up, not counted
                measure(url, args.warmup)
            rounds: dict[str, list[Round]] = {"floor": [], "gateway": []}
            for number in range(1, args.rounds + 1):
                for name, url in targets.items():
                    data, raw = measure(url, args.duration)
                    (work / f"wrk-{name}-{number}.txt").write_text(raw, encoding="utf-8")
                    result = to_round(name, data)
                    rounds[name].append(result)
                    print(
                        f"  round {number} {name:8} {result.rps:9.1f} req/s  "
                        f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                        f"errors {result.errors}"
                        + (f" {result.error_kinds}" if result.errors else "")
                    )
            audit_events = count_events(work / "audit.log")
            if any(r.errors for rs in rounds.values() for r in rs):
                print(
                    "bench: WARNING: some answers were errors (status >= 400, timeouts or "
                    f"socket errors); gateway audit events: {audit_events}",
                    file=sys.stderr,
                )
    finally:
        if args.keep:
            print(f"bench: files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    floor_s, gateway_s = summary(rounds["floor"]), summary(rounds["gateway"])
    rps_ratio = round(gateway_s["median_rps"] / floor_s["median_rps"], 3)
    p99_ratio = round(gateway_s["median_p99_ms"] / floor_s["median_p99_ms"], 3)
    met = {"rps": rps_ratio >= RPS_TARGET, "p99": p99_ratio <= P99_TARGET}
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.machine(),
            # other work on the machine skews everything: 1-minute load before / after
            "loadavg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "versions": versions(),
        "settings": {
            "wrk": f"-t{args.threads} -c{args.connections} -d{args.duration} --latency",
            "warmup": args.warmup,
            "rounds": args.rounds,
            "gunicorn": f"{args.workers} gevent workers (gateway.serve.gunicorn_options)",
            "session_store": "redis",
            "request": {"path": "/.sso/auth", "x_original_url": ORIGINAL_URL},
        },
        "floor": floor_s,
        "gateway": gateway_s,
        "ratios": {"rps_gateway_over_floor": rps_ratio, "p99_gateway_over_floor": p99_ratio},
        "targets": {"rps_ratio_min": RPS_TARGET, "p99_ratio_max": P99_TARGET},
        "met": met,
        "errors": {name: sum(r.errors for r in rs) for name, rs in rounds.items()},
        "gateway_audit_events": audit_events,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print()
    print(f"{'':10}{'req/s (median)':>16}{'p50 ms':>10}{'p99 ms (median)':>17}")
    for name, s in (("floor", floor_s), ("gateway", gateway_s)):
        print(
            f"{name:10}{s['median_rps']:16.1f}{s['median_p50_ms']:10.2f}{s['median_p99_ms']:17.2f}"
        )
    print(f"rps  gateway/floor = {rps_ratio:.3f}  (target >= {RPS_TARGET}: {verdict(met['rps'])})")
    print(f"p99  gateway/floor = {p99_ratio:.3f}  (target <= {P99_TARGET}: {verdict(met['p99'])})")
    print(f"results: {args.output}")
    return 1 if args.check and not all(met.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
