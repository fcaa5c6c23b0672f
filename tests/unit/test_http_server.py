"""gateway.http_server against a real TCP client on loopback: the bytes a client
sends, the bytes it gets back.  Hostile requests (smuggling shapes, oversized
heads, slow heads, spoofed header spellings) are refused and close the
connection; good ones are served on keep-alive connections."""

from __future__ import annotations

import gc
import io
import json
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.wrappers import Request

from gateway.access_log import WRITTEN_BY_SERVER, AccessLog, AccessLogMiddleware, note
from gateway.core.model import Identity
from gateway.http_server import BodyEndedEarly, ConnectionServer, Limits

App = Callable[[dict[str, Any], Any], Any]


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The environ facts a test looks at, and the body it read, as JSON."""
    body = environ["wsgi.input"].read()
    facts = {
        k: v
        for k, v in environ.items()
        if isinstance(v, str) and (k.isupper() or k.startswith("HTTP_"))
    }
    facts["body"] = body.decode("latin-1")
    data = json.dumps(facts).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


class Server:
    def __init__(
        self,
        app: App,
        keepalive: float = 2.0,
        limits: Limits | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.alive = True
        self.served = 0
        self.server = ConnectionServer(
            app,
            server_name="127.0.0.1",
            server_port=str(self.port),
            keepalive=keepalive,
            alive=lambda: self.alive,
            counted=self._count,
            limits=limits,
            access_log=access_log,
        )
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _count(self) -> None:
        self.served += 1

    def _accept(self) -> None:
        while True:
            try:
                conn, addr = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.server.serve, args=(conn, addr), daemon=True).start()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return sock

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server(echo)
    yield s
    s.close()


def read_response(
    sock: socket.socket, buf: bytearray | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One response read with a deliberately simple client (Content-Length or
    chunked); ``buf`` keeps what was read past it."""
    buf = buf if buf is not None else bytearray()
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise EOFError(bytes(buf))
        buf += data
    head, _, _rest = bytes(buf).partition(b"\r\n\r\n")
    del buf[: len(head) + 4]
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < n:
            data = sock.recv(65536)
            if not data:
                raise EOFError
            buf += data
        body = bytes(buf[:n])
        del buf[:n]
        return status, headers, body
    if headers.get("transfer-encoding") == "chunked":
        out = b""

        def more() -> None:
            data = sock.recv(65536)
            if not data:
                raise EOFError(bytes(buf))
            buf.extend(data)

        while True:
            while b"\r\n" not in buf:
                more()
            size_line, _, _ = bytes(buf).partition(b"\r\n")
            del buf[: len(size_line) + 2]
            size = int(size_line, 16)
            while len(buf) < size + 2:
                more()
            out += bytes(buf[:size])
            del buf[: size + 2]
            if size == 0:
                return status, headers, out
    body = bytes(buf)
    while data := sock.recv(65536):
        body += data
    return status, headers, body


def closed(sock: socket.socket) -> bool:
    sock.settimeout(3)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def exchange(server: Server, raw: bytes) -> tuple[int, dict[str, str], bytes, socket.socket]:
    sock = server.connect()
    sock.sendall(raw)
    status, headers, body = read_response(sock)
    return status, headers, body, sock


