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
"""

from __future__ import annotations

import math
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from json.encoder import encode_basestring_ascii as _quote  # a JSON string, ASCII only
from typing import Any, TextIO

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
    ) -> None:
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
                "target": _cut(_as_sent(_target(environ)), TARGET_LIMIT),
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
                "target": _cut(_decode(target), TARGET_LIMIT) if target else None,
                "protocol": protocol or None,
                "status": status,
                "bytes": sent,
                "duration_ms": round(duration * 1000, 3) if duration is not None else None,
                "user_agent": _agent(_decode(user_agent)) if user_agent is not None else None,
                "refused": reason,
            }
        )

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


def _target(environ: Mapping[str, Any]) -> str:
    raw = environ.get("RAW_URI")
    if isinstance(raw, str):
        return raw
    path = str(environ.get("PATH_INFO") or "")
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path


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
