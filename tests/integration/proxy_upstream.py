"""The dashboard behind the gateway in proxy mode: a small threaded HTTP/1.1
server written for the tests.  What it does depends on the last path segment:

* ``.../chunked``   three chunks, the second only after ``release`` is set;
* ``.../mjpeg``     a ``multipart/x-mixed-replace`` stream of two JPEG-ish parts,
  the second only after ``release`` is set;
* ``.../sse``       Server-Sent Events (``text/event-stream``, chunked): two door
  events, the second only after ``release`` is set;
* ``.../download``  ``?size=N`` bytes streamed from memory with a Content-Length;
* ``.../upload``    reads the body (Content-Length or chunked) and answers with
  how many bytes arrived;
* ``.../redirect``  302 to this server's own absolute ``/base/login`` URL;
* ``.../setcookie`` sets a cookie of its own, ones named like the gateway's and
  name-less ones whose value names them (a browser's cookie of an empty name);
* ``.../answer``    answers ``?status=N`` (default 200) with every other query
  parameter as a header of that name (``?Location=/x&status=302``);
* ``.../slow``      waits 3 s before answering (longer than the read timeout);
* anything else     200 with the request line and headers as JSON.

``TRACE`` and ``TRACK`` are answered as old embedded web servers do: ``200``,
``message/http``, the request head echoed back (credentials included), for any
path and before any login check.

Every request's line and headers are remembered (``seen``).  With a
:class:`DeviceLogin` every request must first pass HTTP Basic or Digest, as on a
door controller with one local admin account.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import ssl
import threading
import time
from base64 import b64encode
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.integration.conftest import RecordingUpstream, SeenRequest

STALLED_SIZE = 64 * 1024 * 1024  # /stalled: Content-Length of a download that stalls
BLOCK = b"\xa5" * (256 * 1024)


class DeviceLogin:
    """The one local admin account of a device, checked as the device would:
    HTTP Basic, or Digest with qop=auth (RFC 7616), fresh nonces, and a nonce
    count that must grow per nonce (a replayed header is refused)."""

    def __init__(
        self, scheme: str, username: str, password: str, algorithm: str = "SHA-256"
    ) -> None:
        self.scheme = scheme
        self.username = username
        self.password = password
        self.algorithm = algorithm
        self.realm = "door-controller"
        self.nonces: dict[str, int] = {}  # live nonce -> highest nc seen
        self.challenges = 0  # 401s sent
        self.lock = threading.Lock()

    def _hash(self, text: str) -> str:
        name = {"MD5": "md5", "SHA-256": "sha256"}[self.algorithm]
        return hashlib.new(name, text.encode()).hexdigest()

    def expire_nonces(self) -> None:
        with self.lock:
            self.nonces.clear()

    def challenge(self, stale: bool = False) -> str:
        with self.lock:
            self.challenges += 1
            if self.scheme == "basic":
                return f'Basic realm="{self.realm}"'
            nonce = secrets.token_hex(16)
            self.nonces[nonce] = 0
        return (
            f'Digest realm="{self.realm}", qop="auth", algorithm={self.algorithm}, '
            f'nonce="{nonce}", opaque="0a1b2c"' + (", stale=true" if stale else "")
        )

    def check(self, method: str, uri: str, header: str | None) -> tuple[bool, bool]:
        """(accepted, stale)."""
        if not header:
            return False, False
        if self.scheme == "basic":
            expected = b64encode(f"{self.username}:{self.password}".encode()).decode()
            return header == f"Basic {expected}", False
        if not header.lower().startswith("digest "):
            return False, False
        fields = {
            k.strip().lower(): v.strip().strip('"')
            for k, _, v in (p.partition("=") for p in header[7:].split(","))
        }
        nonce, nc = fields.get("nonce", ""), int(fields.get("nc", "0"), 16)
        with self.lock:
            if nonce not in self.nonces:
                return False, True
            if nc <= self.nonces[nonce] or fields.get("uri") != uri:
                return False, False
            ha1 = self._hash(f"{self.username}:{self.realm}:{self.password}")
            ha2 = self._hash(f"{method}:{uri}")
            expected = self._hash(
                f"{ha1}:{nonce}:{fields.get('nc')}:{fields.get('cnonce')}:auth:{ha2}"
            )
            ok = fields.get("username") == self.username and fields.get("response") == expected
            if ok:
                self.nonces[nonce] = nc
        return ok, False


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None, login: DeviceLogin | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.login = login
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.seen: list[SeenRequest] = []
        self.uploads: list[tuple[str, int]] = []  # (path, bytes) of bodies read whole
        self.lock = threading.Lock()
        self.release = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _send(
        self, status: int, body: bytes, ctype: str = "application/json", **extra: str
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> int:
        total = 0
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                line = self.rfile.readline().split(b";")[0].strip()
                try:
                    size = int(line, 16)
                except ValueError:
                    raise OSError(f"malformed chunk size {line!r}") from None
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                left = size
                while left:
                    got = len(self.rfile.read(min(left, 1 << 20)))
                    if not got:
                        raise OSError("short chunk")
                    left -= got
                total += size
                self.rfile.readline()
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            got = len(self.rfile.read(min(left, 1 << 20)))
            if not got:
                raise OSError("short body")
            left -= got
            total += got
        return total

    def _answer(self) -> None:
        seen = SeenRequest(self.command, self.path, tuple(self.headers.items()))
        with self.server.lock:
            self.server.seen.append(seen)
        url = urlsplit(self.path)
        last = url.path.rstrip("/").rsplit("/", 1)[-1]
        login = self.server.login
        if login is not None:
            accepted, stale = login.check(
                self.command, self.path, self.headers.get("Authorization")
            )
            if not accepted:
                self._read_body()
                self._send(401, b"{}", WWW_Authenticate=login.challenge(stale))
                return
        if last == "upload":
            count = self._read_body()
            with self.server.lock:
                self.server.uploads.append((url.path, count))
            self._send(200, json.dumps({"received": count}).encode())
            return
        self._read_body()
        if last == "chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i, part in enumerate((b"first;", b"second;", b"third")):
                if i == 1:
                    self.server.release.wait(10)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif last == "sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(2):
                if i == 1:
                    self.server.release.wait(10)
                event = b"event: door\ndata: door-%d opened\n\n" % i
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif last == "mjpeg":
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(2):
                if i == 1:
                    self.server.release.wait(10)
                frame = b"\xff\xd8frame-%d\xff\xd9" % i
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                    % (len(frame), frame)
                )
                self.wfile.flush()
            self.close_connection = True
        elif last == "download":
            size = int(parse_qs(url.query).get("size", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            left = size
            while left:
                piece = BLOCK[: min(left, len(BLOCK))]
                self.wfile.write(piece)
                left -= len(piece)
        elif last == "stalled":  # a long download whose upstream stops half-way
            size = STALLED_SIZE
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            sent = 0
            try:
                while sent < size:
                    if sent == 4 * 1024 * 1024:
                        self.server.release.wait(10)
                    piece = BLOCK[: min(size - sent, len(BLOCK))]
                    self.wfile.write(piece)
                    sent += len(piece)
            except OSError:
                self.close_connection = True  # the gateway cut it
        elif last == "redirect":
            port = self.server.server_address[1]
            self._send(302, b"", "text/plain", Location=f"http://127.0.0.1:{port}/base/login?x=1")
        elif last == "setcookie":
            self.send_response(200)
            self.send_header("Set-Cookie", "JSESSIONID=device-session; Path=/")
            self.send_header("Set-Cookie", "sso_gw=planted-by-upstream; Path=/")
            self.send_header("Set-Cookie", "sso_gw_csrf=planted; Path=/")
            self.send_header("Set-Cookie", "=sso_gw=planted-nameless; Path=/")
            self.send_header("Set-Cookie", "sso_gw; Path=/")
            self.send_header("Set-Cookie", "=__Host-sso_gw=planted; Path=/; Secure")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif last == "answer":
            params = parse_qs(url.query)
            status = int(params.pop("status", ["200"])[0])
            self.send_response(status)
            for name, values in params.items():
                for value in values:
                    self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif last == "range":
            self._range()
        elif last == "slow":
            time.sleep(3)
            self._send(200, b"{}")
        else:
            payload = json.dumps(seen.as_json()).encode()
            self._send(200, payload, Connection="X-Upstream-Private", X_Upstream_Private="x")

    def _range(self) -> None:
        data = bytes(range(256)) * 4
        wanted = self.headers.get("Range") or ""
        if wanted.startswith("bytes=") and "-" in wanted:
            first, _, last = wanted[6:].partition("-")
            start, end = int(first), min(int(last or len(data) - 1), len(data) - 1)
            part = data[start : end + 1]
            self._send(206, part, "application/octet-stream",
                       Content_Range=f"bytes {start}-{end}/{len(data)}")  # fmt: skip
        else:
            self._send(200, data, "application/octet-stream", Accept_Ranges="bytes")

    def _echo(self) -> None:
        """TRACE (and TRACK): the request head back as the body."""
        seen = SeenRequest(self.command, self.path, tuple(self.headers.items()))
        with self.server.lock:
            self.server.seen.append(seen)
        head = f"{self.requestline}\r\n{self.headers}".encode("latin-1")
        self._send(200, head, "message/http")

    def handle(self) -> None:
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError):
            return  # a refused TLS client: nothing to answer
        except OSError:
            return  # a request cut short (its body never ended): nothing to answer

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer
    do_TRACE = do_TRACK = _echo

    def log_message(self, format: str, *args: Any) -> None:
        return


class ProxyUpstream(RecordingUpstream):
    def __init__(self, tls: ssl.SSLContext | None = None, login: DeviceLogin | None = None) -> None:
        super().__init__(_Server(tls, login))

    @property
    def url(self) -> str:
        scheme = "https" if isinstance(self._server.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def release(self) -> threading.Event:
        release: threading.Event = self._server.release
        return release

    @property
    def uploads(self) -> list[tuple[str, int]]:
        """(path, bytes) of every ``.../upload`` body the upstream read whole."""
        with self._server.lock:
            return list(self._server.uploads)

    def reset(self) -> None:
        super().reset()
        self._server.release.clear()
        with self._server.lock:
            self._server.uploads.clear()

    def stop(self) -> None:
        self._server.release.set()  # no handler left waiting for it
        super().stop()


class WebSocketUpstream:
    """An intercom event console's WebSocket endpoint (the ``websockets``
    library's threaded server): it first sends, as JSON, the path and headers
    of the handshake it received, then echoes every message back."""

    def __init__(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.server import ServerConnection, serve

        def handler(connection: ServerConnection) -> None:
            request = connection.request
            assert request is not None
            connection.send(
                json.dumps({"path": request.path, "headers": list(request.headers.raw_items())})
            )
            try:
                for message in connection:
                    connection.send(message)
            except ConnectionClosed:
                return  # the gateway cut the connection (session ended)

        self._server = serve(handler, "127.0.0.1", 0)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        port: int = self._server.socket.getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)
