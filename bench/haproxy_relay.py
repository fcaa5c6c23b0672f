"""HAProxy as a plain HTTP reverse proxy with splice(2): the established C
implementation of "relay a long body from one socket to another", the
reference for the 1 GB download of ``bench/proxy_streams.py``.

:class:`HaproxyRelay` writes a self-contained configuration in its own folder
(HTTP mode, ``option splice-auto``, 256 KiB buffers, no authentication: it only
moves bytes), runs ``haproxy -db`` in the foreground on a loopback port and
stops it by PID.  Debian package ``haproxy``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from tests.peers import launch, stop_process, tail

CONF = """\
# written by bench/haproxy_relay.py
global
    maxconn 1000
    tune.bufsize 262144

defaults
    mode http
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend relay
    bind 127.0.0.1:{port}
    default_backend upstream

backend upstream
    server upstream {upstream}
"""


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


class HaproxyRelay:
    def __init__(self, directory: Path, *, port: int, upstream: str) -> None:
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError("haproxy is not installed")
        self.binary = binary
        self.directory = directory
        self.port = port
        self.upstream = upstream
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "haproxy.cfg"
        conf.write_text(CONF.format(port=self.port, upstream=self.upstream), encoding="utf-8")
        log_path = self.directory / "haproxy.log"
        self._process = launch(
            [self.binary, "-db", "-f", str(conf)], log_path, self._listening, timeout
        )
        if self._process is None:
            raise RuntimeError(f"haproxy did not start:\n{tail(log_path)}")

    def _listening(self) -> bool:
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        return True

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)
