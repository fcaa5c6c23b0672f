"""The access log end to end: ``sso-gateway serve`` (gunicorn) in reverse-proxy
mode in front of a real upstream, ``access_log`` enabled into a file.

With the default gevent worker the gateway's own server side writes the lines
(requests it refuses itself included); with the ``sync`` worker gunicorn's
handler serves and the app's middleware writes them.  Either way a proxied
request names the person, their tier and the upstream, and the lines reach the
file while the gateway runs (the flusher) and when it stops (worker exit).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import (
    ALICE,
    EchoUpstream,
    GatewayProcess,
    http_client,
    start_gateway,
    submit_login,
)

FORWARDED_CLIENT = "203.0.113.7"  # behind the trusted proxy 127.0.0.1 (the default)


def _lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines()]


def _wait_for(path: Path, target: str, timeout: float = 10.0) -> dict[str, Any]:
    """The line for ``target``, once the running gateway has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in _lines(path):
            if line.get("target") == target:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {target}: {_lines(path)}")


def _client() -> requests.Session:
    """A client that leaves no connection idle when the gateway stops (an idle
    keep-alive connection would hold the worker's graceful stop up until its
    timeout, and the worker would then be killed instead of exiting)."""
    client = http_client()
    client.headers["Connection"] = "close"
    return client


def _gateway(
    request: pytest.FixtureRequest, directory: Path, upstream: EchoUpstream, worker_class: str
) -> tuple[GatewayProcess, Path]:
    log_path = directory / "logs" / "access.log"
    settings = {
        "listen": {"worker_class": worker_class},
        "access_log": {"enabled": True, "destination": str(log_path)},
        "proxy": {
            "upstreams": [
                {
                    "name": "intercom",
                    "match": {"hosts": ["127.0.0.1", "localhost"]},
                    "url": f"http://{upstream.address}",
                }
            ]
        },
    }
    return start_gateway(request, directory, settings=settings, workers=1), log_path


@pytest.mark.parametrize("worker_class", ["gevent", "sync"])
def test_a_proxied_request_names_the_person_tier_and_upstream(
    request: pytest.FixtureRequest, tmp_path: Path, upstream: EchoUpstream, worker_class: str
) -> None:
    gateway, log_path = _gateway(request, tmp_path / "gateway", upstream, worker_class)
    client = _client()
    request.addfinalizer(client.close)
    assert submit_login(client, gateway.url, ALICE).status_code == 303

    target = "/console/live?camera=3"
    resp = client.get(
        gateway.url + target,
        headers={"User-Agent": "door-panel/1.0", "X-Forwarded-For": FORWARDED_CLIENT},
        timeout=10,
    )
    assert resp.status_code == 200
    line = _wait_for(log_path, target)  # written while the gateway runs
    assert line["user"] == "alice"
    assert line["tier"] == "operator"
    assert line["upstream"] == "intercom"
    assert line["client_ip"] == FORWARDED_CLIENT and line["remote_addr"] == "127.0.0.1"
    assert line["method"] == "GET" and line["protocol"] == "HTTP/1.1"
    assert line["status"] == 200 and line["bytes"] == len(resp.content)
    assert line["user_agent"] == "door-panel/1.0" and line["duration_ms"] >= 0
    assert line["time"].endswith("Z")

    with _client() as anonymous:
        answer = anonymous.get(gateway.url + "/console/", allow_redirects=False, timeout=10)
        assert answer.status_code == 302
    denied = client.get(gateway.url + "/admin/users", allow_redirects=False, timeout=10)
    assert denied.status_code == 403
    last = client.get(gateway.url + "/console/last", timeout=10)
    assert last.status_code == 200
    gateway.stop()  # at once: the worker writes what still waits as it exits
    assert "Worker exiting" in gateway.log_text()

    lines = _lines(log_path)
    by_target = {line["target"]: line for line in lines}
    assert by_target["/.sso/login"]["status"] in (200, 303)
    assert by_target["/console/"]["status"] == 302 and "user" not in by_target["/console/"]
    assert by_target["/console/"]["upstream"] == "intercom"
    assert by_target["/admin/users"]["status"] == 403
    assert by_target["/admin/users"]["user"] == "alice"
    assert by_target["/console/last"]["user"] == "alice"
    assert len([x for x in lines if x["target"] == target]) == 1  # one line, not two
    assert "access log cannot be written" not in gateway.log_text()


def test_a_request_the_server_refuses_is_logged(
    request: pytest.FixtureRequest, tmp_path: Path, upstream: EchoUpstream
) -> None:
    gateway, log_path = _gateway(request, tmp_path / "gateway", upstream, "gevent")
    smuggling = (
        b"POST /console/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: smuggler/0.1\r\n"
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(smuggling)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    line = _wait_for(log_path, "/console/upload")
    assert line["status"] == 400 and line["method"] == "POST"
    assert line["user_agent"] == "smuggler/0.1" and line["refused"]
    assert "user" not in line
    assert upstream.seen == []
    assert all(x.get("target") != "/smuggled" for x in _lines(log_path))
