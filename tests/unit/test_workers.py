"""The fairness yield of gateway.workers.FairGeventWorker, on a real gevent hub
and real sockets: between two turns of one connection the loop polls for I/O,
so a connection whose data has arrived is never left waiting behind a busy one
that keeps yielding (gevent.sleep(0) does leave it waiting: shown too)."""

from __future__ import annotations

from collections.abc import Callable

import gevent
import gevent.socket

from gateway.workers import _yield


def _turn_the_ready_socket_was_served(pause: Callable[[], None], turns: int = 200) -> int | None:
    """A busy greenlet makes another one's socket readable, then yields ``turns``
    times; the turn at which the other one was served (None: never)."""
    a, b = gevent.socket.socketpair()
    state: dict[str, int | None] = {"turn": 0, "served": None}

    def waiting() -> None:
        b.recv(1)
        state["served"] = state["turn"]

    def busy() -> None:
        a.send(b"x")
        for turn in range(turns):
            state["turn"] = turn
            pause()

    try:
        reader = gevent.spawn(waiting)
        gevent.sleep(0.01)  # the reader now waits on its socket
        gevent.joinall([reader, gevent.spawn(busy)], timeout=10)
    finally:
        a.close()
        b.close()
    return state["served"]


def test_a_yield_lets_the_loop_poll_before_the_same_connection_goes_on() -> None:
    served = _turn_the_ready_socket_was_served(_yield)
    assert served is not None and served <= 1


def test_sleep_zero_does_not_guarantee_that() -> None:
    # the reason for _yield: queued callbacks run on (up to 5 ms, looked at every
    # 50 callbacks) without a poll, so the busy greenlet takes many turns first
    served = _turn_the_ready_socket_was_served(lambda: gevent.sleep(0))
    assert served is not None and served > 1


def _served_on_the_hub(keepalive: float) -> tuple[gevent.socket.socket, gevent.Greenlet]:
    """gateway.http_server with the gevent worker's waits, serving one connection."""
    from gateway.http_server import ConnectionServer

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = ConnectionServer(
        app,
        server_name="127.0.0.1",
        server_port="80",
        keepalive=keepalive,
        alive=lambda: True,
        counted=lambda: None,
        pause=_yield,
        waits=(gevent.socket.wait_read, gevent.socket.wait_write),
    )
    client, served = gevent.socket.socketpair()
    return client, gevent.spawn(server.serve, served, ("127.0.0.1", 50000))


def test_the_next_request_waited_for_through_the_loop_is_served_and_idle_ends_quietly() -> None:
    client, serving = _served_on_the_hub(keepalive=0.3)
    try:
        for _ in range(2):
            client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            answer = b""
            while not answer.endswith(b"ok"):
                answer += client.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200 ")
            gevent.sleep(0.1)  # the server now waits for the next request
        with gevent.Timeout(5):
            assert client.recv(4096) == b""  # idle past keep-alive: closed, no answer
        serving.join(timeout=5)
        assert serving.dead and serving.exception is None
    finally:
        client.close()
