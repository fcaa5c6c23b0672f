"""Access log: one JSON line per request, naming the person when the gateway knew
who it was.

The server that answered writes the line once the answer is complete (or its
connection failed): ``gateway.http_server`` (the gevent worker's own server
side) for every request, the ones it refuses itself included; under any other
server - gunicorn's own handler (TLS configured in gunicorn, the ``sync`` and
``gthread`` workers) - :class:`AccessLogMiddleware` writes it instead.  The app
tells either of them who the person was through the WSGI environ (:func:`note`,
the ``ssogw.*`` keys below).

Lines wait in a buffer and are written at most every ``FLUSH_INTERVAL`` seconds
(sooner once ``FLUSH_SIZE`` characters are waiting) by a flusher that runs in
each worker process, and at exit: no system call per request.  Every write
holds whole lines, at most ``PIPE_BUF`` bytes of them on a pipe, so worker
processes sharing one file or one pipe never tear each other's lines.  A write
that fails drops its lines (``dropped`` counts them) and says so once on
stderr; the request neither waits for the log nor fails because of it.

The values of the query parameters named in ``access_log.redact_query`` (an OIDC
callback's ``code``, SAML's ``SAMLResponse``, a dashboard's ``token``...) are
written as ``[redacted]``: see :class:`QueryRedactor`.
"""

from __future__ import annotations

import math
import os
import re
import select
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from json.encoder import encode_basestring_ascii as _quote  # a JSON string, ASCII only
from typing import Any, TextIO
from urllib.parse import unquote

from gateway.core.model import Identity
from gateway.files import open_destination
from gateway.flusher import ProcessFlusher

__all__ = [
    "CLIENT_IP",
    "TIER",
    "UPSTREAM",
    "USER",
    "WRITTEN_BY_SERVER",
    "AccessLog",
    "AccessLogMiddleware",
    "QueryRedactor",
    "note",
]

# environ keys the app sets once it has decided (all optional)
USER = "ssogw.user"  # the identity's subject
TIER = "ssogw.tier"  # the decision's tier
UPSTREAM = "ssogw.upstream"  # the upstream the request went to (reverse-proxy mode)
CLIENT_IP = "ssogw.client_ip"  # the client address the app judged (trusted X-Forwarded-For)
# set by a server that writes the access log itself: the middleware stands aside
WRITTEN_BY_SERVER = "ssogw.access_log"

TARGET_LIMIT = 1024  # characters of the request target kept
AGENT_LIMIT = 256  # characters of the User-Agent kept
CUT = "\u2026"  # ends a value that was cut at its limit
REDACTED = "[redacted]"  # the logged value of a parameter named in redact_query
FLUSH_INTERVAL = 0.5
FLUSH_SIZE = 64 * 1024
_FILE_CHUNK = 1024 * 1024  # one write to a regular file (O_APPEND keeps it whole)


def note(
    environ: dict[str, Any],
    identity: Identity | None,
    tier: str | None,
    client_ip: str | None,
    upstream: str | None = None,
) -> None:
    """Tell the access log whom the app decided about (the app, after deciding)."""
    environ[USER] = identity.subject if identity is not None else None
    environ[TIER] = tier
    environ[UPSTREAM] = upstream
    environ[CLIENT_IP] = client_ip


