"""Fixtures for the LDAP tests: one real Samba AD DC per test session, and
gateways (the whole Flask app, real stores) configured against it."""

from __future__ import annotations

import io
import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway import create_app
from gateway.audit import AuditLog
from gateway.settings import load_settings
from tests.flows.conftest import POLICY, Clock, Gateway
from tests.samba_ad import (
    PEOPLE,
    SERVICE_DN,
    SERVICE_PASSWORD,
    USER_PASSWORD,
    SambaAD,
)

__all__ = ["USER_PASSWORD", "LdapGatewayFactory"]

_names = itertools.count(1)


@pytest.fixture(scope="session")
def samba() -> Iterator[SambaAD]:
    """The test domain, provisioned and seeded once; running for the session."""
    ad = SambaAD()
    try:
        ad.provision()
        ad.start(strong_auth=False)
        ad.seed()
        yield ad
    finally:
        ad.close()


@pytest.fixture
def ad(samba: SambaAD) -> SambaAD:
    """The test domain, running as a lax directory (a test may have restarted it)."""
    if not samba.running or samba.strong_auth:
        samba.restart(strong_auth=False)
    return samba


@pytest.fixture
def unique() -> Callable[[str], str]:
    """A user name no other test uses (tests that change the directory make
    their own people)."""
    return lambda prefix: f"{prefix}{next(_names):03d}"


def ldap_yaml(
    ca_file: Path,
    secret_file: Path,
    *,
    servers: str = '["localhost:636"]',
    transport: str = "ldaps",
    extra: str = "",
    deprovision: str = "{interval: 1, full_check_interval: 3600}",
    bind_dn: str = SERVICE_DN,
    timeout: int = 3,
) -> str:
    return (
        "providers:\n"
        "  default: ldap\n"
        "  ldap:\n"
        f"    servers: {servers}\n"
        f"    transport: {transport}\n"
        f"    ca_bundle: {ca_file}\n"
        f'    bind_dn: "{bind_dn}"\n'
        f"    bind_password: {{file: {secret_file}}}\n"
        f'    base_dns: ["{PEOPLE}"]\n'
        "    connect_timeout: 2\n"
        f"    timeout: {timeout}\n"
        f"    deprovision: {deprovision}\n" + extra
    )


LdapGatewayFactory = Callable[..., Gateway]


@pytest.fixture
def make_ldap_gateway(tmp_path: Path, samba: SambaAD) -> Iterator[LdapGatewayFactory]:
    made: list[Gateway] = []
    secret = tmp_path / "bind-password"
    secret.write_text(SERVICE_PASSWORD + "\n", encoding="utf-8")

    def make(
        *,
        servers: str = '["localhost:636"]',
        transport: str = "ldaps",
        ca_file: Path | None = None,
        extra: str = "",
        login_yaml: str = "login:\n  max_user_failures: 3\n  max_client_failures: 50\n",
        clock: Clock | None = None,
        store: str = "file",
        deprovision: str = "{interval: 1, full_check_interval: 3600}",
        bind_dn: str = SERVICE_DN,
        secret_file: Path | None = None,
        timeout: int = 3,
    ) -> Gateway:
        site = tmp_path / f"site{len(made)}"
        policies = site / "policies"
        policies.mkdir(parents=True)
        (policies / "site.yaml").write_text(POLICY, encoding="utf-8")
        config = site / "config.yaml"
        config.write_text(
            "site_name: LDAP Test Site\n"
            f"data_dir: {site / 'var'}\n"
            f"policies_dir: {policies}\n"
            f"session:\n  store: {store}\n  touch_interval: 0\n"
            "redirects:\n  allowed_domains: [intercom.test]\n"
            + login_yaml
            + ldap_yaml(
                ca_file or samba.ca_file,
                secret_file or secret,
                servers=servers,
                transport=transport,
                extra=extra,
                deprovision=deprovision,
                bind_dn=bind_dn,
                timeout=timeout,
            ),
            encoding="utf-8",
        )
        settings = load_settings(config)
        stream = io.StringIO()
        clock = clock or Clock()
        app = create_app(settings, audit=AuditLog(stream=stream), clock=clock)
        app.config["TESTING"] = True
        gw = Gateway(app, app.test_client(), clock, stream, site)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        svc = gw.services
        if svc.deprovision is not None:
            svc.deprovision.stop()
        if svc.directory is not None:
            svc.directory.directory.close()
        svc.store.close()


class SilentServer:
    """A TCP listener on loopback that accepts connections and never answers:
    a domain controller that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self._accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self._accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self._accepted:
            conn.close()
        self.sock.close()


class GarbageServer(SilentServer):
    """A listener that answers whatever it is sent with bytes that are not LDAP
    (nor TLS): a misconfigured port, or something hostile."""

    REPLIES = (
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        b"\x30\x84\xff\xff\xff\xff\x02\x01",  # a BER sequence claiming 4 GiB
        b"\x30\x03\x02\x01\x01",  # a well-formed sequence that is no LDAP message
    )

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        super().__init__()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self._accepted.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if conn.recv(4096):
                conn.sendall(self.reply)
        except OSError:
            pass


@pytest.fixture(params=range(len(GarbageServer.REPLIES)))
def garbage_server(request: pytest.FixtureRequest) -> Iterator[GarbageServer]:
    server = GarbageServer(GarbageServer.REPLIES[request.param])
    yield server
    server.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()
