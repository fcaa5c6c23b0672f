"""Integration fixtures: the real gateway under gunicorn, a real nginx and a real
upstream, each on a loopback port picked at run time.

* :class:`GatewayProcess` writes a config, a policy folder and a users file (made
  with the ``sso-gateway users add`` command) into its own directory and runs
  ``sso-gateway --config ... serve`` (gunicorn, gevent workers).
* :class:`NginxProcess` renders ``deploy/nginx/forward-auth.conf`` (the documented
  example, placeholders filled in) inside a complete ``nginx.conf`` whose pid
  file, logs and temp paths all live in its directory, and runs nginx in the
  foreground.
* :class:`EchoUpstream` is a small ``http.server`` in a thread that answers every
  request with the request line and headers it received, as JSON, and remembers
  them, so a test can assert exactly what reached the upstream.

Child processes are stopped by their PID (SIGTERM, then SIGKILL) in finalizers,
also when a start fails half-way.  Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.peers import child_env, free_port, launch, require_binary, stop_process, tail

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent
SSO_GATEWAY = BIN_DIR / "sso-gateway"
FORWARD_AUTH_CONF = REPO_ROOT / "deploy" / "nginx" / "forward-auth.conf"

JWT_ISSUER = "https://sso.integration.test"
JWT_AUDIENCE = "intercom-integration-upstreams"

# Routes on the loopback host the tests use (nginx and the gateway both answer
# on 127.0.0.1).  First match wins.
TEST_POLICIES: Mapping[str, str] = {
    "00-tiers.yaml": """\
timezone: UTC
tiers:
  admin:
    rank: 50
    groups: [Intercom-Admins]
  operator:
    rank: 30
    groups: [Intercom-Operators]
""",
    "10-routes.yaml": """\
routes:
  - name: other-site  # another host with looser rules: must never judge our requests
    hosts: [other.test]
    path: /
    allow: [operator, admin]
  - name: lobby-public
    hosts: [127.0.0.1, localhost]
    path: /public/
    public: true
  - name: intercom-admin
    hosts: [127.0.0.1, localhost]
    path: /admin/
    allow: [admin]
  - name: intercom-console
    hosts: [127.0.0.1, localhost]
    path: /
    allow: [operator, admin]
