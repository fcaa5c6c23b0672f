"""The LDAP provider and the deprovisioning watcher in the real server:
``sso-gateway serve`` (gunicorn, gevent workers, several processes) against
the Samba AD DC."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import LocalUser, http_client, start_gateway, submit_login
from tests.ldap.conftest import SilentServer
from tests.samba_ad import PEOPLE, SERVICE_DN, SERVICE_PASSWORD, USER_PASSWORD, SambaAD


def test_sign_in_and_deprovisioning_under_gunicorn(
    request: pytest.FixtureRequest, tmp_path: Path, ad: SambaAD, unique: Callable[[str], str]
) -> None:
    name = unique("served")
    dn = ad.create_user(name, groups=["Intercom-Operators"])
    secret = tmp_path / "bind-password"
    secret.write_text(SERVICE_PASSWORD, encoding="utf-8")
    ldap = {
        "servers": ["localhost:636"],
        "ca_bundle": str(ad.ca_file),
        "bind_dn": SERVICE_DN,
        "bind_password": {"file": str(secret)},
        "base_dns": [PEOPLE],
        "deprovision": {"interval": 1},
    }
    gateway = start_gateway(
        request, tmp_path / "gw", users=(),
        settings={"providers": {"default": "ldap", "ldap": ldap}},
    )  # fmt: skip
    with http_client() as client:
        person = LocalUser(username=name, password=USER_PASSWORD)
        assert submit_login(client, gateway.url, person).status_code == 303
        assert client.get(gateway.url + "/.sso/session", timeout=5).status_code == 200
        wrong = LocalUser(username=name, password="Wrong-Passw0rd!")
        with http_client() as other:
            assert submit_login(other, gateway.url, wrong).status_code == 401
        ad.set_disabled(dn, True)
        start = time.monotonic()
        while client.get(gateway.url + "/.sso/session", timeout=5).status_code != 401:
            assert time.monotonic() - start < 10, gateway.log_text()
            time.sleep(0.1)
        assert time.monotonic() - start <= 2.5  # one 1 s poll, plus the poll itself
    revoked = gateway.audit_events("directory_revoked")
    assert [(e["user"], e["reason"]) for e in revoked] == [(name, "disabled")]
    failed = gateway.audit_events("login_failed")
    assert [e["reason"] for e in failed] == ["bad-password"]


def test_a_hanging_domain_controller_does_not_stall_the_worker(
    request: pytest.FixtureRequest, tmp_path: Path, ad: SambaAD, silent_server: SilentServer
) -> None:
    """One gevent worker: while a sign-in waits on a DC that never answers, the
    same process keeps answering other requests (LDAP I/O is cooperative)."""
    secret = tmp_path / "bind-password"
    secret.write_text(SERVICE_PASSWORD, encoding="utf-8")
    ldap = {
        "servers": [f"127.0.0.1:{silent_server.port}", "localhost:636"],
        "ca_bundle": str(ad.ca_file),
        "bind_dn": SERVICE_DN,
        "bind_password": {"file": str(secret)},
        "base_dns": [PEOPLE],
        "timeout": 3,
        "deprovision": {"enabled": False},
    }
    gateway = start_gateway(
        request, tmp_path / "gw", users=(), workers=1,
        settings={"providers": {"default": "ldap", "ldap": ldap}},
    )  # fmt: skip
    outcome: dict[str, int] = {}

    def sign_in() -> None:
        with http_client() as client:
            person = LocalUser(username="bob", password=USER_PASSWORD)
            outcome["status"] = submit_login(client, gateway.url, person).status_code

    signing_in = threading.Thread(target=sign_in)
    signing_in.start()
    time.sleep(0.5)  # the sign-in is now waiting on the silent DC
    with http_client() as client:
        for _ in range(5):
            start = time.monotonic()
            assert client.get(gateway.url + "/.sso/healthz", timeout=5).status_code == 200
            assert time.monotonic() - start < 0.5
    assert signing_in.is_alive()  # still waiting: the answers above did not queue behind it
    signing_in.join(15)
    assert outcome["status"] == 303  # failed over to the good DC