class AccessLog:
    """Writes access log lines to ``destination`` (``stdout``, ``stderr`` or a
    file path) or to ``stream``."""

    def __init__(
        self,
        destination: str = "stdout",
        *,
        stream: TextIO | None = None,
        interval: float = FLUSH_INTERVAL,
        size: int = FLUSH_SIZE,
        redact_query: Iterable[str] = (),
    ) -> None:
        """``redact_query``: the query parameters whose values are written as
        ``[redacted]`` (the factory passes ``access_log.redact_query``, whose
        default names the secrets; none here)."""
        owned = False
        if stream is None:
            stream, owned = open_destination(destination)
        self._stream = stream
        self._owned = owned
        self._chunk = _atomic_write_size(stream)
        self.interval = interval
        self.size = size
        self.dropped = 0  # lines lost to failed writes (or written after close)
        self._lines: list[str] = []
        self._pending = 0  # characters in _lines
        self._lock = threading.Lock()  # the buffer
        self._write_lock = threading.Lock()  # the stream: one flush at a time, in order
        self._flusher = ProcessFlusher(self.flush, interval, "access-log")
        self._closed = False
        self._complained = False
        self._stamp = (-1, "")  # (second, its ISO 8601 text)
        names = (redact_query,) if isinstance(redact_query, str) else tuple(redact_query)
        self._redactor = QueryRedactor(names) if any(names) else None

    # -- lines -----------------------------------------------------------------------
    def answered(self, environ: Mapping[str, Any], status: int, sent: int, started: float) -> None:
        """A request that reached the app: ``status`` as answered (0: no answer
        was begun), ``sent`` body bytes, ``started`` its ``time.perf_counter()``."""
        duration = max(time.perf_counter() - started, 0.0)
        self._add(
            {
                "time": self._time(time.time() - duration),
                "remote_addr": environ.get("REMOTE_ADDR") or "",
                "client_ip": environ.get(CLIENT_IP),
                "method": environ.get("REQUEST_METHOD"),
                "target": _cut(_as_sent(_target(environ, self._redactor)), TARGET_LIMIT),
                "protocol": environ.get("SERVER_PROTOCOL"),
                "status": status,
                "bytes": sent,
                "duration_ms": round(duration * 1000, 3),
                "user_agent": _agent(environ.get("HTTP_USER_AGENT")),
                "user": environ.get(USER),
                "tier": environ.get(TIER),
                "upstream": environ.get(UPSTREAM),
            }
        )

    def refused(
        self,
        remote_addr: str,
        status: int,
        sent: int,
        reason: str,
        *,
        method: str | None = None,
        target: bytes | None = None,
        protocol: str | None = None,
        user_agent: bytes | None = None,
        started: float | None = None,
    ) -> None:
        """A request the server refused itself, with what it had read of it."""
        now = time.time()
        duration = None
        if started is not None:
            duration = max(time.perf_counter() - started, 0.0)
            now -= duration
        self._add(
            {
                "time": self._time(now),
                "remote_addr": remote_addr,
                "method": method or None,
                "target": _cut(self._refused_target(target), TARGET_LIMIT) if target else None,
                "protocol": protocol or None,
                "status": status,
                "bytes": sent,
                "duration_ms": round(duration * 1000, 3) if duration is not None else None,
                "user_agent": _agent(_decode(user_agent)) if user_agent is not None else None,
                "refused": reason,
            }
        )

    def _refused_target(self, target: bytes) -> str:
        """The bytes of a target the server read, redacted, as sent."""
        if self._redactor is None or b"?" not in target:
            return _decode(target)
        return _as_sent(self._redactor.target(target.decode("latin-1")))

    def _time(self, when: float) -> str:
        second = int(when)
        stamp = self._stamp  # one tuple: threads never see a second with another's text
        if stamp[0] != second:
            stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._stamp = stamp
        return f"{stamp[1]}.{int((when - second) * 1000):03d}Z"

    # -- buffer ----------------------------------------------------------------------
    def _add(self, record: dict[str, Any]) -> None:
        line = _line(record)
        with self._lock:
            if self._closed:
                self.dropped += 1
                return
            self._lines.append(line)
            self._pending += len(line)
            full = self._pending >= self.size
        if full:
            self.flush()
        self._flusher.ensure()  # this process's (gateway.flusher)

    def flush(self) -> None:
        """Write every waiting line now."""
        with self._write_lock:
            with self._lock:
                lines, self._lines, self._pending = self._lines, [], 0
            if not lines:
                return
            chunk: list[str] = []
            size = 0
            for line in lines:
                if chunk and size + len(line) > self._chunk:
                    self._write(chunk)
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            self._write(chunk)

    def _write(self, lines: list[str]) -> None:
        try:
            self._stream.write("".join(lines))
            self._stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            self.dropped += len(lines)
            if not self._complained:
                self._complained = True
                _complain(f"sso-gateway: the access log cannot be written, lines are lost: {exc}")

    def close(self) -> None:
        """Write what is waiting and stop (at worker exit); later lines are dropped."""
        self.flush()
        with self._lock:
            self._closed = True
        self._flusher.stop()
        self.flush()  # a line added between the first flush and the close
        if self._owned:
            try:
                self._stream.close()
            except OSError as exc:
                _complain(f"sso-gateway: closing the access log failed: {exc}")