""",
}


@dataclass(frozen=True)
class LocalUser:
    """A person in the local users file (created through the CLI)."""

    username: str
    password: str
    groups: tuple[str, ...] = ()
    name: str = ""
    email: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)


ALICE = LocalUser(
    username="alice",
    password="door-station-4711-pw",
    groups=("Intercom-Operators", "UC-Users"),
    name="Alice Operator",
    email="alice@example.test",
    attributes={"ipPhone": "4711", "department": "Security"},
)


# -- processes --------------------------------------------------------------------


def _read_from(path: Path, offset: int) -> str:
    """What was written to ``path`` after byte ``offset``."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_status(url: str) -> int | None:
    try:
        with _NO_PROXY.open(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class GatewayProcess:
    """``sso-gateway serve`` (gunicorn, gevent workers) with its own files in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        users: Sequence[LocalUser] = (ALICE,),
        policies: Mapping[str, str] = TEST_POLICIES,
        settings: Mapping[str, Any] | None = None,
        site_name: str = "Integration Test Intercom Site",
        workers: int = 2,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.users = tuple(users)
        self.policies = dict(policies)
        self.site_name = site_name
        self.workers = workers
        self.port = free_port()
        self.config_path = directory / "config.yaml"
        self.audit_path = directory / "audit.log"
        self.log_path = directory / "gunicorn.log"
        self.users_file = directory / "users.yaml"
        self.config: dict[str, Any] = _deep_merge(self._base_config(), settings or {})
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _base_config(self) -> dict[str, Any]:
        return {
            "site_name": self.site_name,
            "data_dir": str(self.directory / "var"),
            "policies_dir": str(self.directory / "policies"),
            "cookie": {"secure": False},  # plain HTTP on loopback
            "session": {"store": "file"},
            "providers": {"local": {"users_file": str(self.users_file)}},
            "audit": {"destination": str(self.audit_path)},
            "jwt": {"issuer": JWT_ISSUER, "audience": JWT_AUDIENCE},
        }

    # -- files ---------------------------------------------------------------------
    def write_files(self) -> None:
        policy_dir = self.directory / "policies"
        policy_dir.mkdir(exist_ok=True)
        for name, text in self.policies.items():
            (policy_dir / name).write_text(text, encoding="utf-8")
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), "utf-8")
        self._add_users()

    def cli(self, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``sso-gateway --config <ours> ARGS`` and return what it did."""
        env = child_env()
        if password is not None:
            env["SSO_GATEWAY_PASSWORD"] = password
        return subprocess.run(
            [str(SSO_GATEWAY), "--config", str(self.config_path), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def _add_users(self) -> None:
        """``sso-gateway users add`` for every user, in parallel (the command locks
        the users file, so concurrent adds are safe)."""
        running: list[tuple[LocalUser, subprocess.Popen[str]]] = []
        for user in self.users:
            args = [
                str(SSO_GATEWAY), "--config", str(self.config_path), "users", "add",
                user.username, "--groups", ",".join(user.groups),
                "--name", user.name, "--email", user.email,
            ]  # fmt: skip
            for key, value in user.attributes.items():
                args += ["--attr", f"{key}={value}"]
            env = child_env()
            env["SSO_GATEWAY_PASSWORD"] = user.password
            process = subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            running.append((user, process))
        failures = []
        for user, adding in running:
            out, err = adding.communicate(timeout=60)
            if adding.returncode != 0:
                failures.append(f"users add {user.username}: {out}{err}")
        if failures:
            raise RuntimeError("\n".join(failures))

    # -- process -------------------------------------------------------------------
    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Write the files, run gunicorn, wait for /.sso/healthz.  A port somebody
        took between free_port() and the bind is replaced by another one."""
        if self._process is not None:
            raise RuntimeError("already started")
        self.write_files()
        for attempt in range(1, attempts + 1):
            offset = _size(self.log_path)
            if self._launch(timeout):
                return
            self.stop()
            if attempt == attempts or "in use" not in _read_from(self.log_path, offset):
                raise RuntimeError(
                    f"the gateway did not answer /.sso/healthz on {self.address}:\n"
                    f"{tail(self.log_path)}"
                )
            self.port = free_port()

    def _launch(self, timeout: float) -> bool:
        args = [
            str(SSO_GATEWAY), "--config", str(self.config_path),
            "serve", "--bind", self.address, "--workers", str(self.workers),
        ]  # fmt: skip
        self._process = launch(
            args,
            self.log_path,
            lambda: _http_status(self.url + "/.sso/healthz") == 200,
            timeout,
            env=child_env(),
            cwd=self.directory,
        )
        return self._process is not None

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- observations --------------------------------------------------------------
    def audit_lines(self) -> list[dict[str, Any]]:
        """Every audit event written so far (one JSON object per line)."""
        try:
            text = self.audit_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def audit_events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.audit_lines() if line.get("event") == event]

    def log_text(self) -> str:
        return tail(self.log_path, 20000)


NGINX_MAIN = """\
# written by tests/integration/conftest.py: nginx in the foreground, everything in {dir}
{user}daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    default_type application/octet-stream;

    # ---- {template} ----
{server}
}}
"""


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Replace every ``{{NAME}}``; a placeholder left without a value is an error."""
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    left = sorted(set(re.findall(r"\{\{([A-Za-z0-9_]+)\}\}", text)))
    if left:
        raise ValueError(f"no value for placeholder(s) {', '.join(left)}")
    return text


class NginxProcess:
    """A private nginx (master + one worker) serving a rendered template."""

    def __init__(
        self,
        directory: Path,
        values: Mapping[str, str],
        *,
        template: Path = FORWARD_AUTH_CONF,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or require_binary("nginx", "the forward-auth tests need nginx")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.template = template
        self.port = free_port()
        self._own_listen = "LISTEN" not in values
        self.values = {"LISTEN": f"127.0.0.1:{self.port}", **values}
        self.conf_path = directory / "nginx.conf"
        self.error_log = directory / "error.log"
        self.access_log = directory / "access.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def render(self) -> str:
        server = render_template(self.template.read_text(encoding="utf-8"), self.values)
        user = ""
        if os.geteuid() == 0:
            # as root nginx would run its worker as "nobody", which cannot enter the
            # private temporary directory; keep the worker as the current user
            user = "user root root;\n"
        indented = "\n".join(("    " + line).rstrip() for line in server.splitlines())
        return NGINX_MAIN.format(
            dir=self.directory, user=user, server=indented, template=self.template.name
        )

    def start(self, timeout: float = 15.0, attempts: int = 3) -> None:
        """Render the config, run nginx, wait until it accepts connections (on a new
        port if somebody took ours in the meantime)."""
        if self._process is not None:
            raise RuntimeError("already started")
        for attempt in range(1, attempts + 1):
            offset = _size(self.error_log)
            if self._launch(timeout):
                return
            self.stop()
            in_use = "in use" in _read_from(self.error_log, offset)
            if attempt == attempts or not self._own_listen or not in_use:
                raise RuntimeError(
                    f"nginx did not listen on {self.port}:\n{tail(self.error_log)}"
                    f"\n{tail(self.directory / 'stderr.log')}"
                )
            self.port = free_port()
            self.values["LISTEN"] = f"127.0.0.1:{self.port}"

    def _launch(self, timeout: float) -> bool:
        self.conf_path.write_text(self.render(), encoding="utf-8")
        args = [
            self.binary,
            "-c", str(self.conf_path),
            "-e", str(self.error_log),
            "-p", str(self.directory),
        ]  # fmt: skip
        with (self.directory / "stderr.log").open("ab") as log:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # nginx writes its pid file once its listening sockets are bound, so a pid
        # file naming our master plus an open port means the port is ours
        pid_file = self.directory / "nginx.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._process.poll() is None:
            if _read_from(pid_file, 0).strip() == str(self._process.pid) and _port_open(self.port):
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)

    def error_log_text(self) -> str:
        return tail(self.error_log, 20000)

    def access_log_lines(self) -> list[str]:
        try:
            return self.access_log.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []


# -- the upstream -----------------------------------------------------------------


def header_key(name: str) -> str:
    """How a server folds a header name: case-insensitive, '_' read as '-'."""
    return name.lower().replace("_", "-")


@dataclass(frozen=True)
class SeenRequest:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in any case and with '_' for '-'."""
        key = header_key(name)
        return [value for header, value in self.headers if header_key(header) == key]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        if len(values) > 1:
            raise AssertionError(f"{name} arrived {len(values)} times: {values}")
        return values[0] if values else None

    def names(self) -> list[str]:
        return [header for header, _ in self.headers]

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": [list(h) for h in self.headers],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeenRequest:
        return cls(
            method=str(data["method"]),
            path=str(data["path"]),
            headers=tuple((str(k), str(v)) for k, v in data["headers"]),
        )


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.seen: list[SeenRequest] = []
        self.lock = threading.Lock()


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _EchoServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        seen = SeenRequest(self.command, self.path, tuple(self.headers.items()))
        with self.server.lock:
            self.server.seen.append(seen)
        payload = json.dumps(seen.as_json()).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return


class RecordingUpstream:
    """A ThreadingHTTPServer whose handler records what it received (``seen``,
    under ``lock``), served from a thread: the shared part of the tests' upstreams."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def seen(self) -> list[SeenRequest]:
        with self._server.lock:
            return list(self._server.seen)

    def reset(self) -> None:
        with self._server.lock:
            self._server.seen.clear()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class EchoUpstream(RecordingUpstream):
    """The dashboard behind nginx: answers 200 with what it received, as JSON."""

    def __init__(self) -> None:
        super().__init__(_EchoServer())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


# -- HTTP helpers -----------------------------------------------------------------


def http_client() -> requests.Session:
    """A requests session that ignores proxy settings from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self.actions: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.actions.append(attributes.get("action", ""))
        if tag == "input" and "name" in attributes:
            self.fields[attributes["name"]] = attributes.get("value", "")


def form_fields(html: str) -> dict[str, str]:
    """The named <input> values of a page (hidden ones included)."""
    parser = _FormParser()
    parser.feed(html)
    return parser.fields


def submit_login(
    client: requests.Session, base_url: str, user: LocalUser, *, rd: str | None = None
) -> requests.Response:
    """Sign in through the real form: GET it, read csrf_token (and rd), POST.

    Returns the POST's answer without following its redirect."""
    query = {"rd": rd} if rd else None
    form = client.get(base_url + "/.sso/login", params=query, timeout=10)
    assert form.status_code == 200, form.text
    fields = form_fields(form.text)
    assert fields.get("csrf_token"), "the login form has no csrf_token"
    fields.update(username=user.username, password=user.password)
    return client.post(base_url + "/.sso/login", data=fields, allow_redirects=False, timeout=10)


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    return require_binary("nginx", "the forward-auth tests need nginx (Debian nginx-light)")


@pytest.fixture(scope="session")
def echo_upstream() -> Iterator[EchoUpstream]:
    server = EchoUpstream()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstream(echo_upstream: EchoUpstream) -> EchoUpstream:
    """The shared echo upstream, with no requests recorded yet."""
    echo_upstream.reset()
    return echo_upstream


def start_gateway(
    request: pytest.FixtureRequest, directory: Path, **options: Any
) -> GatewayProcess:
    """Start a gateway whose stop is already registered as a finalizer."""
    gateway = GatewayProcess(directory, **options)
    request.addfinalizer(gateway.stop)
    gateway.start()
    return gateway


def start_nginx(
    request: pytest.FixtureRequest,
    directory: Path,
    gateway: GatewayProcess,
    upstream: EchoUpstream,
    *,
    binary: str | None = None,
) -> NginxProcess:
    """nginx running deploy/nginx/forward-auth.conf in front of ``upstream``."""
    nginx = NginxProcess(
        directory,
        {
            "GATEWAY": gateway.address,
            "UPSTREAM": upstream.address,
            "SERVER_NAME": "127.0.0.1 localhost",
        },
        binary=binary,
    )
    request.addfinalizer(nginx.stop)
    nginx.start()
    return nginx


@pytest.fixture
def gateway_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[..., GatewayProcess]:
    """``gateway_factory(**GatewayProcess options)`` -> a running gateway (stopped
    after the test)."""
    count = 0

    def make(**options: Any) -> GatewayProcess:
        nonlocal count
        count += 1
        return start_gateway(request, tmp_path / f"gateway-{count}", **options)

    return make


@pytest.fixture
def client() -> Iterator[requests.Session]:
    with http_client() as session:
        yield session
