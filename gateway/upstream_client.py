"""A lean keep-alive HTTP/1.1 client for reverse-proxy mode: one
:class:`UpstreamPool` per upstream, requests written as one block of bytes,
answers parsed by ``httptools`` (llhttp, the C parser of Node.js).

Nothing here parses HTTP or speaks TLS by hand: llhttp reads status lines,
headers and body framing (Content-Length, chunked, read-until-close), and the
``ssl`` module's :class:`ssl.SSLContext` wraps the sockets.  What this module
does itself is the bookkeeping around them:

* the request head is built once, checked (no CR, LF or NUL anywhere: a header
  can never smuggle another one upstream) and sent with one ``sendall``,
  together with a small body; streamed bodies are sent piece by piece as they
  are read, with chunked framing when asked;
* answers: interim ``1xx`` answers (other than ``101``) are skipped; answers to
  ``HEAD`` and ``1xx``/``204``/``304`` have no body; the body is passed on
  de-chunked, in pieces as they arrive (:meth:`UpstreamResponse.read1`);
* limits: at most 100 header fields and a 64 KiB head (the same for the trailer
  section of a chunked body, whose fields are dropped: the proxy never passes
  trailers on);
* keep-alive: a connection goes back to the pool only when its answer was read
  to the end and the upstream allows it (HTTP/1.1 without ``Connection:
  close``, or 1.0 with ``keep-alive``; never after ``HEAD``, whose answer llhttp
  cannot be told has no body, MagicStack/httptools#47).  An idle connection is
  checked before reuse (a non-blocking peek), except for a request that may be
  sent twice (an idempotent method, a body that is none or bytes) on a
  connection used within the last second; if a reused one fails before any
  byte of the answer arrived, such a request is sent once more on a new
  connection - never a POST, which might open a door twice;
* timeouts: ``connect_timeout`` for connecting and the TLS handshake,
  ``read_timeout`` for every read and write;
* legacy devices (``legacy=True``): answers whose head lines end in a bare LF,
  fold header values over several lines or put spaces before a colon - as old
  intercom and PBX firmware does - are read with llhttp's leniencies for
  exactly those; every field is then cleaned (name trimmed and a token, value
  without control characters, else dropped) and such a connection is never
  reused (``Connection: close`` is sent and the socket closed after the
  answer), so a misread answer can never shift the next request's answer onto
  someone else.

Sockets are plain ``socket`` sockets: under gunicorn's gevent worker they are
gevent's (monkey-patched), so every blocking call yields to other greenlets.

Errors (all :class:`OSError`, so that code that catches ``OSError`` still does)::

    UpstreamError                 kind: what the proxy reports
    +-- UpstreamTimeout           "timeout"   connect, handshake or read timed out (504)
    +-- UpstreamConnectError      "connect"   refused, unreachable, unknown host (502)
    +-- UpstreamTLSError          "tls"       handshake or certificate refused (502)
    +-- UpstreamProtocolError     "protocol"  reset, closed early, unparsable answer (502)

    InvalidRequest (ValueError)   the request itself cannot be written (CR/LF/NUL...)
"""

from __future__ import annotations

import ipaddress
import re
import select
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from typing import ClassVar

import httptools

from gateway.sockets import send_all

try:  # the system call itself, not gevent's cooperative version: a zero timeout never waits
    from gevent.monkey import get_original

    _select, _poll = get_original("select", ["select", "poll"])
except ImportError:  # pragma: no cover - gevent is a dependency of the default worker
    _select, _poll = select.select, select.poll
_SELECT_LIMIT = 1024  # FD_SETSIZE: select() takes no higher descriptor
# readable, hung up or failed: an idle connection in any of these is not reused
_READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR

__all__ = [
    "CHUNK",
    "MAX_HEAD",
    "MAX_HEADERS",
    "InvalidRequest",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTLSError",
    "UpstreamTimeout",
    "encode_head",
]

