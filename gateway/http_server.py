"""The gateway's HTTP/1.1 server side: one client connection of a gevent worker,
its requests parsed by llhttp (``httptools``), each handed to the WSGI app.

gunicorn's own gevent handler parses requests in Python and builds its response
objects per request; on the reverse-proxy path that was most of the gateway's CPU.
This module keeps what a demanding front door needs and nothing else:

* parsing is llhttp's, strict (no lenient flags): request smuggling shapes -
  ``Content-Length`` with ``Transfer-Encoding``, duplicate lengths, bare LF,
  whitespace before the colon, obs-fold - are refused with 400 and the connection
  closed;
* only HTTP/1.0 and 1.1; ``Transfer-Encoding`` only ``chunked``; no CONNECT;
* limits: request target 8 KiB, 100 header fields of 8 KiB each, 64 KiB of head;
  the head must arrive within the keep-alive time (slow-loris);
* header names with ``_`` are dropped (as gunicorn and nginx do): WSGI spells ``-``
  and ``_`` alike, so ``X_Auth_User`` could otherwise pose as ``X-Auth-User``;
* request bodies are read as the app asks for them (``wsgi.input``), never held
  whole; ``Expect: 100-continue`` is answered on the first read;
* responses are framed by ``Content-Length`` when the app gives one, else chunked
  (HTTP/1.1) or by closing (HTTP/1.0); small answers leave in one ``send``;
* pipelined requests are served in order; an upgrade (WebSocket) request the app
  takes over (its answer has ``connection_taken_over``) is the connection's last;
* with an access log (:class:`gateway.access_log.AccessLog`), one line per
  request once its answer is complete or its connection failed, refusals
  included; without one, a request costs one attribute read (tested for
  ``None`` when it begins and when it ends).

The environ is the one PEP 3333 describes, with gunicorn's extras the views use
(``RAW_URI``, ``gunicorn.socket``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

from gateway.access_log import WRITTEN_BY_SERVER, AccessLog
from gateway.sockets import send_all

__all__ = ["SERVER_SOFTWARE", "BodyEndedEarly", "ConnectionServer", "Limits"]

SERVER_SOFTWARE = "sso-gateway"  # environ["SERVER_SOFTWARE"]: this server, plain HTTP

log = logging.getLogger(__name__)

RECV = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
# header names the server frames itself; an app's own values are dropped
_FRAMING = frozenset({"connection", "keep-alive", "transfer-encoding", "date"})
_BAD_HEADER = re.compile(r"[\r\n\0]")
_TOO_LARGE = "431 Request Header Fields Too Large"
_STATUS = re.compile(r"[1-5][0-9][0-9] [^\r\n\0]*\Z")


Waits = tuple[Callable[..., Any], Callable[..., Any]]
# a request body the app left unread is read and dropped up to this size (and
# this long), so that the connection can carry the next request; a longer one
# is answered with Connection: close
DRAIN_LIMIT = 64 * 1024
DRAIN_SECONDS = 2.0
SPLICE_MIN = 1024 * 1024  # bodies from this size move by splice(2) when they can
PIPE_SIZE = 1024 * 1024  # the splice pipe's capacity (Linux's default maximum)


class Limits:
    """Request size limits (gunicorn's defaults, roughly)."""

    def __init__(
        self,
        *,
        url: int = 8190,
        fields: int = 100,
        field: int = 8190,
        head: int = 64 * 1024,
    ) -> None:
        self.url = url
        self.fields = fields
        self.field = field
        self.head = head


class _Refused(Exception):
    """A request the server answers itself (4xx/5xx) before closing."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyEndedEarly(ConnectionResetError):
    """``wsgi.input`` read past what the client sent: it closed the connection
    (or sent a malformed chunk) before the request body's end."""


class _Request:
    __slots__ = (
        "body",
        "complete",
        "declared",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "trailers",
        "url",
        "version",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.declared: int | None = None  # Content-Length; None for chunked or none
        self.method = ""  # both set once the head is complete
        self.version = ""
        self.keep_alive = False
        self.expect_continue = False
        self.body: deque[bytes] = deque()
        self.complete = False
        self.trailers = -1  # trailer fields seen after a chunked body; -1 while in the head


class ConnectionServer:
    """Serves connections for one worker: ``serve(sock, addr)`` per connection."""

    def __init__(
        self,
        app: Callable[..., Any],
        *,
        server_name: str,
        server_port: str,
        keepalive: float,
        alive: Callable[[], bool],
        counted: Callable[[], None] = lambda: None,
        pause: Callable[[], None] = lambda: None,
        limits: Limits | None = None,
        waits: Waits | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        # (wait until readable, until writable)(fd, timeout): with them, long
        # bodies from upstream move by splice(2), never copied through Python
        self.waits = waits if hasattr(os, "splice") else None
        self.keepalive = keepalive
        self.alive = alive
        self.counted = counted
        self.pause = pause  # after every request: let other connections run
        self.limits = limits or Limits()
        self.base_environ: dict[str, Any] = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "SCRIPT_NAME": "",
            "SERVER_NAME": server_name,
            "SERVER_PORT": server_port,
            "SERVER_SOFTWARE": SERVER_SOFTWARE,
        }
        if access_log is not None:
            self.base_environ[WRITTEN_BY_SERVER] = True  # the app's middleware stands aside
        self._date_second = -1
        self._date = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self._date_second:
            self._date = formatdate(now, usegmt=True)
            self._date_second = now
        return self._date

    def serve(self, sock: socket.socket, addr: Any) -> None:
        _Connection(self, sock, addr).run()


class _Connection:
    def __init__(self, server: ConnectionServer, sock: socket.socket, addr: Any) -> None:
        self.server = server
        self.limits = server.limits
        self.sock = sock
        if isinstance(addr, tuple) and len(addr) >= 2:
            self.remote = (str(addr[0]), str(addr[1]))
        else:
            self.remote = ("", "")
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: _Request | None = None
        self.ready: deque[_Request] = deque()
        self.eof = False
        self.upgraded = False
        self.after_upgrade = b""
        self.unread = False  # a request body is left unread: close gently

    # -- llhttp callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = _Request()

    def on_url(self, url: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.url += url
        if len(req.url) > self.limits.url:
            raise _Refused("414 URI Too Long", "the request target is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.parsing
        assert req is not None
        if len(req.headers) + max(req.trailers, 0) >= self.limits.fields:
            raise _Refused(_TOO_LARGE, "too many header fields")
        if len(name) + len(value) > self.limits.field:
            raise _Refused(_TOO_LARGE, "a header field is too long")
        if req.trailers >= 0:
            # a trailer field (llhttp reports them through this same callback):
            # never a header - a front proxy controls the head, not the trailers,
            # so an X-Forwarded-For here would be the client's own word
            req.trailers += 1
            return
        req.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self.parsing
        assert req is not None
        parser = self.parser
        req.version = parser.get_http_version()
        req.method = parser.get_method().decode("ascii")
        req.keep_alive = parser.should_keep_alive()
        req.trailers = 0  # fields from now on are trailers
        self.ready.append(req)

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.body.append(body)

    def on_message_complete(self) -> None:
        req = self.parsing
        assert req is not None
        req.complete = True
        self.parsing = None

    # -- reading ---------------------------------------------------------------------
    def fill(self) -> int:
        """One ``recv`` fed to the parser: the bytes received, 0 at the end."""
        if self.upgraded:
            return 0
        data = self.sock.recv(RECV)
        if not data:
            self.eof = True
            return 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            self.after_upgrade = data[exc.args[0] :]
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserInvalidMethodError:
            raise _Refused("501 Not Implemented", "unknown method") from None
        except httptools.HttpParserError as exc:
            raise _Refused("400 Bad Request", str(exc)) from None
        return len(data)

    def next_request(self, first: bool) -> _Request | None:
        """The next request's head: idle for up to ``keepalive`` seconds, then
        the whole head within ``keepalive`` seconds of its first byte.

        Fairness: a keep-alive request that is already there when the previous
        answer has gone (pipelined, or sent on a busy pooled connection) waits
        its turn behind the other connections first (``pause``); one that was
        not there yet is waited for through the event loop (``waits``), so it
        too comes after the connections that were ready first."""
        if self.ready:
            if not first:
                self.server.pause()
            return self.ready.popleft()
        if self.eof or self.upgraded:
            return None
        sock = self.sock
        received = 0
        if not first:
            sock.settimeout(0.0)
            try:
                received = self.fill()
            except BlockingIOError:
                pass
            else:
                if not received:
                    return None
                self.server.pause()
        if not received:
            sock.settimeout(self.server.keepalive)
            try:
                if not first and self.server.waits is not None:
                    # through the event loop: a recv now may find the next request
                    # that arrived a moment ago and serve it ahead of every other
                    # connection (a fast client answers within microseconds)
                    self.server.waits[0](sock.fileno(), timeout=self.server.keepalive)
                received = self.fill()
            except TimeoutError:
                return None  # idle keep-alive connection: closed quietly
            if not received:
                return None
        deadline = time.monotonic() + self.server.keepalive
        while not self.ready:
            if received > self.limits.head:
                raise _Refused(_TOO_LARGE, "the request head is too large")
            if self.eof or self.upgraded:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Refused("408 Request Timeout", "the request head came too slowly")
            sock.settimeout(left)
            try:
                received += self.fill()
            except TimeoutError:
                raise _Refused("408 Request Timeout", "the request head came too slowly") from None
        sock.settimeout(self.server.keepalive)
        return self.ready.popleft()

    # -- the connection --------------------------------------------------------------
    def run(self) -> None:
        first = True
        try:
            while True:
                try:
                    req = self.next_request(first)
                except _Refused as exc:
                    self.refused(exc, self.parsing, self.refuse(exc))
                    return
                if req is None:
                    return
                if not self.handle(req):
                    return
                first = False
        except OSError:
            pass  # the client went away
        finally:
            if self.unread:
                self.linger()
            try:
                self.sock.close()
            except OSError:
                pass

    def linger(self) -> None:
        """Close after an answer while the client may still be sending a body:
        stop writing, then read and drop for a moment, so that the close does not
        become a reset that destroys the answer on its way (nginx's
        lingering_close)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + DRAIN_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(RECV):
                    return
        except OSError:
            pass

    def refuse(self, exc: _Refused) -> int:
        """Answer ``exc`` and end the connection; the body bytes sent."""
        log.debug("refused a request from %s: %s", self.remote[0], exc)
        self.unread = True  # whatever else the client sent is dropped with a lingering close
        self.sock.settimeout(self.server.keepalive)  # it may have been polled without waiting
        body = f"{exc.status}\n".encode("latin-1")
        head = (
            f"HTTP/1.1 {exc.status}\r\nDate: {self.server.date()}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            self.sock.sendall(head.encode("latin-1") + body)
        except OSError:
            return 0
        return len(body)

    def refused(
        self, exc: _Refused, req: _Request | None, sent: int, started: float | None = None
    ) -> None:
        """The access log line of a refused request, with what is known of it."""
        access = self.server.access_log
        if access is None:
            return
        method, version, agent = req.method if req else "", req.version if req else "", None
        if req is not None:
            if not method and req.url:  # the request line was read up to its target
                method = self.parser.get_method().decode("ascii", "replace")
            agent = next((v for n, v in req.headers if n.lower() == b"user-agent"), None)
        access.refused(
            self.remote[0],
            int(exc.status[:3]),
            sent,
            str(exc),
            method=method,
            target=req.url if req is not None else None,
            protocol=f"HTTP/{version}" if version else None,
            user_agent=agent,
            started=started,
        )

    def handle(self, req: _Request) -> bool:
        """Serve one request; whether the connection may carry another."""
        access = self.server.access_log
        started = time.perf_counter() if access is not None else 0.0
        try:
            environ = self.environ(req)
        except _Refused as exc:
            self.refused(exc, req, self.refuse(exc), started)
            return False
        self.server.counted()
        response = _Response(self, req)
        result: Any = None
        try:
            result = self.server.app(environ, response.start_response)
            if getattr(result, "connection_taken_over", False):
                response.code = 101  # answered on the connection by the app (a WebSocket)
                return False
            if type(result) is list and len(result) == 1:
                response.finish(result[0])
            elif not self.spliced(response, result):
                for data in result:
                    if data:
                        response.write(data)
                response.finish(b"")
        except OSError:
            raise
        except Exception as exc:
            if response.head_sent:
                log.info("a response was cut: %s", exc.__class__.__name__)
                return False
            log.exception("error handling a request")
            sent = self.refuse(_Refused("500 Internal Server Error", "internal error"))
            response.code, response.written = 500, sent  # what the access log says
            return False
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing a response failed")
            if access is not None:
                access.answered(environ, response.code, response.written, started)
            # the app's objects refer to the environ and it to them (werkzeug's
            # Request is environ["werkzeug.request"]): emptied, they go with their
            # last reference instead of waiting for the garbage collector
            environ.clear()
        if not req.complete and not self.drain(req):
            self.unread = True
            return False
        if response.must_close or not req.keep_alive or not self.server.alive():
            return False
        return not self.upgraded  # an upgrade not taken over ends the connection

    def drain(self, req: _Request) -> bool:
        """Read and drop what the app left of a request body, so that the
        connection can carry the next request; False when it is longer than
        DRAIN_LIMIT or slower than DRAIN_SECONDS (the connection then ends)."""
        if self.upgraded:
            return False
        dropped = 0
        deadline = time.monotonic() + DRAIN_SECONDS
        try:
            while True:
                while req.body:
                    dropped += len(req.body.popleft())
                if req.complete:
                    return True
                left = deadline - time.monotonic()
                if dropped > DRAIN_LIMIT or left <= 0:
                    return False
                self.sock.settimeout(left)
                if not self.fill():
                    return False
        except (OSError, _Refused):
            return False
        finally:
            self.sock.settimeout(self.server.keepalive)

    def spliced(self, response: _Response, result: Any) -> bool:
        """Send a long body the app hands over as a connection (the reverse
        proxy's upstream answer: ``result.splice_source``) with splice(2),
        kernel to kernel, instead of reading it into Python; False when the
        body must be iterated instead (nothing written yet then)."""
        source = getattr(result, "splice_source", None)
        waits = self.server.waits
        if source is None or waits is None or not response.status:
            return False
        head = response.prepare_head()  # framed now either way: the first write sends it
        length = response.length
        if length is None or response.bodyless or length < SPLICE_MIN:
            return False
        taken = source(SPLICE_MIN)
        if taken is None:
            return False
        src, early, left = taken
        response.head_sent = True
        if len(early) + left != length:  # never for an answer passed on as it came
            response.must_close = True
            return True
        send_all(self.sock, head + early)
        response.written = len(early)
        moved, failure = _splice(src, self.sock, left, waits)
        response.written += moved
        if moved < left:
            response.must_close = True
        ended = getattr(result, "splice_ended", None)
        if ended is not None:
            ended(failure)
        return True

    def environ(self, req: _Request) -> dict[str, Any]:
        if req.version not in ("1.1", "1.0"):
            raise _Refused("505 HTTP Version Not Supported", "only HTTP/1.0 and 1.1")
        if req.method == "CONNECT":
            raise _Refused("405 Method Not Allowed", "CONNECT is not served")
        if self.upgraded and self.after_upgrade:
            # RFC 6455: a client waits for the 101 before it sends anything
            raise _Refused("400 Bad Request", "data sent before the upgrade was answered")
        environ = self.server.base_environ.copy()
        raw = req.url.decode("latin-1")
        if raw.startswith("/"):
            path, _, query = raw.partition("?")
        elif raw == "*" and req.method == "OPTIONS":
            path, query = "*", ""
        else:
            try:
                parts = httptools.parse_url(req.url)
            except httptools.HttpParserInvalidURLError:
                raise _Refused("400 Bad Request", "the request target is not a URL") from None
            if parts.schema not in (b"http", b"https") or not parts.host:
                raise _Refused("400 Bad Request", "the request target is not a URL")
            path = (parts.path or b"/").decode("latin-1")
            query = (parts.query or b"").decode("latin-1")
        path = path.partition("#")[0]
        environ["REQUEST_METHOD"] = req.method
        environ["RAW_URI"] = raw
        environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
        environ["QUERY_STRING"] = query
        environ["SERVER_PROTOCOL"] = "HTTP/" + req.version
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = self.remote
        environ["gunicorn.socket"] = self.sock
        for raw_name, raw_value in req.headers:
            name = raw_name.decode("latin-1").upper()
            if "_" in name:
                continue  # never mistaken for the '-' spelling (see the module doc)
            value = raw_value.decode("latin-1")
            if name == "CONTENT-TYPE":
                key = "CONTENT_TYPE"
            elif name == "CONTENT-LENGTH":
                key = "CONTENT_LENGTH"
                req.declared = int(value)  # llhttp has checked it: digits, only one
            else:
                key = "HTTP_" + name.replace("-", "_")
                if name == "EXPECT":
                    if value.strip().lower() != "100-continue":
                        raise _Refused("417 Expectation Failed", "unknown expectation")
                    req.expect_continue = req.version == "1.1"
                elif name == "TRANSFER-ENCODING" and value.strip().lower() != "chunked":
                    raise _Refused("501 Not Implemented", "only chunked transfer coding")
            old = environ.get(key)
            if old is None:
                environ[key] = value
            elif key == "HTTP_HOST":
                raise _Refused("400 Bad Request", "more than one Host header")
            else:
                environ[key] = f"{old},{value}"
        if req.version == "1.1" and "HTTP_HOST" not in environ:
            raise _Refused("400 Bad Request", "an HTTP/1.1 request without Host")
        environ["wsgi.input"] = _Input(self, req)
        return environ


class _Input:
    """``wsgi.input``: the request body as the parser hands it over."""

    def __init__(self, conn: _Connection, req: _Request) -> None:
        self.conn = conn
        self.req = req
        self.buffer = b""

    def _more(self) -> bool:
        """Move the next piece of body into the buffer; False at its end."""
        req = self.req
        if req.body:
            self.buffer += req.body.popleft()
            return True
        if req.complete:
            return False
        conn = self.conn
        if req.expect_continue:
            req.expect_continue = False
            conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            if not conn.fill():
                # the client stopped sending before the body's end: never a short
                # body that looks complete (a proxied chunked upload would reach
                # the upstream as a whole request); the app sees a broken stream
                raise BodyEndedEarly("the client stopped sending the request body")
        except _Refused as exc:
            raise BodyEndedEarly(f"the request body is malformed: {exc}") from None
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._more():
                pass
            data, self.buffer = self.buffer, b""
            return data
        while len(self.buffer) < size and self._more():
            pass
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else None
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0 and (limit is None or end < limit):
                data, self.buffer = self.buffer[: end + 1], self.buffer[end + 1 :]
                return data
            if limit is not None and len(self.buffer) >= limit:
                data, self.buffer = self.buffer[:limit], self.buffer[limit:]
                return data
            if not self._more():
                data, self.buffer = self.buffer, b""
                return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(self)

    def __iter__(self) -> Any:
        while line := self.readline():
            yield line


class _Response:
    def __init__(self, conn: _Connection, req: _Request) -> None:
        self.conn = conn
        self.req = req
        self.status = ""
        self.code = 0
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.length: int | None = None
        self.chunked = False
        self.bodyless = False
        self.written = 0
        self.must_close = False
        self._pending = b""  # a head framed ahead of the first write

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            if self.head_sent:
                raise exc_info[1].with_traceback(exc_info[2])
        elif self.status:
            raise AssertionError("start_response called twice without exc_info")
        if not _STATUS.match(status):
            raise ValueError(f"bad status line {status!r}")
        self.status = status
        self.code = int(status[:3])
        self.headers = headers
        return self.write

    def _head(self, first: bytes, last: bool) -> bytes:
        conn = self.conn
        req = self.req
        lines = [f"HTTP/1.1 {self.status}\r\nDate: {conn.server.date()}\r\n"]
        length: int | None = None
        for name, value in self.headers:
            if _BAD_HEADER.search(name) or _BAD_HEADER.search(value):
                raise ValueError("a response header holds CR, LF or NUL")
            lower = name.lower()
            if lower in _FRAMING:
                if lower == "connection" and "close" in value.lower():
                    self.must_close = True
                continue
            if lower == "content-length":
                length = int(value)
            lines.append(f"{name}: {value}\r\n")
        code = self.code
        self.bodyless = req.method == "HEAD" or code < 200 or code in _NO_BODY_STATUS
        if self.bodyless:
            pass
        elif length is not None:
            self.length = length
        elif last:
            self.length = len(first)
            lines.append(f"Content-Length: {len(first)}\r\n")
        elif req.version == "1.1":
            self.chunked = True
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            self.must_close = True
        if not req.complete and (req.declared is None or req.declared > DRAIN_LIMIT):
            self.must_close = True  # a body left unread, too long to read and drop
        closing = self.must_close or not req.keep_alive or not conn.server.alive()
        if closing:
            self.must_close = True
            lines.append("Connection: close\r\n")
        elif req.version == "1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def write(self, data: bytes, last: bool = False) -> None:
        if not self.status:
            raise AssertionError("write() before start_response")
        out = b""
        if not self.head_sent:
            out = self._pending or self._head(data, last)
            self._pending = b""
            self.head_sent = True
        if self.bodyless:
            data = b""
        elif self.length is not None:
            room = self.length - self.written
            if len(data) > room:
                data = data[:room]
                self.must_close = True  # the app wrote more than it announced
            self.written += len(data)
        else:
            self.written += len(data)  # for the access log only
            if self.chunked and data:
                data = b"%x\r\n%b\r\n" % (len(data), data)
        if out:
            data = out + data if data else out
        if data:
            send_all(self.conn.sock, data)

    def prepare_head(self) -> bytes:
        """Frame the head now (the app named its length), for the first write."""
        if not self._pending:
            self._pending = self._head(b"", False)
        return self._pending

    def finish(self, data: bytes) -> None:
        if not self.status:
            raise AssertionError("the app returned without calling start_response")
        self.write(data, last=True)
        if self.chunked:
            self.conn.sock.sendall(b"0\r\n\r\n")
        elif self.length is not None and self.written < self.length and not self.bodyless:
            self.must_close = True  # short body: the client must not wait for the rest


def _splice(src: socket.socket, dst: socket.socket, count: int, waits: Waits) -> tuple[int, str]:
    """Move ``count`` bytes from ``src`` to ``dst`` through a pipe with
    splice(2).  Returns (bytes moved, "" or why the source stopped early);
    a failure on the ``dst`` side raises (the client is gone)."""
    wait_read, wait_write = waits
    read_timeout, write_timeout = src.gettimeout(), dst.gettimeout()
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    sfd, dfd = src.fileno(), dst.fileno()
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        try:
            fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # a smaller pipe only means more rounds
        moved = 0
        while moved < count:
            try:
                n = os.splice(sfd, pipe_w, min(count - moved, PIPE_SIZE), flags=flags)
            except BlockingIOError:
                try:
                    wait_read(sfd, timeout=read_timeout)
                except OSError:
                    return moved, "timeout"
                continue
            except OSError as exc:
                return moved, exc.strerror or "error"
            if n == 0:
                return moved, "closed"  # the upstream ended before its Content-Length
            while n:
                try:
                    m = os.splice(pipe_r, dfd, n, flags=flags)
                except BlockingIOError:
                    wait_write(dfd, timeout=write_timeout)
                    continue
                n -= m
                moved += m
        return moved, ""
    finally:
        os.close(pipe_r)
        os.close(pipe_w)