# -- good requests -----------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(server: Server) -> None:
    sock = server.connect()
    for path in ("/a", "/b?x=1"):
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gw.example\r\n\r\n".encode())
        status, headers, body = read_response(sock)
        assert status == 200
        assert "connection" not in headers
        facts = json.loads(body)
        assert facts["RAW_URI"] == path
        assert facts["HTTP_HOST"] == "gw.example"
        assert facts["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert facts["REMOTE_ADDR"] == "127.0.0.1"
    assert server.served == 2


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    sock = server.connect()
    sock.sendall(
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    buf = bytearray()
    answers = [json.loads(read_response(sock, buf)[2]) for _ in range(3)]
    assert [a["PATH_INFO"] for a in answers] == ["/one", "/two", "/three"]
    assert answers[1]["body"] == "abc"
    assert closed(sock)


def test_path_is_percent_decoded_raw_uri_is_not(server: Server) -> None:
    status, _, body, _ = exchange(server, b"GET /%61dmin/x%2Fy?q=%20 HTTP/1.1\r\nHost: a\r\n\r\n")
    facts = json.loads(body)
    assert status == 200
    assert facts["PATH_INFO"] == "/admin/x/y"
    assert facts["RAW_URI"] == "/%61dmin/x%2Fy?q=%20"
    assert facts["QUERY_STRING"] == "q=%20"


def test_absolute_form_target_gives_its_path(server: Server) -> None:
    _, _, body, _ = exchange(server, b"GET http://other.example/x?y HTTP/1.1\r\nHost: a\r\n\r\n")
    facts = json.loads(body)
    assert facts["PATH_INFO"] == "/x"
    assert facts["QUERY_STRING"] == "y"
    assert facts["RAW_URI"] == "http://other.example/x?y"
    assert facts["HTTP_HOST"] == "a"


def test_chunked_request_body_reaches_the_app_dechunked(server: Server) -> None:
    raw = (
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
    )
    _, _, body, _ = exchange(server, raw)
    assert json.loads(body)["body"] == "abcde"


def test_trailer_fields_never_become_request_headers(server: Server) -> None:
    """Security review: llhttp hands trailers to the same callback as headers,
    and a request that arrived in one piece had them joined to its head - a
    client's trailer X-Forwarded-For after a front proxy's own header made the
    gateway believe the client's address of choice."""
    raw = (
        b"POST /up HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.7\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\nX-Forwarded-For: 10.20.30.5\r\nX-Trailer-Test: yes\r\n"
        b"Cookie: sso_gw=stolen\r\nHost: evil\r\n\r\n"
    )
    status, _, body, sock = exchange(server, raw)
    facts = json.loads(body)
    assert status == 200 and facts["body"] == "hi"
    assert facts["HTTP_X_FORWARDED_FOR"] == "192.0.2.7"  # the head's, alone
    assert facts["HTTP_HOST"] == "a"
    assert "HTTP_X_TRAILER_TEST" not in facts and "HTTP_COOKIE" not in facts
    sock.sendall(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")  # the connection carries on
    assert json.loads(read_response(sock)[2])["PATH_INFO"] == "/next"


def test_trailer_fields_count_against_the_field_limit() -> None:
    s = Server(echo, limits=Limits(fields=8))
    try:
        trailers = b"".join(b"X-T%d: v\r\n" % i for i in range(8))
        raw = (
            b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\n" + trailers + b"\r\n"
        )
        status, _, _, sock = exchange(s, raw)
        assert status == 431
        assert closed(sock)
    finally:
        s.close()


@pytest.mark.parametrize(
    "tail",
    [
        b"10\r\n wor",  # announces 16 bytes, sends 4, then the client is gone
        b"5\r\nworld\r\n",  # a whole chunk, but never the last one
        b"zz\r\nworld\r\n0\r\n\r\n",  # a malformed chunk after the body began
    ],
)
def test_a_chunked_body_cut_short_is_an_error_never_a_short_body(tail: bytes) -> None:
    """Security review: a chunked upload whose client stopped half way read as a
    complete (shorter) body, so the proxy sent the upstream a whole request."""
    seen: list[object] = []

    def reader(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            seen.append(environ["wsgi.input"].read())
        except OSError as exc:
            seen.append(exc)
            raise
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    s = Server(reader)
    try:
        sock = s.connect()
        sock.sendall(
            b"POST /firmware HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n"
        )
        time.sleep(0.2)  # the app has begun to read what came
        sock.sendall(tail)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(seen) == 1
        assert isinstance(seen[0], BodyEndedEarly)
        reply = sock.recv(65536)
        assert not reply.startswith(b"HTTP/1.1 200")
        sock.close()
    finally:
        s.close()


def test_repeated_headers_are_joined_content_headers_have_no_prefix(server: Server) -> None:
    raw = (
        b"POST / HTTP/1.1\r\nHost: a\r\nAccept: a/b\r\nAccept: c/d\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    )
    facts = json.loads(exchange(server, raw)[2])
    assert facts["HTTP_ACCEPT"] == "a/b,c/d"
    assert facts["CONTENT_TYPE"] == "text/plain"
    assert facts["CONTENT_LENGTH"] == "2"
    assert "HTTP_CONTENT_TYPE" not in facts


def test_header_names_with_underscores_are_dropped(server: Server) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX_Auth_User: mallory\r\nX-Auth-Tier: real\r\n\r\n"
    facts = json.loads(exchange(server, raw)[2])
    assert "HTTP_X_AUTH_USER" not in facts
    assert facts["HTTP_X_AUTH_TIER"] == "real"


def test_http_1_0_closes_unless_keep_alive_is_asked(server: Server) -> None:
    status, headers, _, sock = exchange(server, b"GET / HTTP/1.0\r\n\r\n")
    assert status == 200 and headers["connection"] == "close"
    assert closed(sock)
    status, headers, _, sock = exchange(server, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert headers["connection"] == "keep-alive"
    sock.sendall(b"GET /again HTTP/1.0\r\n\r\n")
    assert json.loads(read_response(sock)[2])["PATH_INFO"] == "/again"


def test_expect_100_continue_is_answered_before_the_body_is_read(server: Server) -> None:
    sock = server.connect()
    sock.sendall(b"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    interim = sock.recv(100)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"data")
    assert json.loads(read_response(sock)[2])["body"] == "data"


def test_unknown_expectation_is_refused(server: Server) -> None:
    status, headers, _, _sock = exchange(
        server, b"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: magic\r\n\r\n"
    )
    assert status == 417 and headers["connection"] == "close"


def test_streamed_answer_without_length_is_chunked() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first "
        yield b""
        yield b"second"

    s = Server(app)
    try:
        _, headers, body, _ = exchange(s, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert headers["transfer-encoding"] == "chunked"
        assert body == b"first second"
        _status, headers, body, _sock = exchange(s, b"GET / HTTP/1.0\r\n\r\n")
        assert "transfer-encoding" not in headers and headers["connection"] == "close"
        assert body == b"first second"
    finally:
        s.close()


def test_head_answer_has_no_body_but_keeps_its_length(server: Server) -> None:
    sock = server.connect()
    sock.sendall(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    assert b"Content-Length: " in head
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 0
    # the next bytes are the next answer, not a body
    status, _, body = read_response(sock, bytearray(rest))
    assert status == 200 and json.loads(body)["PATH_INFO"] == "/next"


def test_app_framing_headers_are_replaced() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(
            "200 OK",
            [("Transfer-Encoding", "chunked"), ("Connection", "keep-alive"), ("X-Ok", "1")],
        )
        return [b"plain"]

    s = Server(app)
    try:
        _status, headers, body, _ = exchange(s, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert body == b"plain" and headers["content-length"] == "5"
        assert "transfer-encoding" not in headers and headers["x-ok"] == "1"
    finally:
        s.close()


def test_unread_request_body_ends_the_connection() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("413 Content Too Large", [("Content-Length", "0")])
        return [b""]

    s = Server(app)
    try:
        status, _, _, sock = exchange(
            s, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000
        )
        assert status == 413
        assert closed(sock)
    finally:
        s.close()


# -- hostile requests ----------------------------------------------------------------

SMUGGLING = [
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
        id="content-length-and-chunked",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
        id="two-content-lengths",
    ),
    pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", 400, id="bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400, id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, id="nul-in-value"),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
        id="other-transfer-coding",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
        id="bad-chunk",
    ),
    pytest.param(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", (400, 505), id="http-2-request-line"),
    pytest.param(b"GET /\r\n\r\n", 400, id="http-0.9"),
    pytest.param(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405, id="connect"),
    pytest.param(b"FROB / HTTP/1.1\r\nHost: a\r\n\r\n", 501, id="unknown-method"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="no-host"),
    pytest.param(b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="relative-target"),
    pytest.param(b"GET ftp://x/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="other-scheme"),
    pytest.param(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="space-in-target"),
]


@pytest.mark.parametrize(("raw", "status"), SMUGGLING)
def test_malformed_requests_are_refused_and_the_connection_closed(
    server: Server, raw: bytes, status: int | tuple[int, ...]
) -> None:
    sock = server.connect()
    sock.sendall(raw + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
    try:
        got, headers, _ = read_response(sock)
    except EOFError:
        got, headers = 0, {}  # llhttp stopped at the request line: no answer, only a close
    if got:
        assert got in (status if isinstance(status, tuple) else (status,))
        assert headers["connection"] == "close"
    else:
        assert status == 400
    assert closed(sock)
    assert server.served == 0  # nothing, and nothing smuggled behind it, reached the app


def test_limits_on_target_header_count_and_head_size() -> None:
    s = Server(echo, limits=Limits(url=100, fields=5, field=200, head=1000))
    try:
        assert exchange(s, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: a\r\n\r\n")[0] == 414
        many = b"".join(b"X-%d: v\r\n" % i for i in range(6))
        assert exchange(s, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")[0] == 431
        assert exchange(s, b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 300 + b"\r\n\r\n")[0] == 431
        sock = s.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
        for _ in range(12):  # one endless header value, sent in pieces
            try:
                sock.sendall(b"v" * 100)
            except OSError:
                break  # refused already
            time.sleep(0.01)
        assert read_response(sock)[0] == 431
        assert s.served == 0
    finally:
        s.close()


def test_a_slow_head_is_cut_off() -> None:
    s = Server(echo, keepalive=0.5)
    try:
        sock = s.connect()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        for _ in range(10):
            time.sleep(0.1)
            try:
                sock.sendall(b"X: y\r\n")
            except OSError:
                break
        status, headers, _ = read_response(sock)
        assert status == 408 and headers["connection"] == "close"
        assert time.monotonic() - started < 2
    finally:
        s.close()


def test_an_idle_keep_alive_connection_is_closed_quietly() -> None:
    s = Server(echo, keepalive=0.3)
    try:
        sock = s.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        read_response(sock)
        assert sock.recv(100) == b""  # closed without a 408 for a request never begun
    finally:
        s.close()


def test_data_sent_before_an_upgrade_is_answered_is_refused(server: Server) -> None:
    raw = (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        b"\x81\x85early"
    )
    status, _headers, _, sock = exchange(server, raw)
    assert status == 400 and closed(sock)
    assert server.served == 0


def test_an_upgrade_the_app_does_not_take_over_ends_the_connection(server: Server) -> None:
    raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    status, _, _, sock = exchange(server, raw)
    assert status == 200
    assert closed(sock)


def test_app_errors_fail_closed() -> None:
    def before(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("boom")

    def after(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        raise RuntimeError("boom")

    def injected(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("X-A", "b\r\nSet-Cookie: evil=1")])
        return [b""]

    for app, expect in ((before, 500), (injected, 500)):
        s = Server(app)
        try:
            status, headers, _body, sock = exchange(s, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert status == expect and "set-cookie" not in headers
            assert closed(sock)
        finally:
            s.close()
    s = Server(after)
    try:
        sock = s.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        with pytest.raises((EOFError, ValueError)):
            read_response(sock)  # chunked body never terminated: the client sees a cut
    finally:
        s.close()


def test_a_short_body_from_the_app_closes_the_connection() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "10")])
        yield b"12345"

    s = Server(app)
    try:
        sock = s.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while chunk := sock.recv(1000):
            data += chunk
        assert data.endswith(b"12345")  # and then the close: never a next response in its place
    finally:
        s.close()


def test_worker_shutdown_closes_after_the_current_request(server: Server) -> None:
    sock = server.connect()
    server.alive = False
    sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    _, headers, _ = read_response(sock)
    assert headers["connection"] == "close"
    assert closed(sock)


def test_a_served_request_leaves_no_reference_cycle_for_the_collector() -> None:
    """werkzeug's Request and the environ refer to each other; the server empties
    the environ once the answer is done, so both go with their last reference
    (under load, gen-0 collections of that garbage were the p99 of the proxy)."""
    seen: list[weakref.ref[Request]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        req = Request(environ)  # sets environ["werkzeug.request"] = req: a cycle
        seen.append(weakref.ref(req))
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    s = Server(app)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        sock = s.connect()
        for _ in range(2):  # the second answer: the first request's clean-up has run
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(sock)[0] == 200
        assert seen[0]() is None
    finally:
        if was_enabled:
            gc.enable()
        s.close()


# -- long bodies handed over as a connection (splice) ----------------------------------


def _wait(read: bool) -> Callable[..., None]:
    def wait(fd: int, timeout: float | None = None) -> None:
        ready = (
            select.select([fd], [], [], timeout) if read else select.select([], [fd], [], timeout)
        )
        if not any(ready):
            raise TimeoutError("timed out")

    return wait


class _Handover:
    """What the reverse proxy returns for a long upstream body: the upstream
    connection (here one end of a socket pair), the body bytes already read,
    and how many are still to come on it."""

    def __init__(self, source: socket.socket, early: bytes, left: int) -> None:
        self.source = source
        self.early = early
        self.left = left
        self.ended: list[str] = []
        self.closed = False

    def splice_source(self, minimum: int) -> tuple[socket.socket, bytes, int] | None:
        return (self.source, self.early, self.left) if self.left >= minimum else None

    def splice_ended(self, failure: str) -> None:
        self.ended.append(failure)

    def __iter__(self) -> Iterator[bytes]:  # a body too short to splice
        yield self.early
        while data := self.source.recv(65536):
            yield data

    def close(self) -> None:
        self.closed = True


def _splicing_server(size: int, *, short_by: int = 0) -> tuple[Server, list[_Handover]]:
    handed: list[_Handover] = []

    def app(environ: dict[str, Any], start_response: Any) -> _Handover:
        upstream, feeder = socket.socketpair()
        body = bytes(range(256)) * (size // 256)

        def feed() -> None:
            feeder.sendall(body[5 : len(body) - short_by])
            feeder.close()

        threading.Thread(target=feed, daemon=True).start()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        handover = _Handover(upstream, body[:5], len(body) - 5)
        handed.append(handover)
        return handover

    s = Server(app)
    s.server.waits = (_wait(True), _wait(False))
    return s, handed


def test_a_long_body_handed_over_as_a_connection_is_spliced() -> None:
    size = 4 * 1024 * 1024
    s, handed = _splicing_server(size)
    try:
        sock = s.connect()
        for _ in range(2):  # and the connection stays usable
            sock.sendall(b"GET /fw.bin HTTP/1.1\r\nHost: a\r\n\r\n")
            status, _, body = read_response(sock)
            assert status == 200 and len(body) == size
            assert body == bytes(range(256)) * (size // 256)
        # the server reports the end just after the last byte left: the client may
        # have read it first
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(h.closed and h.ended for h in handed):
            time.sleep(0.01)
        assert [h.ended for h in handed] == [[""], [""]]
        assert all(h.closed for h in handed)
    finally:
        s.close()


def test_a_spliced_body_cut_short_closes_the_connection_and_is_reported() -> None:
    size = 4 * 1024 * 1024
    s, handed = _splicing_server(size, short_by=1000)
    try:
        sock = s.connect()
        sock.sendall(b"GET /fw.bin HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"Content-Length: %d" % size in head
        assert len(body) == size - 1000  # then the close: never a silently short answer
        assert handed[0].ended == ["closed"]
    finally:
        s.close()


def test_a_short_body_is_not_spliced() -> None:
    size = 64 * 1024
    s, handed = _splicing_server(size)
    try:
        sock = s.connect()
        sock.sendall(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n")
        status, _, body = read_response(sock)
        assert status == 200 and body == bytes(range(256)) * (size // 256)
        assert handed[0].ended == []  # iterated, not spliced
    finally:
        s.close()


def test_a_request_already_waiting_yields_to_other_connections_first(server: Server) -> None:
    """Fairness: a keep-alive request already there when the previous answer has
    gone waits behind the other connections (``pause``); one the server had to
    wait for does not pause again."""
    pauses: list[int] = []
    server.server.pause = lambda: pauses.append(1)
    sock = server.connect()
    sock.sendall(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    buf = bytearray()
    read_response(sock, buf)
    read_response(sock, buf)
    assert len(pauses) == 1  # the pipelined second request
    time.sleep(0.2)  # the server is now waiting for the next request
    sock.sendall(b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    read_response(sock, buf)
    assert len(pauses) == 1


def test_a_keep_alive_request_not_there_yet_is_waited_for_through_the_loop(
    server: Server,
) -> None:
    """A request the server has to wait for is waited for with ``waits`` (under
    gevent: the event loop), never with a recv that may find it already there
    and serve it ahead of the connections that were ready first.  The first
    request of a connection is read at once."""
    waited: list[int] = []
    wait_read = _wait(read=True)

    def recording_wait(fd: int, timeout: float | None = None) -> None:
        waited.append(fd)
        wait_read(fd, timeout)

    server.server.waits = (recording_wait, _wait(read=False))
    pauses: list[int] = []  # a request that did arrive first is paused for instead
    server.server.pause = lambda: pauses.append(1)
    sock = server.connect()
    sock.sendall(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    buf = bytearray()
    assert read_response(sock, buf)[0] == 200
    for path in ("/2", "/3", "/4"):
        time.sleep(0.2)  # the server is now waiting for the next request
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        assert read_response(sock, buf)[0] == 200
    sock.sendall(b"GET /5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert read_response(sock, buf)[0] == 200
    assert closed(sock)
    # each of /2../5 was waited for through waits or, already there, paused for
    # (never read by a plain recv); /1 for neither.  The sleeps make the server
    # wait for /2../4, unless a loaded machine stalls it for 0.2 s
    assert len(waited) + len(pauses) == 4
    assert waited


def _ignores_the_body(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("502 Bad Gateway", [("Content-Length", "4")])
    return [b"nope"]


def test_a_short_unread_body_is_dropped_and_the_connection_carries_on() -> None:
    """The app answered without reading the body (the proxy's upstream was down),
    and the body arrived after the head: it is read and dropped, and the next
    request on the connection is served - never a reset."""
    s = Server(_ignores_the_body)
    try:
        sock = s.connect()
        sock.sendall(b"POST /doorlog/export HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        time.sleep(0.1)
        sock.sendall(b"hello")
        status, headers, _ = read_response(sock)
        assert status == 502 and "connection" not in headers
        sock.sendall(b"GET /.sso/healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(sock)[0] == 502  # the same app: served, not reset
        assert s.served == 2
    finally:
        s.close()


def test_a_long_unread_body_gets_connection_close_and_the_answer_arrives_whole() -> None:
    s = Server(_ignores_the_body)
    try:
        sock = s.connect()
        sock.sendall(b"PUT /fw HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n")
        sock.sendall(b"x" * 200_000)  # more is on its way when the answer comes
        status, headers, body = read_response(sock)
        assert (status, headers["connection"], body) == (502, "close", b"nope")
        try:
            sock.sendall(b"x" * 200_000)  # the client still sending: dropped, not reset
        except OSError:
            pass
        assert closed(sock)
    finally:
        s.close()


# -- the access log ---------------------------------------------------------------------


class Logged:
    """A server with an access log into memory (written when the test asks)."""

    def __init__(self, app: App = echo, **options: Any) -> None:
        self.stream = io.StringIO()
        self.log = AccessLog(stream=self.stream, interval=3600)
        self.server = Server(app, access_log=self.log, **options)

    def lines(self, count: int) -> list[dict[str, Any]]:
        """The lines so far, once there are ``count`` (the line follows the answer)."""
        deadline = time.monotonic() + 5
        while True:
            self.log.flush()
            found = [json.loads(line) for line in self.stream.getvalue().splitlines()]
            if len(found) >= count or time.monotonic() > deadline:
                return found


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes."""
    sock.settimeout(3)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


@pytest.fixture
def logged() -> Iterator[Logged]:
    s = Logged()
    yield s
    s.server.close()


def test_an_answered_request_is_logged_with_status_and_bytes(logged: Logged) -> None:
    status, _, body, _ = exchange(
        logged.server,
        b"GET /console/?cam=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: panel/2\r\n\r\n",
    )
    assert status == 200
    (line,) = logged.lines(1)
    assert line["method"] == "GET" and line["target"] == "/console/?cam=1"
    assert line["status"] == 200 and line["bytes"] == len(body)
    assert line["protocol"] == "HTTP/1.1" and line["remote_addr"] == "127.0.0.1"
    assert line["user_agent"] == "panel/2" and line["duration_ms"] >= 0
    assert "refused" not in line


def test_two_requests_on_one_connection_are_two_lines(logged: Logged) -> None:
    sock = logged.server.connect()
    for path in ("/a", "/b"):
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        assert read_response(sock)[0] == 200
    sock.sendall(b"HEAD /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert _until_closed(sock).startswith(b"HTTP/1.1 200 ")
    lines = logged.lines(3)
    assert [(x["method"], x["target"], x["status"]) for x in lines] == [
        ("GET", "/a", 200),
        ("GET", "/b", 200),
        ("HEAD", "/c", 200),
    ]
    assert lines[0]["bytes"] > 0 and lines[2]["bytes"] == 0  # HEAD: no body went out


def test_a_refused_smuggling_attempt_is_logged(logged: Logged) -> None:
    sock = logged.server.connect()
    sock.sendall(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nUser-Agent: smuggler\r\n"
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    status, _, body = read_response(sock)
    assert status == 400 and closed(sock)
    (line,) = logged.lines(1)
    assert line["status"] == 400 and line["bytes"] == len(body)
    assert line["method"] == "POST" and line["target"] == "/upload"
    assert line["user_agent"] == "smuggler" and line["remote_addr"] == "127.0.0.1"
    assert line["refused"]  # llhttp's reason
    assert logged.server.served == 0


@pytest.mark.parametrize(("raw", "status"), SMUGGLING)
def test_every_refusal_is_one_line(raw: bytes, status: int | tuple[int, ...]) -> None:
    s = Logged()
    try:
        sock = s.server.connect()
        sock.sendall(raw + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        _until_closed(sock)
        (line,) = s.lines(1)
        assert line["status"] in (status if isinstance(status, tuple) else (status,))
        assert line["refused"] and "/smuggled" not in json.dumps(line)
    finally:
        s.server.close()


def test_limits_and_slow_heads_are_logged() -> None:
    s = Logged(limits=Limits(url=100), keepalive=0.3)
    try:
        exchange(s.server, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        sock = s.server.connect()
        sock.sendall(b"GET /slow HTTP/1.1\r\n")
        assert read_response(sock)[0] == 408
        long, slow = s.lines(2)
        assert long["status"] == 414 and long["method"] == "GET"
        assert long["target"].startswith("/aaaa")
        assert slow["status"] == 408 and slow["target"] == "/slow"
    finally:
        s.server.close()


def test_app_failures_and_taken_over_connections_are_logged() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/ws":

            class TakenOver:
                connection_taken_over = True

                def __iter__(self) -> Iterator[bytes]:
                    return iter(())

            environ["gunicorn.socket"].sendall(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            return TakenOver()
        raise RuntimeError("boom")

    s = Logged(app)
    try:
        assert exchange(s.server, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")[0] == 500
        upgrade = (
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        sock = s.server.connect()
        sock.sendall(upgrade)
        assert sock.recv(100).startswith(b"HTTP/1.1 101")
        failed, relayed = s.lines(2)
        assert failed["status"] == 500 and failed["bytes"] > 0
        assert relayed["status"] == 101 and relayed["target"] == "/ws"
    finally:
        s.server.close()


def test_a_streamed_answer_counts_its_body_bytes() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first "
        yield b"second"

    s = Logged(app)
    try:
        _, headers, body, _ = exchange(s.server, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert headers["transfer-encoding"] == "chunked"
        (line,) = s.lines(1)
        assert line["bytes"] == len(body) == 12  # the body, not its chunk framing
    finally:
        s.server.close()


def test_the_server_writes_the_line_and_the_middleware_stands_aside() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        assert environ[WRITTEN_BY_SERVER] is True
        note(environ, Identity(subject="alice", provider="local"), "operator", "10.0.0.9", "door")
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    s = Logged()
    s.server.close()
    s.server = Server(AccessLogMiddleware(app, s.log), access_log=s.log)
    try:
        sock = s.server.connect()
        for _ in range(2):
            sock.sendall(b"GET /door HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(sock)[0] == 200
        time.sleep(0.2)
        lines = s.lines(3)
        assert len(lines) == 2  # one per request, not two
        assert lines[0]["user"] == "alice" and lines[0]["tier"] == "operator"
        assert lines[0]["upstream"] == "door" and lines[0]["client_ip"] == "10.0.0.9"
    finally:
        s.server.close()


def test_without_an_access_log_nothing_is_marked_or_written(server: Server) -> None:
    assert server.server.access_log is None
    assert WRITTEN_BY_SERVER not in server.server.base_environ
    status, _, body, _ = exchange(server, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 200 and "ssogw" not in body.decode()