CHUNK = 256 * 1024  # largest read; what read1 returns at most by default
MAX_HEADERS = 100
MAX_HEAD = 64 * 1024
# methods a request may be sent twice with (RFC 9110 9.2.2): only those are
# retried on a new connection when a kept-alive one turns out to be closed
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# methods whose request body many devices never read (RFC 9110: no defined
# semantics): the unread body would be read as a next request on a pooled
# connection, whose answer then goes to the next person - such a request
# goes on a connection that is closed after it
_BODY_UNEXPECTED = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
DRAIN_LIMIT = 1024 * 1024  # drain() reads at most this much, then closes instead
_COALESCE = 64 * 1024  # a bytes body up to this size goes out with the head
_LAST_CHUNK = b"0\r\n\r\n"

# RFC 9110 5.6.2 token; the request target as sent: visible ASCII, no spaces
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# header names joined by LF (a name with an LF of its own fails the LF count)
_NAMES = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*\Z")
_TARGET = re.compile(r"[!-~]+\Z")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
# what a legacy device's header value may hold after llhttp's lenient reading:
# visible characters, spaces and tabs (obs-text included), no other controls
_LEGACY_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# llhttp leniencies for legacy=True: bare-LF head lines, folded values, spaces
# before the colon; chunk framing and Content-Length stay strict
_LEGACY_LENIENCIES = {"lenient_optional_cr_before_lf": True, "lenient_headers": True}


# -- errors --------------------------------------------------------------------------
class UpstreamError(OSError):
    """The upstream could not be reached or did not answer properly."""

    kind: ClassVar[str] = "protocol"


class UpstreamTimeout(UpstreamError, TimeoutError):
    kind = "timeout"


class UpstreamConnectError(UpstreamError):
    kind = "connect"


class UpstreamTLSError(UpstreamError):
    kind = "tls"


class UpstreamProtocolError(UpstreamError):
    kind = "protocol"


class InvalidRequest(ValueError):
    """A request that cannot be written as given (a header injection attempt,
    a character outside latin-1, a method or target that is not one)."""


class _Stop(Exception):
    """Raised in a parser callback to stop parsing (bytes after the answer)."""


def _wrap(exc: OSError, doing: str) -> UpstreamError:
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"{doing}: timed out")
    if isinstance(exc, ssl.SSLError):
        return UpstreamTLSError(f"{doing}: {exc}")
    return UpstreamProtocolError(f"{doing}: {exc.strerror or exc}")