class AccessLogMiddleware:
    """WSGI middleware writing the access log for a server that does not write it
    itself (gunicorn's own handler); requests a server marks with
    ``WRITTEN_BY_SERVER`` pass straight through."""

    def __init__(self, app: Callable[..., Any], log: AccessLog) -> None:
        self.app = app
        self.log = log

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if WRITTEN_BY_SERVER in environ:
            return self.app(environ, start_response)
        answer = _Answer(self.log, environ, start_response)
        try:
            result = self.app(environ, answer.start_response)
        except BaseException:
            answer.status = 500  # what the server answers for an app that failed
            answer.done()
            raise
        if getattr(result, "connection_taken_over", False):
            answer.status = 101  # a relayed WebSocket, over now; the server closes it
            answer.done()
            return result  # as it is: the worker recognises it
        return _Body(result, answer)


class _Answer:
    """What the middleware saw of one answer."""

    def __init__(self, log: AccessLog, environ: dict[str, Any], start_response: Any) -> None:
        self.log = log
        self.environ = environ
        self.start = start_response
        self.started = time.perf_counter()
        self.status = 0
        self.sent = 0
        self.counted = environ.get("REQUEST_METHOD") != "HEAD"
        self.logged = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        write = self.start(status, headers, exc_info)
        code = int(status[:3]) if status[:3].isdigit() else 0
        self.status = code
        self.counted = self.environ.get("REQUEST_METHOD") != "HEAD" and not (
            code < 200 or code in (204, 304)
        )

        def counted_write(data: bytes) -> None:
            write(data)
            if self.counted:
                self.sent += len(data)

        return counted_write

    def done(self) -> None:
        if not self.logged:
            self.logged = True
            self.log.answered(self.environ, self.status, self.sent, self.started)


class _Body:
    """The app's answer body, counted as the server takes it; logged on ``close``."""

    def __init__(self, result: Iterable[bytes], answer: _Answer) -> None:
        self.result = result
        self.answer = answer

    def __iter__(self) -> Iterator[bytes]:
        answer = self.answer
        for data in self.result:
            if answer.counted:
                answer.sent += len(data)
            yield data

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.answer.done()


def _line(record: dict[str, Any]) -> str:
    """``record`` as one JSON object and a newline, keys without a value left out.
    ASCII only: control characters, bidi overrides and the like arrive escaped,
    whatever a client put into its target or User-Agent.  (Put together here
    rather than by json.dumps, which costs twice as much per line.)"""
    parts = []
    for key, value in record.items():
        if value is None:
            continue
        kind = type(value)
        if kind is str:
            text = _quote(value)
        elif kind is int or (kind is float and math.isfinite(value)):
            text = repr(value)
        else:  # an app's own value of another type: as text
            text = _quote(str(value))
        parts.append(f'"{key}":{text}')
    return "{" + ",".join(parts) + "}\n"


def _target(environ: Mapping[str, Any], redactor: QueryRedactor | None) -> str:
    """The request target as received (a WSGI string), its query redacted."""
    raw = environ.get("RAW_URI")
    if isinstance(raw, str):
        return raw if redactor is None else redactor.target(raw)
    path = str(environ.get("PATH_INFO") or "")
    query = environ.get("QUERY_STRING")
    if not query:
        return path
    # the query on its own: a decoded PATH_INFO may hold a "?" of its own (%3F)
    query = str(query)
    return f"{path}?{redactor.query(query) if redactor is not None else query}"


