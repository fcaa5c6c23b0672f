"""Flow tests: the whole Flask app through its test client, with real stores.

The app is built by ``create_app`` exactly as in production; only the clock is
injected so idle and absolute expiry can be tested without sleeping.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway import create_app
from gateway.audit import AuditLog
from gateway.providers.local import add_user
from gateway.services import Services
from gateway.sessions.store import SessionStore
from gateway.settings import load_settings

HOST = "intercom.test"
PASSWORD = "correct horse battery"
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)

POLICY = """
timezone: UTC
tiers:
  admin:
    rank: 50
    groups: [Intercom-Admins, "CN=Intercom-Admins,OU=Groups,DC=corp,DC=test"]
    idle: 600
    absolute: 3600
  operator:
    rank: 30
    groups: [Intercom-Operators]
  contractor:
    rank: 5
    groups: [Contractors]
    conditions:
      valid_until: 2001-01-01
workstations:
  - name: security-room
    networks: [10.20.30.0/24]
    idle: 120
    absolute: 900
routes:
  - name: health
    hosts: [intercom.test]
    path: /health
    public: true
  - name: events
    hosts: [intercom.test]
    path: /api/events
    allow: [operator, admin]
    passive: true
  - name: admin
    hosts: [intercom.test]
    path: /admin/
    allow: [admin]
  - name: unlock
    hosts: [intercom.test]
    path: /doors/unlock
    allow: [operator, admin]
    conditions:
      max_auth_age: 300
  - name: console
    hosts: [intercom.test, localhost]
    path: /
    allow: ["*"]
"""


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Gateway:
    app: Flask
    client: FlaskClient
    clock: Clock
    audit_stream: io.StringIO
    root: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def services(self) -> Services:
        svc: Services = self.app.extensions["gateway"]
        return svc

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in self.audit_stream.getvalue().splitlines() if x]
        return [e for e in lines if name is None or e["event"] == name]

    def get(self, path: str, **kw: Any) -> TestResponse:
        kw.setdefault("base_url", "https://localhost")
        return self.client.get(path, **kw)

    def post(self, path: str, **kw: Any) -> TestResponse:
        kw.setdefault("base_url", "https://localhost")
        return self.client.post(path, **kw)

    def csrf(self, rd: str = "") -> str:
        page = self.get("/.sso/login?prompt=login" + (f"&rd={rd}" if rd else ""))
        assert page.status_code == 200, page.status_code
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
        assert match
        return match.group(1)

    def login(self, user: str, password: str = PASSWORD, rd: str = "", **kw: Any) -> TestResponse:
        token = self.csrf()
        return self.post(
            "/.sso/login",
            data={"username": user, "password": password, "csrf_token": token, "rd": rd},
            **kw,
        )

    def logout(self, rd: str = "") -> TestResponse:
        """Sign out as a person does: open /.sso/logout, press the button."""
        page = self.get("/.sso/logout" + (f"?rd={rd}" if rd else ""))
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
        if match is None:  # no session: the page says so (or redirected)
            return page
        form_rd = re.search(r'name="rd" value="([^"]*)"', page.get_data(as_text=True))
        return self.post(
            "/.sso/logout",
            data={"csrf_token": match.group(1), "rd": form_rd.group(1) if form_rd else ""},
        )

    def auth(self, url: str, method: str = "GET", **kw: Any) -> TestResponse:
        headers = {"X-Original-URL": url, "X-Original-Method": method}
        headers.update(kw.pop("headers", {}))
        return self.get("/.sso/auth", headers=headers, **kw)

    def session_cookie(self) -> str | None:
        cookie = self.client.get_cookie(self.services.cookie_name, domain="localhost")
        return cookie.value if cookie is not None else None


def write_site(
    root: Path, *, store: str = "file", extra_yaml: str = "", session_yaml: str = ""
) -> Path:
    policies = root / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "site.yaml").write_text(POLICY, encoding="utf-8")
    users = root / "users.yaml"
    if not users.exists():
        people = {
            "alice": (["Intercom-Operators"], {"ipPhone": "4711", "department": "Security"}),
            "bob": (["Intercom-Admins"], {"telephoneNumber": "+49 30 4712"}),
            "dave": (["Contractors"], {}),
            "nobody": ([], {}),
            "zoe": (["Intercom-Operators"], {}),
        }
        for name, (groups, attrs) in people.items():
            add_user(
                users,
                name,
                PASSWORD,
                name=name.title(),
                email=f"{name}@corp.test",
                groups=groups,
                attributes=attrs,
                hasher=CHEAP,
            )
        add_user(users, "eve", PASSWORD, groups=["Intercom-Operators"], disabled=True, hasher=CHEAP)
    config = root / "config.yaml"
    config.write_text(
        "site_name: Flow Test Site\n"
        f"data_dir: {root / 'var'}\n"
        f"policies_dir: {policies}\n"
        f"providers:\n  local:\n    users_file: {users}\n"
        f"session:\n  store: {store}\n  idle_timeout: 900\n  absolute_lifetime: 7200\n"
        "  touch_interval: 0\n"
        + session_yaml
        + "redirects:\n  allowed_domains: [intercom.test, .corp.test]\n"
        "login:\n  max_user_failures: 3\n  max_client_failures: 6\n  failure_window: 600\n"
        + extra_yaml,
        encoding="utf-8",
    )
    return config


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[GatewayFactory]:
    made: list[Gateway] = []

    def make(
        *,
        store: SessionStore | None = None,
        store_kind: str = "file",
        extra_yaml: str = "",
        session_yaml: str = "",
        clock: Clock | None = None,
        root: Path | None = None,
    ) -> Gateway:
        site = root or tmp_path / "site"
        config = write_site(
            site, store=store_kind, extra_yaml=extra_yaml, session_yaml=session_yaml
        )
        settings = load_settings(config)
        stream = io.StringIO()
        clock = clock or Clock()
        app = create_app(settings, store=store, audit=AuditLog(stream=stream), clock=clock)
        app.config["TESTING"] = True
        gw = Gateway(app, app.test_client(), clock, stream, site)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.services.store.close()


@pytest.fixture
def gw(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway()