# -- the request -----------------------------------------------------------------------
def encode_head(method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """``METHOD target HTTP/1.1`` and the header lines, as latin-1 bytes.  Raises
    :class:`InvalidRequest` for a CR, LF or NUL in any value, a name that is not
    a token, or text outside latin-1: nothing a caller passes can start a new
    header line or a second request."""
    text = "".join(
        [f"{method} {target} HTTP/1.1\r\n", *[f"{n}: {v}\r\n" for n, v in headers], "\r\n"]
    )
    lines = len(headers) + 2
    if (
        text.count("\n") != lines
        or text.count("\r") != lines
        or "\x00" in text
        or not _TOKEN.match(method)
        or not _TARGET.match(target)
        or (headers and not _NAMES.match("\n".join([n for n, _ in headers])))
    ):
        raise InvalidRequest(_culprit(method, target, headers))
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidRequest("a request header is not latin-1 text") from None


def _culprit(method: str, target: str, headers: Sequence[tuple[str, str]]) -> str:
    if not _TOKEN.match(method):
        return f"not an HTTP method: {method[:40]!r}"
    if not _TARGET.match(target):
        return "the request target has spaces, control or non-ASCII characters"
    for name, value in headers:
        if not _TOKEN.match(name):
            return f"not a header name: {name[:40]!r}"
        if _BAD_VALUE.search(value):
            return f"the {name[:40]} header has a CR, LF or NUL character"
    return "the request head cannot be written"


def _sendall(sock: socket.socket, data: bytes, doing: str) -> None:
    try:
        send_all(sock, data)
    except OSError as exc:
        raise _wrap(exc, doing) from exc


def _send(
    sock: socket.socket,
    head: bytes,
    body: bytes | Iterable[bytes] | None,
    chunked: bool,
) -> None:
    if body is None:
        _sendall(sock, head + _LAST_CHUNK if chunked else head, "sending the request")
        return
    if isinstance(body, bytes):
        if chunked:
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + _LAST_CHUNK
        if len(body) <= _COALESCE:
            _sendall(sock, head + body, "sending the request")
        else:
            _sendall(sock, head, "sending the request")
            _sendall(sock, body, "sending the request body")
        return
    _sendall(sock, head, "sending the request")
    for piece in body:  # the client's errors (a short body) pass unchanged
        if not piece:
            continue  # an empty chunk would end a chunked body
        if chunked:
            piece = b"%x\r\n%b\r\n" % (len(piece), piece)
        _sendall(sock, piece, "sending the request body")
    if chunked:
        _sendall(sock, _LAST_CHUNK, "sending the request body")


# -- the answer ------------------------------------------------------------------------
class _Message:
    """The llhttp callbacks: what has been parsed of one answer so far."""

    __slots__ = (
        "body",
        "complete",
        "count",
        "head_request",
        "headers",
        "headers_done",
        "interim",
        "junk",
        "keep_alive",
        "legacy",
        "parser",
        "reason",
        "size",
        "status",
        "version",
    )

    def __init__(self, head_request: bool, legacy: bool = False) -> None:
        self.head_request = head_request
        self.legacy = legacy  # lenient reading: every field is cleaned in on_header
        # only until the final head is parsed (then the cycle parser <-> message ends)
        self.parser: httptools.HttpResponseParser | None = None
        self.status = 0
        self.reason = ""
        self.version = ""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.count = 0
        self.size = 0
        self.headers_done = False
        self.interim = False
        self.complete = False
        self.keep_alive = False
        self.junk = False  # bytes beyond the answer: the connection is not reused

    # httptools calls these (names fixed by httptools.parser.protocol.HTTPProtocol)
    def on_message_begin(self) -> None:
        if self.complete:  # more after the answer: stop parsing, never reuse
            self.junk = True
            raise _Stop
        self.headers = []  # the final answer's, not an interim one's
        self.count = 0

    def on_status(self, status: bytes) -> None:
        self.size += len(status) + 15
        self.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count += 1
        self.size += len(name) + len(value) + 4
        if self.count > MAX_HEADERS:
            raise UpstreamProtocolError(f"the answer has more than {MAX_HEADERS} header fields")
        if self.size > MAX_HEAD:
            raise UpstreamProtocolError("the answer's head is larger than 64 KiB")
        if self.headers_done:  # a chunked body's trailer fields: dropped
            return
        text, data = name.decode("latin-1"), value.decode("latin-1")
        if self.legacy:
            text, data = text.strip(), data.strip(" \t")
            if not _TOKEN.match(text) or _LEGACY_BAD_VALUE.search(data):
                return  # a field that cannot be passed on safely is left out
        self.headers.append((text, data))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True  # 100 Continue, 103 Early Hints...: skipped
            return
        self.status = status
        self.version = parser.get_http_version()
        self.headers_done = True
        self.parser = None
        self.count = self.size = 0  # trailer fields have limits of their own
        if self.head_request:
            self.complete = True  # llhttp cannot be told; never reused (see close)
        else:
            self.keep_alive = parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.head_request:
            self.junk = True
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True

    def framed(self) -> bool:
        """Whether the answer says where its body ends (Content-Length or
        chunked), so that the upstream closing early cuts it short."""
        for name, value in self.headers:
            lower = name.lower()
            if lower == "content-length":
                return True
            if lower == "transfer-encoding":
                return value.rsplit(",", 1)[-1].strip().lower() == "chunked"
        return False


class UpstreamResponse:
    """One answer.  ``status``, ``reason`` and ``headers`` (as received: order
    and repeats kept, latin-1 decoded) are there once the object is returned;
    the body is read with :meth:`read1`.  Always end with :meth:`release` (or
    :meth:`close`): the connection goes back to the pool only when the answer
    was read to its end and the upstream allows keep-alive."""

    __slots__ = ("_cut", "_msg", "_parser", "_pool", "_received", "_rest", "_sock")

    def __init__(
        self, sock: socket.socket, method: str, pool: UpstreamPool | None, *, legacy: bool = False
    ) -> None:
        self._sock: socket.socket | None = sock
        self._pool = pool
        self._msg = msg = _Message(method == "HEAD", legacy)
        self._parser = msg.parser = httptools.HttpResponseParser(msg)
        if legacy:
            self._parser.set_dangerous_leniencies(**_LEGACY_LENIENCIES)
        self._received = 0  # bytes of the answer read off the socket
        self._rest: bytes | None = None  # after a 101: bytes already read past the head
        self._cut = False

    @property
    def status(self) -> int:
        return self._msg.status

    @property
    def reason(self) -> str:
        return self._msg.reason

    @property
    def version(self) -> str:
        return self._msg.version

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self._msg.headers

    @property
    def complete(self) -> bool:
        """Whether the whole answer has been read off the connection."""
        return self._msg.complete

    def getlist(self, name: str) -> list[str]:
        """Every value of the header ``name`` (any case), in order."""
        lower = name.lower()
        return [v for k, v in self._msg.headers if k.lower() == lower]

    def read1(self, n: int = CHUNK) -> bytes:
        """Body bytes as they arrive (one read at most), up to ``n``; ``b""`` at
        the end.  Raises :class:`UpstreamError` for a body cut short."""
        msg = self._msg
        pieces = msg.body
        while not pieces:
            if msg.complete or self._sock is None:
                return b""
            data = self._recv(n)
            if not data:
                self._eof()
                return b""
            self._feed(data)
        if len(pieces) == 1 and len(pieces[0]) <= n:
            return pieces.pop()
        data = b"".join(pieces)
        pieces.clear()
        if len(data) > n:
            pieces.append(data[n:])
            data = data[:n]
        return data

    def drain(self, limit: int = DRAIN_LIMIT) -> None:
        """Read the rest of the body and drop it (at most ``limit`` bytes: a
        longer one closes the connection instead)."""
        read = 0
        try:
            while read <= limit and (data := self.read1()):
                read += len(data)
        except UpstreamError:
            self.close()
            return
        if read > limit:
            self.close()

    def release(self) -> None:
        """Done with this answer: back to the pool when it was read whole and the
        upstream keeps the connection alive, closed otherwise."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        msg = self._msg
        if (
            self._pool is not None
            and msg.complete
            and msg.keep_alive
            and not msg.junk
            and not self._cut
            and not msg.head_request
        ):
            self._pool._checkin(sock)
        else:
            sock.close()

    def close(self) -> None:
        """Close the connection (never reused)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def shutdown(self) -> None:
        """Cut the connection from another greenlet or thread: a read blocked in
        :meth:`read1` returns at once (end of body, or an error when the body is
        framed).  The connection is never reused."""
        self._cut = True
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def take_body(self, minimum: int) -> tuple[socket.socket, bytes, int] | None:
        """For a zero-copy relay of a long body: ``(connection, body bytes
        already read, bytes still to come on the connection)`` when the answer
        has a ``Content-Length`` body of at least ``minimum`` bytes still unread
        on a plain (not TLS) connection; else None.  Whoever takes it moves the
        rest off the socket; the connection is closed afterwards (never reused:
        the parser has not seen those bytes)."""
        msg = self._msg
        sock = self._sock
        if sock is None or msg.complete or self._cut or getattr(sock, "pending", None):
            return None
        lengths = [v for k, v in msg.headers if k.lower() == "content-length"]
        if len(lengths) != 1 or not lengths[0].strip().isdigit():
            return None
        if any(k.lower() == "transfer-encoding" for k, _ in msg.headers):
            return None
        early = b"".join(msg.body)
        left = int(lengths[0]) - len(early)
        if left < minimum:
            return None
        msg.body.clear()
        self._cut = True  # read by the taker: never back to the pool
        return sock, early, left

    def detach(self) -> tuple[socket.socket, bytes]:
        """After a ``101 Switching Protocols``: the connection and the bytes of
        the new protocol already read past the head.  The answer object is done."""
        sock, self._sock = self._sock, None
        if sock is None or self._msg.status != 101 or self._rest is None:
            raise ValueError("not a 101 answer with its connection")
        return sock, self._rest

    def __enter__(self) -> UpstreamResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- reading ----------------------------------------------------------------------
    def _begin(self) -> None:
        """Read until the final answer's head has been parsed."""
        msg = self._msg
        while not msg.headers_done:
            data = self._recv(MAX_HEAD)
            if not data:
                raise UpstreamProtocolError(
                    "the upstream closed the connection "
                    + ("in the middle of its answer" if self._received else "without answering")
                )
            self._feed(data)
            if not msg.headers_done and self._received > MAX_HEAD + 1024:
                raise UpstreamProtocolError("the answer's head is larger than 64 KiB")

    def _recv(self, n: int) -> bytes:
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(n)
        except OSError as exc:
            raise _wrap(exc, "reading the answer") from exc
        self._received += len(data)
        return data

    def _feed(self, data: bytes) -> None:
        msg = self._msg
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset: int = exc.args[0]
            self._rest = data[offset:]
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(
                cause, UpstreamError
            ):
                raise cause from None
            if msg.complete:
                msg.junk = True  # e.g. bytes after Connection: close
                return
            raise UpstreamProtocolError(f"the upstream's answer is not HTTP/1.1: {exc}") from None

    def _eof(self) -> None:
        msg = self._msg
        if msg.complete:
            return
        if msg.framed() or self._cut:
            raise UpstreamProtocolError(
                "the upstream closed the connection in the middle of a body"
            )
        msg.complete = True  # read until close: this was the end
        msg.keep_alive = False


# -- the pool --------------------------------------------------------------------------
class UpstreamPool:
    """Keep-alive connections to one upstream.  At most ``maxsize`` idle
    connections are kept; requests never wait for one (extra connections are
    opened, and closed when released into a full pool)."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        tls: ssl.SSLContext | None,
        server_hostname: str | None = None,
        connect_timeout: float,
        read_timeout: float,
        maxsize: int,
        legacy: bool = False,
    ) -> None:
        self.address = address
        # an old device's HTTP: read leniently, one connection per request
        self.legacy = legacy
        self.tls = tls
        self.server_hostname = server_hostname or address[0]
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.maxsize = maxsize
        self._idle: list[tuple[socket.socket, float]] = []  # (connection, idle since)
        self._closed = False
        # an address literal is connected to directly: no name lookup (which
        # gevent hands to a thread) for every new connection
        self._family: socket.AddressFamily | None = None
        try:
            ip = ipaddress.ip_address(address[0])
        except ValueError:
            pass
        else:
            self._family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def idle(self) -> int:
        """How many connections wait in the pool."""
        return len(self._idle)

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | Iterable[bytes] | None = None,
        *,
        chunked: bool = False,
    ) -> UpstreamResponse:
        """Send ``method target`` with ``headers`` exactly as given (plus
        ``Transfer-Encoding: chunked`` when ``chunked``; the caller writes
        ``Host`` and ``Content-Length``) and return the answer once its head is
        read.  An iterable body is sent piece by piece as it is read."""
        if chunked:
            headers = [*headers, ("Transfer-Encoding", "chunked")]
        # a body where the device may not expect one: this connection ends with it
        one_off = method in _BODY_UNEXPECTED and (chunked or bool(body))
        if self.legacy or one_off:
            headers = [*headers, ("Connection", "close")]
        head = encode_head(method, target, headers)
        # a request that may go twice: idempotent, with a body that can be resent
        retryable = method in IDEMPOTENT and (body is None or isinstance(body, bytes))
        sock, reused = self._checkout()
        while True:
            resp = UpstreamResponse(sock, method, self, legacy=self.legacy)
            if one_off:
                resp._msg.junk = True  # never back to the pool
            try:
                self._exchange(resp, sock, head, body, chunked)
                if resp.status == 101:
                    raise UpstreamProtocolError("101 Switching Protocols to a plain request")
                return resp
            except UpstreamError as exc:
                resp.close()
                if not reused or not retryable or resp._received or exc.kind == "timeout":
                    raise
                reused = False  # a stale keep-alive connection: once more, on a new one
                sock = self.connect_raw()
            except BaseException:
                resp.close()
                raise

    def upgrade(self, target: str, headers: Sequence[tuple[str, str]]) -> UpstreamResponse:
        """A ``GET`` asking to switch protocols (WebSocket), on a connection of
        its own.  On ``101`` take it over with :meth:`UpstreamResponse.detach`;
        any other answer is read and closed as usual."""
        head = encode_head("GET", target, headers)
        sock = self.connect_raw()
        resp = UpstreamResponse(sock, "GET", None, legacy=self.legacy)
        try:
            self._exchange(resp, sock, head, None, False)
            if resp.status == 101 and resp._rest is None:
                raise UpstreamProtocolError("101 Switching Protocols without an Upgrade header")
        except BaseException:
            resp.close()
            raise
        return resp

    def connect_raw(self) -> socket.socket:
        """A new connection (TLS verified when the upstream is https), with
        ``read_timeout`` as its socket timeout."""
        try:
            if self._family is None:
                sock = socket.create_connection(self.address, timeout=self.connect_timeout)
            else:
                sock = socket.socket(self._family, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self.connect_timeout)
                    sock.connect(self.address)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError as exc:
            raise UpstreamTimeout(f"connecting to {self._where()}: timed out") from exc
        except OSError as exc:
            detail = exc.strerror or str(exc)
            raise UpstreamConnectError(f"connecting to {self._where()}: {detail}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.server_hostname)
            sock.settimeout(self.read_timeout)
        except OSError as exc:
            sock.close()
            raise _wrap(exc, f"TLS handshake with {self._where()}") from exc
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        """Close the idle connections; those in use are closed when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for sock, _ in idle:
            sock.close()

    def _where(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _exchange(
        self,
        resp: UpstreamResponse,
        sock: socket.socket,
        head: bytes,
        body: bytes | Iterable[bytes] | None,
        chunked: bool,
    ) -> None:
        try:
            _send(sock, head, body, chunked)
        except UpstreamError as exc:
            if exc.kind == "timeout":
                raise
            # the upstream may have answered early (e.g. 413) and closed: read it
            try:
                resp._begin()
            except UpstreamError:
                raise exc from None
            resp._msg.junk = True  # the request was not sent whole: never reused
            return
        resp._begin()

    def _checkout(self) -> tuple[socket.socket, bool]:
        """An idle connection (newest first) or a new one; (connection, reused).
        Every idle connection is checked before it is used, however recently it
        was: bytes waiting on it (a second answer, a late body, a 408) are no
        answer to the next request, which would go to someone else."""
        idle = self._idle
        while idle:
            sock, _ = idle.pop()
            if self._usable(sock):
                return sock, True
            sock.close()
        return self.connect_raw(), False

    def _checkin(self, sock: socket.socket) -> None:
        """Back to the pool (bytes that turn up behind the answer, now or
        later, are found by the check at checkout: one look per reuse)."""
        if self._closed or self.legacy or len(self._idle) >= self.maxsize:
            sock.close()
        else:
            self._idle.append((sock, time.monotonic()))

    def _usable(self, sock: socket.socket) -> bool:
        """Whether an idle connection is still open and quiet: the upstream may
        have closed it (end of stream waiting) or sent something unasked.  One
        poll of the descriptor with no wait, on every reuse."""
        # TLS: a record already decrypted waits in the SSL object, not the socket
        # (asked of pools that wrap, never by getattr: gevent's socket makes a
        # missing attribute cost microseconds)
        if self.tls is not None and sock.pending():  # type: ignore[attr-defined]
            return False
        try:
            fd = sock.fileno()
            if fd < _SELECT_LIMIT:  # select is the cheaper call
                fds = (fd,)
                readable, _, failed = _select(fds, (), fds, 0)
                return not readable and not failed
            poller = _poll()  # no FD_SETSIZE limit
            poller.register(fd, _READABLE)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False
        return False
