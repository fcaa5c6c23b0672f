"""The ``make demo`` upstream: a small intercom dashboard behind the gateway's
reverse proxy, so that a newcomer sees the whole path work - sign-in, the
identity headers the dashboard receives, and a live WebSocket event feed relayed
through the gateway (ended with a close frame when the session ends).

It runs in a thread of ``sso-gateway demo``'s main process on a loopback port
and trusts the identity headers it is sent: it is reachable only through the
gateway on this machine.  Never a part of a real deployment.
"""

from __future__ import annotations

import html
import json
import random
import threading
import time
from http import HTTPStatus
from typing import Any

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from gateway.sockets import current_pid

__all__ = ["DemoUpstream"]

EVENT_EVERY = 3.0  # seconds between made-up door events
_DOORS = ("Main entrance", "Loading bay", "Server room", "Staff car park")
_EVENTS = ("door opened", "door closed", "call from the door station", "badge refused")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Intercom dashboard (demo)</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 46rem; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .2rem .8rem; text-align: left; }}
#feed {{ border: 1px solid #bbb; padding: .5rem; height: 14rem; overflow-y: auto; }}
.ended {{ color: #a00; font-weight: bold; }}
</style></head>
<body>
<h1>Intercom dashboard <small>(demo upstream)</small></h1>
<p>Signed in through the gateway as <b>{user}</b> ({email}), tier <b>{tier}</b>.</p>
<table><tr><th>Header the dashboard received</th><th>Value</th></tr>{rows}</table>
<h2>Live door events (WebSocket through the gateway)</h2>
<div id="feed"></div>
<p><a href="/.sso/userinfo">Who am I (gateway)</a> &middot;
<a href="/.sso/logout">Sign out</a> (the feed below closes within seconds)</p>
<script>
const feed = document.getElementById("feed");
function line(text, cls) {{
  const p = document.createElement("div");
  p.textContent = new Date().toLocaleTimeString() + "  " + text;
  if (cls) p.className = cls;
  feed.prepend(p);
}}
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") +
                         location.host + "/events");
ws.onopen = () => line("feed connected");
ws.onmessage = (m) => {{ const e = JSON.parse(m.data); line(e.door + ": " + e.event); }};
ws.onclose = (e) => {{
  if (e.code === 1008) {{
    line("feed closed by the gateway: " + e.reason + " - sign in again", "ended");
  }} else {{
    line("feed closed (" + e.code + ")", "ended");
  }}
}};
</script>
</body></html>
"""


class DemoUpstream:
    """``GET /`` the dashboard page, ``/events`` the WebSocket feed."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server: Server = serve(
            self._feed,
            host,
            port,
            process_request=self._page,
            server_header="demo-intercom-dashboard",
            compression=None,
        )
        self.port: int = self._server.socket.getsockname()[1]
        self._owner = current_pid()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="demo-upstream", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._owner = current_pid()
        self._thread.start()

    def stop(self) -> None:
        """Stop serving - in the process that started it only (gunicorn's workers
        are forked from it and unwind through the same code when they exit)."""
        if current_pid() != self._owner:
            return
        if self._thread.is_alive():
            self._server.shutdown()
        else:
            self._server.socket.close()

    def _page(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] == "/events":
            return None  # the WebSocket handshake goes on
        if request.path.split("?", 1)[0] != "/":
            return _answer(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        who = _identity(request.headers)
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(_short(v))}</td></tr>"
            for k, v in request.headers.raw_items()
            if k.lower().startswith("x-auth-request-")
        )
        body = _PAGE.format(
            user=html.escape(who["user"]),
            email=html.escape(who["email"]),
            tier=html.escape(who["tier"]),
            rows=rows,
        )
        return _answer(HTTPStatus.OK, body.encode(), "text/html; charset=utf-8")

    def _feed(self, connection: ServerConnection) -> None:
        request = connection.request
        who = _identity(request.headers if request is not None else Headers())
        rng = random.Random()  # noqa: S311  # made-up demo events, nothing secret
        try:
            connection.send(json.dumps({"door": "Gateway", "event": f"hello {who['user']}"}))
            while True:
                try:
                    said = connection.recv(timeout=EVENT_EVERY)
                except TimeoutError:
                    event = {"door": rng.choice(_DOORS), "event": rng.choice(_EVENTS)}
                    connection.send(json.dumps({**event, "at": int(time.time())}))
                    continue
                connection.send(json.dumps({"door": "Echo", "event": str(said)[:200]}))
        except ConnectionClosed:
            return


def _identity(headers: Any) -> dict[str, str]:
    return {
        "user": headers.get("X-Auth-Request-User") or "(nobody)",
        "email": headers.get("X-Auth-Request-Email") or "",
        "tier": headers.get("X-Auth-Request-Tier") or "(none)",
    }


def _short(value: str) -> str:
    return value if len(value) <= 60 else value[:57] + "..."


def _answer(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)
