"""``sso-gateway demo`` (what ``make demo`` runs), started as a newcomer starts
it: the gateway under gunicorn in reverse-proxy mode in front of the demo
intercom dashboard, whose live event feed is a WebSocket relayed through the
gateway and closed with 1008 when the person signs out."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.integration.conftest import form_fields
from tests.peers import child_env, free_port, launch, stop_process, tail

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "demo-password-for-the-tests"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "demo.log"
    env = {**child_env(), "SSO_GATEWAY_DEMO_PASSWORD": PASSWORD}
    command = [sys.executable, "-m", "gateway.cli", "demo", "--port", str(port)]
    command += ["--dir", str(tmp_path / "demo"), "--policies", str(REPO / "policies")]
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:  # a worker still booting may hold a connection unanswered
        return requests.get(base + "/.sso/healthz", timeout=2).status_code == 200

    process = launch(command, log, answers, 60, env=env, cwd=REPO)
    if process is None:
        pytest.fail("the demo did not start:\n" + tail(log))
    try:
        yield base
    finally:
        stop_process(process)


def _sign_in(base: str, user: str) -> requests.Session:
    client = requests.Session()
    form = client.get(base + "/", timeout=10)  # the dashboard sends a stranger to sign in
    assert "/.sso/login" in form.url
    page = client.post(
        form.url,
        data={**form_fields(form.text), "username": user, "password": PASSWORD},
        timeout=10,
    )
    assert page.status_code == 200 and page.url == base + "/", page.text[:300]
    return client


def test_the_demo_dashboard_works_through_the_gateway(demo: str) -> None:
    client = _sign_in(demo, "alice")
    page = client.get(demo + "/", timeout=10).text
    assert "Intercom dashboard" in page
    assert "<b>alice</b>" in page and "<b>operator</b>" in page  # identity headers arrived
    cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies)
    with connect(
        demo.replace("http", "ws") + "/events",
        additional_headers={"Cookie": cookie},
        open_timeout=10,
        close_timeout=1,
    ) as feed:
        assert json.loads(feed.recv(timeout=10)) == {"door": "Gateway", "event": "hello alice"}
        feed.send("ring the lobby")
        assert json.loads(feed.recv(timeout=10))["event"] == "ring the lobby"
        logout = client.get(demo + "/.sso/logout", timeout=10)
        client.post(demo + "/.sso/logout", data=form_fields(logout.text), timeout=10)
        with pytest.raises(ConnectionClosed):
            while True:
                feed.recv(timeout=10)  # door events, then the gateway's close
        assert (feed.close_code, feed.close_reason) == (1008, "session ended")
    assert "/.sso/login" in client.get(demo + "/", timeout=10).url
