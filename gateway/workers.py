"""gunicorn worker classes.

:class:`FairGeventWorker` is gunicorn's gevent worker (process management,
signals, graceful shutdown, heartbeat) with its own connection handling:
requests are parsed by llhttp and served by :mod:`gateway.http_server`, which
costs a fraction of gunicorn's Python parser on the reverse-proxy path.  (With
TLS configured in gunicorn itself, gunicorn's handler serves instead.)

A keep-alive request that has already arrived when the previous answer has
gone waits its turn behind the other connections (under gunicorn's own handler:
every request yields).  The stock worker serves such a request at once, so with
nginx's pooled keep-alive connections a few connections can monopolise a worker
while the others wait: measured here with wrk (20 connections, 2 workers), p99
fell from ~590 ms to ~30 ms for a bare Flask view, at a few per cent of
throughput.

Between two turns of one connection the worker polls for I/O (:func:`_yield`).
``gevent.sleep(0)`` does not guarantee that: it queues the greenlet as a
callback, and gevent runs queued callbacks for up to its switch interval (5 ms,
looked at every 50 callbacks) before it polls again.  Under load, when every
connection's next request is already there, the workers went round the callback
queue for 10-15 ms at a time while upstream answers and new requests waited
unpolled: the p99 of the proxy benchmark.  A zero-delay timer fires only after
the next poll; with it the p99 fell from 13.6 to 9.8, 15.7 to 8.5 and 14.8 to
9.7 ms in three A/B series (alternating rounds on one build) at 0-9 % less
throughput; on the cheapest request, ``/.sso/auth``, p99 halved and throughput
fell by about a sixth (bench/README.md).

A keep-alive request that was not there yet is waited for through the event
loop, never with a plain ``recv``: a client as fast as wrk (or a busy nginx)
sends its next request within microseconds of the answer, so a ``recv`` a moment
after the "not there yet" look often found it and served it at once, ahead of
every other ready connection - one loop turn of a worker then served up to 48
requests from 10 connections.  Waiting through the loop halved the proxy
benchmark's p99 (20.0 -> 10.1 ms, 5 alternating rounds) at 5 % more throughput.

It also closes connections the app has taken over (WebSockets relayed by the
reverse proxy, :data:`gateway.views.proxy.TAKEN_OVER`), and hands the app's
access log (``access_log.enabled``) to its server side, which writes a line
for every request, refused ones included.
"""

from __future__ import annotations

import socket
from typing import Any

import gevent
import gevent.socket
from gunicorn.workers.ggevent import GeventWorker

from gateway.access_log import AccessLog
from gateway.http_server import ConnectionServer


class FairGeventWorker(GeventWorker):  # type: ignore[misc]
    _servers: dict[Any, ConnectionServer]

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        if self.cfg.is_ssl:
            super().handle(listener, client, addr)
            return
        client.setblocking(True)
        self._server_for(listener).serve(client, addr)

    def _server_for(self, listener: Any) -> ConnectionServer:
        servers: dict[Any, ConnectionServer] = self.__dict__.setdefault("_servers", {})
        server = servers.get(listener)
        if server is None:
            name = listener.getsockname()
            if isinstance(name, tuple):
                host, port = str(name[0]), str(name[1])
            else:
                host, port = "localhost", "80"
            server = ConnectionServer(
                self.wsgi,
                server_name=host,
                server_port=port,
                keepalive=float(self.cfg.keepalive or 2),
                alive=self._is_alive,
                counted=self._count_request,
                pause=_yield,
                waits=(gevent.socket.wait_read, gevent.socket.wait_write),
                access_log=self._access_log(),
            )
            servers[listener] = server
        return server

    def _access_log(self) -> AccessLog | None:
        """The access log ``create_app`` built for this app, if any."""
        services = (getattr(self.wsgi, "extensions", None) or {}).get("gateway")
        access_log: AccessLog | None = getattr(services, "access_log", None)
        return access_log

    def _is_alive(self) -> bool:
        alive: Any = getattr(self, "alive", False)
        return bool(alive)

    def _count_request(self) -> None:
        self.nr += 1
        if self.nr >= self.max_requests and self._is_alive():
            self.log.info("Autorestarting worker after current request.")
            self.alive = False

    def is_already_handled(self, respiter: Any) -> bool:
        """A connection the app took over (a relayed WebSocket) is closed here,
        without a response written on it: the hook gunicorn leaves for this."""
        from gateway.views.proxy import TAKEN_OVER

        if respiter is TAKEN_OVER:
            raise StopIteration()
        return bool(super().is_already_handled(respiter))

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            _yield()


def _yield() -> None:
    """Give the other connections their turn: resume only after the event loop
    has polled for I/O once more (a zero-delay timer fires after the next poll;
    ``gevent.sleep(0)`` may resume before any poll, see the module's text)."""
    hub = gevent.get_hub()
    with hub.loop.timer(0.0) as turn:
        hub.wait(turn)