class QueryRedactor:
    """Writes the values of the named query parameters as ``[redacted]``,
    keeping every name, separator and the parameters' order.

    A name matches whatever its case (ASCII) and percent-encoding
    (``%63ode=`` is ``code=``), as an application reads it; every occurrence of a
    repeated one is redacted, and an empty value (``code=``) stays empty, as
    there is nothing in it.  Parameters are separated by ``&``, and by ``;`` too
    (as some frameworks still read them): a named parameter's value is written
    as the marker up to the next ``&``, so neither reading of the query can
    leave a piece of it in the line (``token=a;b`` and ``x=1;token=a;b`` both
    lose ``a;b``).  A parameter without ``=`` has no value to hide.

    Per request the common case costs one precompiled regular expression
    search over the query (no match: the query as it is); the query is only
    taken apart when a named parameter, or a name with a ``%`` in it, is there.
    """

    __slots__ = ("_screen", "names")

    def __init__(self, names: Iterable[str]) -> None:
        # ASCII names (access_log.redact_query is checked to be): matched lower-case
        self.names = frozenset(name.lower() for name in names if name)
        # a parameter that may be named: after the "?" or a separator, one of the
        # names (its first character checked first) or a name with a "%" in it,
        # then "=".  Searched from the target's "?" on, no copy made ("?" in a
        # query's value only makes the search say yes where the closer look finds
        # nothing); "[^&;=%]*%" cannot backtrack past a "%": linear in the query.
        named = ""
        if self.names:
            first = "".join(sorted({re.escape(name[0]) for name in self.names}))
            longest_first = sorted(self.names, key=len, reverse=True)
            named = f"(?=[{first}])(?:{'|'.join(map(re.escape, longest_first))})|"
        self._screen = re.compile(rf"[?&;](?:{named}[^&;=%]*%[^&;=]*)=", re.IGNORECASE | re.ASCII)

    def target(self, target: str) -> str:
        """``target`` (a WSGI string: bytes as latin-1) with its query redacted;
        ``target`` itself when it has no query or nothing in it is named."""
        at = target.find("?")
        if at < 0 or self._screen.search(target, at) is None:
            return target
        return target[: at + 1] + self._redact(target[at + 1 :])

    def query(self, query: str) -> str:
        """A query string (without its ``?``) redacted; ``query`` itself when
        nothing in it is named."""
        if self._screen.search("?" + query) is None:
            return query
        return self._redact(query)

    def _redact(self, query: str) -> str:
        pieces = query.split("&")
        for index, piece in enumerate(pieces):
            pieces[index] = self._piece(piece)
        return "&".join(pieces)

    def _piece(self, piece: str) -> str:
        """One ``&``-separated parameter, looked at in its ``;``-separated parts."""
        start, end = 0, len(piece)
        while True:
            semicolon = piece.find(";", start)
            stop = end if semicolon < 0 else semicolon
            equals = piece.find("=", start, stop)
            if equals >= 0 and equals + 1 < end and self._named(piece[start:equals]):
                return piece[: equals + 1] + REDACTED
            if semicolon < 0:
                return piece
            start = semicolon + 1

    def _named(self, name: str) -> bool:
        if "%" in name:
            name = unquote(name, encoding="latin-1")  # every byte a character, never fails
        return name.isascii() and name.lower() in self.names


def _as_sent(text: str) -> str:
    """A WSGI string (bytes as latin-1) as the client's bytes read as UTF-8;
    bytes that are not UTF-8 are shown as ``\\xNN``."""
    if text.isascii():
        return text
    return _decode(text.encode("latin-1", "replace"))


def _decode(data: bytes | None) -> str:
    return data.decode("utf-8", "backslashreplace") if data else ""


def _agent(value: Any) -> str | None:
    if not value:
        return None
    return _cut(_as_sent(str(value)), AGENT_LIMIT)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + CUT


def _atomic_write_size(stream: TextIO) -> int:
    """How much one write may hold: a write of at most PIPE_BUF bytes to a pipe
    (a container's stdout) is never interleaved with another process's; a
    regular file opened for appending keeps any single write whole."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return _FILE_CHUNK  # an in-memory stream
    return _FILE_CHUNK if stat.S_ISREG(mode) else select.PIPE_BUF


def _complain(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
