"""The proxy's HTTP/1.1 client (gateway/upstream_client.py) against real peers
on loopback: a small raw-socket server per test that sends exactly the bytes
under test (chunked, no length, 100 Continue, HEAD, 204/304, a broken status
line, oversized heads...) and records what it received, and a TLS one with a
private CA.  No gevent here: the client must work on plain blocking sockets too.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.upstream_client import (
    InvalidRequest,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamTLSError,
    encode_head,
)
from tests.integration.pki import Pki, make_pki
from tests.peers import free_port

Script = Callable[["Conn"], None]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Conn:
    """One accepted connection, as the test's script sees it."""

    def __init__(self, sock: socket.socket, peer: Peer) -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = b""

    def request(self) -> bytes:
        """The next request's head and Content-Length body (b"" at the end)."""
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                return b""
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buffer) < length:
            data = self.sock.recv(65536)
            if not data:
                break
            self.buffer += data
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        raw = head + b"\r\n\r\n" + body
        with self.peer.lock:
            self.peer.requests.append(raw)
        return raw

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                break
            self.buffer += data
        got, _, self.buffer = self.buffer.partition(marker)
        return got + marker

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


class Peer:
    """A loopback server: every connection runs ``script`` in a thread of its own."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = threading.Event()  # set when a script's connection ended
        self.release = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock: socket.socket) -> None:
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            self.script(Conn(sock, self))
        except OSError:
            pass
        finally:
            sock.close()
            self.closed.set()

    def pool(self, **options: object) -> UpstreamPool:
        settings: dict[str, object] = {
            "tls": None,
            "connect_timeout": 2.0,
            "read_timeout": 2.0,
            "maxsize": 4,
        }
        settings.update(options)
        return UpstreamPool(("127.0.0.1", self.port), **settings)  # type: ignore[arg-type]

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def start(script: Script, tls: ssl.SSLContext | None = None) -> Peer:
        peer = Peer(script, tls)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.release.set()
        peer.close()


def answer_each(*answers: bytes) -> Script:
    """Answer the requests on one connection with ``answers`` in turn."""

    def script(conn: Conn) -> None:
        for answer in answers:
            if not conn.request():
                return
            conn.send(answer)
        conn.request()  # until the client closes

    return script


def keep_answering(answer: bytes) -> Script:
    def script(conn: Conn) -> None:
        while conn.request():
            conn.send(answer)

    return script


def body(resp_read1: Callable[[], bytes]) -> bytes:
    out = b""
    while data := resp_read1():
        out += data
    return out


GET = [("Host", "door.example")]


# -- answers -----------------------------------------------------------------------


def test_headers_kept_as_received_and_the_connection_reused(serve: Callable[..., Peer]) -> None:
    answer = (
        b"HTTP/1.1 200 Fine\r\nSet-Cookie: a=1\r\nX-Thing: \xe9t\xe9\r\n"
        b"set-cookie: b=2\r\nContent-Length: 5\r\n\r\nhello"
    )
    peer = serve(keep_answering(answer))
    pool = peer.pool()
    for _ in range(3):
        resp = pool.request("GET", "/a?b=1", GET)
        assert (resp.status, resp.reason, resp.version) == (200, "Fine", "1.1")
        assert resp.headers == [
            ("Set-Cookie", "a=1"),
            ("X-Thing", "\xe9t\xe9"),
            ("set-cookie", "b=2"),
            ("Content-Length", "5"),
        ]
        assert resp.getlist("SET-COOKIE") == ["a=1", "b=2"]
        assert body(resp.read1) == b"hello"
        assert resp.complete
        resp.release()
        assert pool.idle == 1
    assert peer.connections == 1  # one connection, three requests
    assert peer.requests[0] == b"GET /a?b=1 HTTP/1.1\r\nHost: door.example\r\n\r\n"
    pool.close()


def test_chunked_body_is_dechunked_and_passed_on_as_it_arrives(
    serve: Callable[..., Peer],
) -> None:
    def script(conn: Conn) -> None:
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst;\r\n")
        conn.peer.release.wait(5)
        conn.send(b"6\r\nsecond\r\n0\r\n\r\n")
        conn.request()

    peer = serve(script)
    pool = peer.pool()
    resp = pool.request("GET", "/stream", GET)
    assert resp.read1() == b"first;"  # before the rest exists: nothing is buffered whole
    peer.release.set()
    assert body(resp.read1) == b"second"
    resp.release()
    assert pool.idle == 1


def test_trailer_fields_are_dropped(serve: Callable[..., Peer]) -> None:
    peer = serve(
        keep_answering(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n"
        )
    )
    pool = peer.pool()
    with pool.request("GET", "/", GET) as resp:
        assert body(resp.read1) == b"abc"
        assert resp.headers == [("Transfer-Encoding", "chunked"), ("Trailer", "X-Sum")]
    assert pool.idle == 1


def test_read1_returns_at_most_n_bytes(serve: Callable[..., Peer]) -> None:
    peer = serve(answer_each(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"))
    resp = peer.pool().request("GET", "/", GET)
    assert [resp.read1(4), resp.read1(4), resp.read1(4), resp.read1(4)] == [
        b"0123",
        b"4567",
        b"89",
        b"",
    ]
    resp.release()


def test_body_without_length_ends_when_the_upstream_closes(serve: Callable[..., Peer]) -> None:
    def script(conn: Conn) -> None:
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")

    peer = serve(script)
    pool = peer.pool()
    resp = pool.request("GET", "/", GET)
    assert body(resp.read1) == b"all of it"
    resp.release()
    assert pool.idle == 0  # never reused


def test_a_framed_body_cut_short_is_an_error(serve: Callable[..., Peer]) -> None:
    def script(conn: Conn) -> None:
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")

    pool = serve(script).pool()
    resp = pool.request("GET", "/", GET)
    assert resp.read1() == b"only this"
    with pytest.raises(UpstreamProtocolError, match="middle of a body"):
        resp.read1()
    resp.release()
    assert pool.idle == 0


def test_interim_answers_are_skipped(serve: Callable[..., Peer]) -> None:
    peer = serve(
        keep_answering(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n" + OK
        )
    )
    pool = peer.pool()
    resp = pool.request("POST", "/", [*GET, ("Content-Length", "1")], b"x")
    assert resp.status == 200
    assert resp.headers == [("Content-Length", "2")]  # the final answer's only
    assert body(resp.read1) == b"ok"
    resp.release()
    assert pool.idle == 1


def test_head_answers_have_no_body_and_close_the_connection(serve: Callable[..., Peer]) -> None:
    peer = serve(keep_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"))
    pool = peer.pool()
    resp = pool.request("HEAD", "/", GET)
    assert resp.status == 200 and resp.getlist("Content-Length") == ["1234"]
    assert resp.read1() == b""  # at once: no wait for 1234 bytes that never come
    resp.release()
    assert pool.idle == 0  # llhttp cannot be told about HEAD: never reused
    assert peer.closed.wait(5)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: "x"\r\n\r\n',
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_204_and_304_have_no_body(serve: Callable[..., Peer], answer: bytes) -> None:
    peer = serve(keep_answering(answer))
    pool = peer.pool()
    for _ in range(2):
        resp = pool.request("GET", "/", GET)
        assert resp.read1() == b""
        resp.release()
    assert peer.connections == 1


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", False),  # junk after it
        (OK + b"HTTP/1.1 200 OK\r\nX-Unasked: 1\r\n\r\n", False),  # an answer unasked
    ],
)
def test_keep_alive_only_when_the_upstream_allows_it(
    serve: Callable[..., Peer], answer: bytes, reused: bool
) -> None:
    pool = serve(keep_answering(answer)).pool()
    resp = pool.request("GET", "/", GET)
    assert resp.status == 200 and resp.getlist("Content-Length") == ["2"]
    assert body(resp.read1) == b"ok"
    resp.release()
    assert pool.idle == (1 if reused else 0)


def test_an_answer_not_read_to_its_end_is_not_reused(serve: Callable[..., Peer]) -> None:
    pool = serve(keep_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n")).pool()
    resp = pool.request("GET", "/", GET)
    resp.release()
    assert pool.idle == 0


def test_drain_reads_a_short_rest_and_closes_a_long_one(serve: Callable[..., Peer]) -> None:
    peer = serve(keep_answering(b"HTTP/1.1 401 No\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000))
    pool = peer.pool()
    resp = pool.request("GET", "/", GET)
    resp.drain()
    resp.release()
    assert pool.idle == 1
    resp = pool.request("GET", "/", GET)
    resp.drain(limit=1000)
    resp.release()
    assert pool.idle == 0


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTX/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"<html>not http</html>",
    ],
)
def test_malformed_answers_are_protocol_errors(serve: Callable[..., Peer], answer: bytes) -> None:
    pool = serve(answer_each(answer)).pool()
    with pytest.raises(UpstreamProtocolError):
        pool.request("GET", "/", GET)
    assert pool.idle == 0


def test_more_than_100_header_fields_are_refused(serve: Callable[..., Peer]) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    pool = serve(answer_each(b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n")).pool()
    with pytest.raises(UpstreamProtocolError, match="100 header fields"):
        pool.request("GET", "/", GET)
    hundred = b"".join(b"X-H%d: v\r\n" % i for i in range(99))
    pool = serve(
        answer_each(b"HTTP/1.1 200 OK\r\n" + hundred + b"Content-Length: 0\r\n\r\n")
    ).pool()
    with pool.request("GET", "/", GET) as resp:
        assert len(resp.headers) == 100


@pytest.mark.parametrize("split", [False, True])
def test_a_head_over_64_kib_is_refused(serve: Callable[..., Peer], split: bool) -> None:
    big = b"X-Big: " + b"a" * (70 * 1024) + b"\r\n"
    if split:  # still arriving: refused without waiting for its end
        answer = b"HTTP/1.1 200 OK\r\n" + big
    else:
        answer = b"HTTP/1.1 200 OK\r\n" + big + b"Content-Length: 0\r\n\r\n"

    def script(conn: Conn) -> None:
        conn.request()
        conn.send(answer)
        conn.peer.release.wait(5)

    pool = serve(script).pool()
    with pytest.raises(UpstreamProtocolError, match="64 KiB"):
        pool.request("GET", "/", GET)


# -- requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/", [("X-A", "1\r\nX-Auth-Request-User: admin")]),
        ("GET", "/", [("X-A", "1\nX-Auth-Request-User: admin")]),
        ("GET", "/", [("X-A", "1\rX")]),
        ("GET", "/", [("X-A", "1\x00")]),
        ("GET", "/", [("X-A\r\nX-B", "1")]),
        ("GET", "/", [("X-A: 1\r\nX-B", "1")]),
        ("GET", "/", [("X A", "1")]),
        ("GET", "/", [("X-A:", "1")]),
        ("GET", "/", [("", "1")]),
        ("GET", "/", [("X-A", "\u0141ukasz")]),
        ("GET", "/a b", GET),
        ("GET", "/a\r\nX-B: 1", GET),
        ("GET", "", GET),
        ("GE T", "/", GET),
        ("GET\r\n", "/", GET),
    ],
)
def test_header_injection_is_refused(
    serve: Callable[..., Peer], method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    peer = serve(keep_answering(OK))
    with pytest.raises(InvalidRequest):
        peer.pool().request(method, target, headers)
    assert peer.connections == 0  # refused before anything was sent


def test_head_encoding_is_exact() -> None:
    assert (
        encode_head("PUT", "/x?y=%20", [("Host", "a"), ("X-Name", "J\xfcrgen")])
        == b"PUT /x?y=%20 HTTP/1.1\r\nHost: a\r\nX-Name: J\xfcrgen\r\n\r\n"
    )
    assert issubclass(InvalidRequest, ValueError)


def test_bodies_are_sent_as_given(serve: Callable[..., Peer]) -> None:
    def script(conn: Conn) -> None:
        conn.request()  # bytes
        conn.send(OK)
        conn.request()  # an iterable with a Content-Length
        conn.send(OK)
        with conn.peer.lock:
            conn.peer.requests.append(conn.read_until(b"0\r\n\r\n"))  # chunked
        conn.send(OK)
        conn.request()

    peer = serve(script)
    pool = peer.pool()
    big = b"B" * 100_000  # over the size that goes out with the head
    cases: list[tuple[str, list[tuple[str, str]], bytes | Iterator[bytes], bool]] = [
        ("/b", [("Content-Length", "5")], b"small", False),
        ("/i", [("Content-Length", str(len(big) + 3))], iter([big, b"", b"end"]), False),
        ("/c", [], iter([b"one", b"", b"three"]), True),
    ]
    for target, headers, payload, chunked in cases:
        with pool.request("POST", target, headers, payload, chunked=chunked) as resp:
            assert body(resp.read1) == b"ok"
    assert peer.connections == 1
    assert peer.requests == [
        b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nsmall",
        b"POST /i HTTP/1.1\r\nContent-Length: 100003\r\n\r\n" + big + b"end",
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\none\r\n5\r\nthree\r\n0\r\n\r\n",
    ]


def test_an_early_answer_while_the_body_is_still_being_sent(serve: Callable[..., Peer]) -> None:
    """The upstream refuses a large upload at once and closes (as a device does
    for a 413); the answer is what the caller gets, not a broken pipe."""

    def script(conn: Conn) -> None:
        conn.read_until(b"\r\n\r\n")
        conn.send(b"HTTP/1.1 413 Too Large\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbig")
        time.sleep(0.2)

    pool = serve(script).pool()
    pieces = iter([b"x" * (1 << 20)] * 64)
    resp = pool.request("PUT", "/fw", [("Content-Length", str(64 << 20))], pieces)
    assert resp.status == 413
    assert body(resp.read1) == b"big"
    resp.release()
    assert pool.idle == 0


def test_the_clients_body_errors_pass_unchanged(serve: Callable[..., Peer]) -> None:
    def short() -> Iterator[bytes]:
        yield b"abc"
        raise OSError("the client sent less than its Content-Length")

    pool = serve(keep_answering(OK)).pool()
    with pytest.raises(OSError, match="the client sent less") as info:
        pool.request("POST", "/", [("Content-Length", "10")], short())
    assert type(info.value) is OSError
    assert pool.idle == 0


# -- keep-alive reuse ----------------------------------------------------------------


def test_an_idle_connection_closed_by_the_upstream_is_not_used(serve: Callable[..., Peer]) -> None:
    checked_in = threading.Event()

    def script(conn: Conn) -> None:
        conn.request()
        conn.send(OK)  # keep-alive... and then closed while idle
        checked_in.wait(5)

    peer = serve(script)
    pool = peer.pool()
    with pool.request("GET", "/", GET) as resp:
        assert body(resp.read1) == b"ok"
    assert pool.idle == 1
    checked_in.set()
    assert peer.closed.wait(5)
    time.sleep(0.05)
    # a streamed body, which could not be sent again: the check at checkout found it
    with pool.request("PUT", "/", [("Content-Length", "2")], iter([b"up"])) as resp:
        assert body(resp.read1) == b"ok"
    assert peer.connections == 2


def test_bytes_a_device_sends_after_its_answer_never_answer_the_next_request(
    serve: Callable[..., Peer],
) -> None:
    """Security review: an idle connection used again within a second was not
    looked at, so a device's unasked second answer (a late 204 body, a 408, the
    answer to a request smuggled in a GET body) went to the next person."""
    extra_sent = threading.Event()

    def script(conn: Conn) -> None:
        if conn.peer.connections == 1:
            conn.request()
            conn.send(OK)
            time.sleep(0.05)  # a separate segment, after the answer was read
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!")
            extra_sent.set()
            conn.request()  # whatever comes next on this connection
            return
        while conn.request():
            conn.send(OK)

    peer = serve(script)
    pool = peer.pool()
    with pool.request("GET", "/first", GET) as resp:
        assert body(resp.read1) == b"ok"
    assert extra_sent.wait(5)
    time.sleep(0.05)
    with pool.request("GET", "/second", GET) as resp:  # at once, and retryable
        assert body(resp.read1) == b"ok"
    assert peer.connections == 2


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "OPTIONS"])
def test_a_body_where_the_device_may_not_expect_one_ends_the_connection(
    serve: Callable[..., Peer], method: str
) -> None:
    """A device that ignores a GET's body reads it as the next request: the
    connection that carried one says Connection: close and is never pooled."""
    peer = serve(keep_answering(OK))
    pool = peer.pool()
    headers = [*GET, ("Content-Length", "4")]
    with pool.request(method, "/", headers, b"GET ") as resp:
        if method != "HEAD":
            assert body(resp.read1) == b"ok"
    assert pool.idle == 0
    assert b"\r\nConnection: close\r\n" in peer.requests[0]
    with pool.request("POST", "/", [*GET, ("Content-Length", "4")], b"data") as resp:
        assert body(resp.read1) == b"ok"
    assert pool.idle == 1  # a POST's body is expected: its connection is kept
    assert b"Connection: close" not in peer.requests[1]


def _drops_the_second_request(conn: Conn) -> None:
    """The first connection answers once, then takes the next request and
    closes without a word (the upstream's idle timeout racing the request);
    later connections answer everything."""
    with conn.peer.lock:
        first = conn.peer.connections == 1
    if first:
        conn.request()
        conn.send(OK)
        conn.request()
        return
    while conn.request():
        conn.send(OK)


def test_a_reused_connection_failing_before_the_answer_is_retried_once(
    serve: Callable[..., Peer],
) -> None:
    peer = serve(_drops_the_second_request)
    pool = peer.pool()
    with pool.request("GET", "/", GET) as resp:
        body(resp.read1)
    with pool.request("PUT", "/config", [("Content-Length", "5")], b"pulse") as resp:
        assert resp.status == 200 and body(resp.read1) == b"ok"
    assert peer.connections == 2
    assert [r.split(b" ", 2)[:2] for r in peer.requests] == [
        [b"GET", b"/"],
        [b"PUT", b"/config"],
        [b"PUT", b"/config"],  # sent again, on the new connection
    ]


def test_a_post_is_never_sent_twice(serve: Callable[..., Peer]) -> None:
    """A POST may have opened a door before the connection broke: the caller
    gets the error (502), the device never gets the request a second time."""
    peer = serve(_drops_the_second_request)
    pool = peer.pool()
    with pool.request("GET", "/", GET) as resp:
        body(resp.read1)
    with pytest.raises(UpstreamProtocolError, match="without answering"):
        pool.request("POST", "/open", [("Content-Length", "5")], b"pulse")
    assert peer.connections == 1
    assert [r.split(b" ", 2)[:2] for r in peer.requests] == [[b"GET", b"/"], [b"POST", b"/open"]]


def test_a_streamed_body_is_never_sent_twice(serve: Callable[..., Peer]) -> None:
    peer = serve(_drops_the_second_request)
    pool = peer.pool()
    with pool.request("GET", "/", GET) as resp:
        body(resp.read1)
    with pytest.raises(UpstreamProtocolError, match="without answering"):
        pool.request("PUT", "/fw", [("Content-Length", "5")], iter([b"pulse"]))
    assert peer.connections == 1


def test_never_retried_once_answer_bytes_arrived(serve: Callable[..., Peer]) -> None:
    def script(conn: Conn) -> None:
        conn.request()
        conn.send(OK)
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-")  # and gone

    peer = serve(script)
    pool = peer.pool()
    with pool.request("GET", "/", GET) as resp:
        body(resp.read1)
    with pytest.raises(UpstreamProtocolError, match="in the middle of its answer"):
        pool.request("GET", "/", GET)
    assert peer.connections == 1


def test_idle_connections_are_bounded_by_maxsize(serve: Callable[..., Peer]) -> None:
    peer = serve(keep_answering(OK))
    pool = peer.pool(maxsize=1)
    first = pool.request("GET", "/", GET)
    second = pool.request("GET", "/", GET)  # never waits for the first
    for resp in (first, second):
        body(resp.read1)
        resp.release()
    assert pool.idle == 1
    assert peer.connections == 2


# -- failures --------------------------------------------------------------------------


def test_silence_is_a_timeout(serve: Callable[..., Peer]) -> None:
    def script(conn: Conn) -> None:
        conn.request()
        conn.peer.release.wait(5)

    pool = serve(script).pool(read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        pool.request("GET", "/", GET)
    assert isinstance(info.value, TimeoutError) and info.value.kind == "timeout"
    assert time.monotonic() - started < 2


def test_silence_in_the_middle_of_a_body_is_a_timeout(serve: Callable[..., Peer]) -> None:
    def script(conn: Conn) -> None:
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        conn.peer.release.wait(5)

    resp = serve(script).pool(read_timeout=0.3).request("GET", "/", GET)
    assert resp.read1() == b"abc"
    with pytest.raises(UpstreamTimeout):
        resp.read1()
    resp.release()


def test_a_refused_port_is_a_connect_error() -> None:
    pool = UpstreamPool(
        ("127.0.0.1", free_port()), tls=None, connect_timeout=2, read_timeout=2, maxsize=1
    )
    with pytest.raises(UpstreamConnectError) as info:
        pool.request("GET", "/", GET)
    assert info.value.kind == "connect" and isinstance(info.value, OSError)


def test_shutdown_from_another_thread_cuts_a_blocked_read(serve: Callable[..., Peer]) -> None:
    def script(conn: Conn) -> None:
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n")
        conn.peer.release.wait(5)

    pool = serve(script).pool(read_timeout=5)
    resp = pool.request("GET", "/events", GET)
    assert resp.read1() == b"data: 1\n\n"
    threading.Timer(0.2, resp.shutdown).start()
    started = time.monotonic()
    with pytest.raises(UpstreamProtocolError):  # cut: never a clean end
        resp.read1()
    assert time.monotonic() - started < 2
    resp.release()
    assert pool.idle == 0


# -- switching protocols ---------------------------------------------------------------


def test_101_hands_over_the_socket_and_the_bytes_already_read(serve: Callable[..., Peer]) -> None:
    def script(conn: Conn) -> None:
        conn.request()
        conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\n\x81\x05hello"
        )
        conn.send(conn.sock.recv(100))  # echo

    pool = serve(script).pool()
    resp = pool.upgrade("/ws", [*GET, ("Connection", "Upgrade"), ("Upgrade", "websocket")])
    assert resp.status == 101 and resp.getlist("upgrade") == ["websocket"]
    sock, early = resp.detach()
    with sock:
        assert early == b"\x81\x05hello"
        sock.sendall(b"ping")
        assert sock.recv(100) == b"ping"


def test_a_refused_upgrade_is_an_ordinary_answer(serve: Callable[..., Peer]) -> None:
    pool = serve(answer_each(b"HTTP/1.1 403 No\r\nContent-Length: 2\r\n\r\nno")).pool()
    resp = pool.upgrade("/ws", [*GET, ("Connection", "Upgrade"), ("Upgrade", "websocket")])
    assert resp.status == 403 and body(resp.read1) == b"no"
    with pytest.raises(ValueError):
        resp.detach()
    resp.release()
    assert pool.idle == 0  # a connection of its own: never pooled


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
)
def test_101_to_a_plain_request_is_a_protocol_error(
    serve: Callable[..., Peer], answer: bytes
) -> None:
    with pytest.raises(UpstreamProtocolError, match="101"):
        serve(answer_each(answer)).pool().request("GET", "/", GET)


def test_101_without_upgrade_header_is_refused_for_an_upgrade(serve: Callable[..., Peer]) -> None:
    pool = serve(answer_each(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")).pool()
    with pytest.raises(UpstreamProtocolError, match="Upgrade"):
        pool.upgrade("/ws", GET)


# -- TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _server_tls(pki: Pki) -> ssl.SSLContext:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki.server_cert, pki.server_key)
    return tls


def _client_tls(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def test_tls_keep_alive_and_an_idle_connection_closed_by_the_upstream(
    serve: Callable[..., Peer], pki: Pki
) -> None:
    def script(conn: Conn) -> None:
        for _ in range(2):
            conn.request()
            conn.send(OK)
        # then closed while idle (with TLS close_notify)

    peer = serve(script, _server_tls(pki))
    pool = peer.pool(tls=_client_tls(pki.ca))
    assert pool.scheme == "https"
    for _ in range(2):
        with pool.request("GET", "/", GET) as resp:
            assert body(resp.read1) == b"ok"
    assert peer.connections == 1
    assert peer.closed.wait(5)
    time.sleep(0.05)
    # a streamed body, which could not be sent again: the check at checkout found it
    with pool.request("PUT", "/", [("Content-Length", "2")], iter([b"up"])) as resp:
        assert body(resp.read1) == b"ok"
    assert peer.connections == 2


def test_an_unknown_ca_is_a_tls_error(serve: Callable[..., Peer], pki: Pki) -> None:
    peer = serve(keep_answering(OK), _server_tls(pki))
    pool = peer.pool(tls=_client_tls(pki.other_ca))
    with pytest.raises(UpstreamTLSError, match="CERTIFICATE_VERIFY_FAILED") as info:
        pool.request("GET", "/", GET)
    assert info.value.kind == "tls"


def test_the_host_name_is_checked(serve: Callable[..., Peer], pki: Pki) -> None:
    peer = serve(keep_answering(OK), _server_tls(pki))
    pool = peer.pool(tls=_client_tls(pki.ca), server_hostname="door.example")
    with pytest.raises(UpstreamTLSError):
        pool.request("GET", "/", GET)


# -- legacy devices (proxy.upstreams[].legacy_http) ---------------------------------

LEGACY_ANSWERS = {
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 2\nX-Door: 1\n\nok",
    "folded value": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Door: 1\r\n  2\r\n\r\nok",
    "space before the colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\nX-Door: 1\r\n\r\nok",
}


@pytest.mark.parametrize("answer", LEGACY_ANSWERS.values(), ids=LEGACY_ANSWERS.keys())
def test_old_firmware_answers_are_refused_unless_the_upstream_is_legacy(
    serve: Callable[..., Peer], answer: bytes
) -> None:
    strict = serve(keep_answering(answer)).pool()
    with pytest.raises(UpstreamProtocolError):
        strict.request("GET", "/", GET)
    peer = serve(keep_answering(answer))
    pool = peer.pool(legacy=True)
    for _ in range(2):
        resp = pool.request("GET", "/", GET)
        assert resp.status == 200
        assert resp.getlist("Content-Length") == ["2"]  # trimmed: "Content-Length " is not passed
        assert resp.getlist("X-Door")[0].startswith("1")
        assert body(resp.read1) == b"ok"
        resp.release()
    # never kept alive: a lenient read must not be able to shift answers between requests
    assert peer.connections == 2
    assert pool.idle == 0
    assert all(b"\r\nConnection: close\r\n" in raw for raw in peer.requests)


def test_a_legacy_answer_without_length_ends_with_the_connection(
    serve: Callable[..., Peer],
) -> None:
    def script(conn: Conn) -> None:
        conn.request()
        conn.send(b"HTTP/1.0 200 OK\nServer: door-panel\n\nfirmware page")

    resp = serve(script).pool(legacy=True).request("GET", "/", GET)
    assert resp.headers == [("Server", "door-panel")]
    assert body(resp.read1) == b"firmware page"


@pytest.mark.parametrize(
    "field",
    [
        b"X-Bad: a\x00b",  # NUL in a value
        b"X-Bad: a\x1bb",  # another control character
        b"X-Bad: a\x7fb",
    ],
)
def test_legacy_fields_that_cannot_be_passed_on_safely_are_dropped(
    serve: Callable[..., Peer], field: bytes
) -> None:
    answer = b"HTTP/1.1 200 OK\nContent-Length: 2\n" + field + b"\nX-Good: yes\n\nok"
    resp = serve(keep_answering(answer)).pool(legacy=True).request("GET", "/", GET)
    assert [name for name, _ in resp.headers] == ["Content-Length", "X-Good"]
    assert body(resp.read1) == b"ok"


@pytest.mark.parametrize(
    "answer",
    [
        # leniency covers head lines only: framing stays strict
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\n0\n\n",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\rb\r\nContent-Length: 2\r\n\r\nok",  # bare CR
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\nX Bad: a\nContent-Length: 2\n\nok",  # a name that is no token
        b"HTTP/1.1 200 OK\nX-Bad\x7f: a\nContent-Length: 2\n\nok",
    ],
    ids=[
        "two lengths",
        "length and chunked",
        "bare-LF chunks",
        "bare CR",
        "no status",
        "space in a name",
        "DEL in a name",
    ],
)
def test_legacy_reading_keeps_framing_and_names_strict(
    serve: Callable[..., Peer], answer: bytes
) -> None:
    pool = serve(keep_answering(answer)).pool(legacy=True)
    with pytest.raises(UpstreamProtocolError):
        resp = pool.request("GET", "/", GET)
        body(resp.read1)


@pytest.mark.parametrize("limit", [1024, 0])
def test_the_idle_check_sees_data_and_an_end_of_stream(
    monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """select below 1,024 descriptors, poll from there on (limit 0 takes poll
    for every descriptor): both tell a quiet connection from one with bytes
    waiting or closed by the other end."""
    from gateway import upstream_client

    monkeypatch.setattr(upstream_client, "_SELECT_LIMIT", limit)
    pool = UpstreamPool(("127.0.0.1", 9), tls=None, connect_timeout=1, read_timeout=1, maxsize=1)
    a, b = socket.socketpair()
    with a, b:
        assert pool._usable(a)
        b.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        time.sleep(0.05)
        assert not pool._usable(a)
        a.recv(1024)
        assert pool._usable(a)
        b.close()
        time.sleep(0.05)
        assert not pool._usable(a)
