"""Hypothesis fuzz of gateway.http_server with hostile request bytes: whatever
arrives, the server answers with a well-formed status line or closes, and what
reaches the app is clean - header keys WSGI-shaped (never a name with "_"),
no CR, LF or NUL in any value, a known method, a path that starts with "/"."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.http_server import ConnectionServer

METHODS = st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "FROB", "get", ""])
TARGETS = st.one_of(
    st.sampled_from(["/", "/console", "*", "http://x/a", "/a b", "//x", "/%2e%2e/admin", ""]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40),
)
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "http/1.1", ""])
NAMES = st.one_of(
    st.sampled_from(
        [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "X-Auth-Request-User",
            "X_Auth_Request_User",
            "Expect",
            "Connection",
            "Upgrade",
            "Host ",
            " Host",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), min_size=1, max_size=12),
)
VALUES = st.one_of(
    st.sampled_from(["chunked", "0", "5", "-1", "100-continue", "close", "websocket", "a\r\nb"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=20),
)
EOLS = st.sampled_from(["\r\n", "\n", "\r"])
BODIES = st.sampled_from(["", "hello", "5\r\nhello\r\n0\r\n\r\n", "0\r\n\r\n", "zz\r\n"])
SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"

_TOKEN = re.compile(r"[A-Z]+\Z")
_STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] [^\r\n]*\r\n")


class _Recorder:
    def __init__(self) -> None:
        self.environs: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read()
        with self.lock:
            self.environs.append(dict(environ))
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[int, _Recorder]]:
    recorder = _Recorder()
    server = ConnectionServer(
        recorder, server_name="127.0.0.1", server_port="0", keepalive=0.5, alive=lambda: True
    )
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                conn, addr = listener.accept()
            except OSError:
                return
            threading.Thread(target=server.serve, args=(conn, addr), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1], recorder
    listener.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=METHODS,
    target=TARGETS,
    version=VERSIONS,
    headers=st.lists(st.tuples(NAMES, VALUES), max_size=6),
    eol=EOLS,
    body=BODIES,
    smuggle=st.booleans(),
)
def test_hostile_requests_never_reach_the_app_unclean(
    served: tuple[int, _Recorder],
    method: str,
    target: str,
    version: str,
    headers: list[tuple[str, str]],
    eol: str,
    body: str,
    smuggle: bool,
) -> None:
    port, recorder = served
    raw = f"{method} {target} {version}{eol}" + "".join(f"{n}: {v}{eol}" for n, v in headers)
    raw += eol + body + (SMUGGLED if smuggle else "")
    before = len(recorder.environs)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw.encode("latin-1"))
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    if answer:
        assert _STATUS_LINE.match(answer), answer[:80]
    with recorder.lock:
        seen = recorder.environs[before:]
    for environ in seen:
        assert _TOKEN.match(environ["REQUEST_METHOD"])
        assert environ["PATH_INFO"].startswith("/") or environ["PATH_INFO"] == "*"
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                assert re.fullmatch(r"HTTP_[A-Z0-9_!#$%&'*+.^`|~]+", key), key
            if isinstance(value, str) and key not in ("PATH_INFO",):
                assert not re.search(r"[\r\n\0]", value), (key, value)
        if not any(n.upper() == "X-AUTH-REQUEST-USER" for n, _ in headers):
            # only the dash spelling may become this key, never X_Auth_Request_User
            assert "HTTP_X_AUTH_REQUEST_USER" not in environ
