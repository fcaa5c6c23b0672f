"""Real protocol peers for the tests, started on loopback ports the test picks.

Each peer runs as a child process of the test run, in its own temporary
directory, and is stopped by its PID.  Nothing here touches services the machine
already runs (e.g. a system Redis on 6379).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import pytest
import redis

_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env() -> dict[str, str]:
    """The environment for a child server: ours minus any SSO_GATEWAY overrides
    (the child's config file must be the whole truth), unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SSO_GATEWAY")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM to the PID, wait; SIGKILL to its process group if it does not exit
    (servers are started as session leaders)."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=timeout)


def tail(path: Path, size: int = 3000) -> str:
    """The end of a log file, for error messages."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-size:]
    except OSError:
        return "(no log)"


def require_binary(name: str, reason: str) -> str:
    """The path of executable ``name``; otherwise skip the test with ``reason``
    (or fail it when running under CI, where every peer must be installed)."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN])
    path = shutil.which(name, path=search)
    if path is not None:
        return path
    message = f"{name} is not installed: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class RedisServer:
    """A private ``redis-server`` without persistence.

    ``start()`` launches it (and waits for PING), ``stop()`` ends it by PID,
    ``start()`` again brings it back on the same port for outage tests.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int | None = None,
        password: str | None = None,
        args: Sequence[str] = (),
    ) -> None:
        """``password`` sets ``requirepass`` (and is used for our own PINGs);
        ``args`` are more ``redis-server`` options (e.g. ``--replicaof``)."""
        self.binary = binary or require_binary("redis-server", "needed for the Redis tests")
        self.password = password
        self.args = tuple(args)
        self.port = port if port is not None else free_port()
        self._port_fixed = port is not None
        self.directory = Path(tempfile.mkdtemp(prefix="ssogw-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (no-op when running) and wait until it answers PING."""
        if self.running:
            return
        for _ in range(3):
            self._launch()
            if self._wait_ready(timeout):
                self._port_fixed = True  # restarts must come back on the same port
                return
            self.stop()
            if self._port_fixed:
                break
            self.port = free_port()  # lost a race for the port: try another one
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self._log_tail()}")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it accepts connections but never answers."""
        if self._process is not None and self.running:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        if self._process is not None and self.running:
            os.kill(self._process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Terminate the server by its PID and wait for it to exit."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def flush(self) -> None:
        """Delete every key."""
        reply = self._command(b"FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------
    def _launch(self) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password]
        args += self.args
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            try:
                if self._command(b"PING") == b"+PONG":
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def _command(self, command: bytes) -> bytes:
        """Send one inline command and return the first line of the reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            if self.password is not None:
                sock.sendall(b"AUTH " + self.password.encode() + b"\r\n")
                if _read_line(sock) != b"+OK":
                    return b"-AUTH failed"
            sock.sendall(command + b"\r\n")
            return _read_line(sock)

    def _log_tail(self) -> str:
        try:
            return (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def _read_line(sock: socket.socket) -> bytes:
    """One reply line (RESP simple answers), without its CRLF."""
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        reply += chunk
    return reply.strip()


class SentinelServer:
    """A private Redis Sentinel (``redis-server CONF --sentinel``) watching one
    master, with its config file (which Sentinel rewrites) in a temp directory.

    Short timings so failovers happen within seconds: the master counts as down
    after ``down_after_ms`` without an answer; one sentinel is a quorum.
    """

    def __init__(
        self,
        master: RedisServer,
        *,
        name: str = "ssogw-master",
        password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 4000,
    ) -> None:
        self.binary = master.binary
        self.master = master
        self.name = name
        self.password = password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="ssogw-sentinel-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        for _ in range(3):
            self._launch()
            if self._wait_ready(timeout):
                return
            self.stop()
            self.port = free_port()
        raise RuntimeError(f"redis sentinel did not start on {self.port}:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process, timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self) -> str:
        return tail(self.directory / "sentinel.log", 3000)

    def _launch(self) -> None:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "daemonize no",
            f"dir {self.directory}",
            f"logfile {self.directory / 'sentinel.log'}",
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1",
            f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}",
            f"sentinel failover-timeout {self.name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.name} 1",
        ]
        if self.master.password is not None:
            lines.append(f"sentinel auth-pass {self.name} {self.master.password}")
        if self.password is not None:
            lines.append(f"requirepass {self.password}")
        conf = self.directory / "sentinel.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._process = subprocess.Popen(
            [self.binary, str(conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    if self.password is not None:
                        sock.sendall(b"AUTH " + self.password.encode() + b"\r\n")
                        _read_line(sock)
                    sock.sendall(b"PING\r\n")
                    if _read_line(sock) == b"+PONG":
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False


def launch(
    args: Sequence[str],
    log_path: Path,
    ready: Callable[[], bool],
    timeout: float,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes] | None:
    """Start a server as a session leader, its output appended to ``log_path``,
    and poll ``ready`` (OS errors count as "not yet") until it holds; the
    process, or None - stopped - when it exited or ``timeout`` ran out."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(args),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if ready():
                return process
        except OSError:
            pass
        time.sleep(0.05)
    stop_process(process)
    return None


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds (Redis and OS errors count as "not yet")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class SentinelGroup:
    """A Redis master and one replica (both with ``requirepass``) and a sentinel
    (with its own ``requirepass``) watching them: the smallest real Sentinel
    setup.  ``start()`` returns once the replica is in sync and the sentinel
    knows it, so a failover can promote it."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        name: str = "ssogw-master",
        password: str = "data-node-pw-7f3a",  # noqa: S107 - a throwaway test server
        sentinel_password: str = "sentinel-pw-91c2",  # noqa: S107
    ) -> None:
        self.binary = binary or require_binary("redis-server", "the Sentinel tests need Redis")
        self.name = name
        self.password = password
        self.sentinel_password = sentinel_password
        # no 5 s wait before the first (diskless) sync of the replica
        self.master = RedisServer(
            self.binary, password=password, args=["--repl-diskless-sync-delay", "0"]
        )
        self.replica: RedisServer | None = None
        self.sentinel: SentinelServer | None = None

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        assert self.sentinel is not None
        return [("127.0.0.1", self.sentinel.port)]

    def start(self) -> None:
        try:
            self.master.start()
            self.replica = RedisServer(
                self.binary,
                password=self.password,
                args=["--replicaof", "127.0.0.1", str(self.master.port),
                      "--masterauth", self.password],
            )  # fmt: skip
            self.replica.start()
            with self.admin(self.replica) as replica:
                wait_for(
                    lambda: replica.info("replication")["master_link_status"] == "up",
                    10,
                    "the replica to sync",
                )
            self.sentinel = SentinelServer(
                self.master, name=self.name, password=self.sentinel_password
            )
            self.sentinel.start()
            wait_for(self._replica_known, 15, "the sentinel to see the replica")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for part in (self.sentinel, self.replica, self.master):
            if part is not None:
                part.close()

    def admin(self, server: RedisServer) -> redis.Redis:
        """A plain client to one of the servers (not through the sentinel)."""
        return redis.Redis(port=server.port, password=self.password, socket_timeout=2)

    def sentinel_client(self) -> redis.Redis:
        assert self.sentinel is not None
        return redis.Redis(
            port=self.sentinel.port, password=self.sentinel_password, socket_timeout=2
        )

    def master_port(self) -> int:
        """The port of the server the sentinel calls the master right now."""
        with self.sentinel_client() as client:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        assert host in (b"127.0.0.1", "127.0.0.1")
        return int(port)

    def flush(self) -> None:
        with self.admin(self.master) as admin:
            admin.flushall()

    def _replica_known(self) -> bool:
        with self.sentinel_client() as client:
            replicas = client.sentinel_slaves(self.name)
        return any(
            r.get("is_slave") and not r.get("is_disconnected") and not r.get("is_sdown")
            for r in replicas
        )
