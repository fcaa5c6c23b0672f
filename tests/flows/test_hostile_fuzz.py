"""Junk in every header /.sso/auth reads never breaks it and never lets anyone in.

Property-based: whatever a client or a misconfigured proxy sends, the answer is
one the contract knows (202/401/403), never an internal error; an operator is
never allowed onto the admin-only path however it is spelled (checked against
an independent, simpler reading of the URL); and junk cookies never
authenticate.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import create_app
from gateway.audit import AuditLog
from gateway.settings import load_settings
from tests.flows.conftest import Clock, Gateway, write_site

HEADER_TEXT = st.text(
    alphabet=st.characters(codec="latin-1", exclude_characters="\r\n"),
    max_size=80,
)
BASES = st.sampled_from(
    [
        "https://intercom.test",
        "http://intercom.test",
        "https://intercom.test:443",
        "https://INTERCOM.test",
        "https://intercom.test.",
        "https://localhost",
        "https://[::1]",
        "",
    ]
)
PIECES = [
    "/", "admin", "ADMIN", "health", "doors", "..", ".", "%2e", "%2E", "%2F", "%252e", ";x",
    "?", "#", "%00", "\\", "//", "%5C", "%61dmin", "unlock", "api", "events", "@", " ", "%",
    "%C0%AE", "\uff0e", "\u2215",
]  # fmt: skip
PATHS = st.lists(st.sampled_from(PIECES), max_size=8).map("".join)
SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("fuzz-site")
    config = write_site(root, store="memory")
    stream = io.StringIO()
    clock = Clock()
    app = create_app(load_settings(config), audit=AuditLog(stream=stream), clock=clock)
    gateway = Gateway(app, app.test_client(), clock, stream, root)
    gateway.login("alice")  # an operator
    yield gateway
    gateway.services.store.close()


def _simple_reading(url: str) -> str | None:
    """The path as a naive upstream might read it: decode once, fold case,
    resolve dots.  None when there is no path."""
    rest = url.split("://", 1)[1] if "://" in url else url
    if "/" not in rest:
        return None
    path = "/" + rest.split("/", 1)[1]
    path = unquote(path.split("?", 1)[0]).lower().replace("\\", "/")
    return posixpath.normpath("/" + path.lstrip("/"))


def _is_admin(reading: str | None) -> bool:
    """Whether the admin route (path prefix ``/admin/``) covers that reading:
    ``/admin`` and ``/admin/...``, never ``/adminadmin``."""
    return reading is not None and (reading == "/admin" or reading.startswith("/admin/"))


@SETTINGS
@given(base=BASES, path=PATHS, method=HEADER_TEXT)
def test_junk_original_url(gw: Gateway, base: str, path: str, method: str) -> None:
    url = base + path
    resp = gw.get("/.sso/auth", headers={"X-Original-URL": url, "X-Original-Method": method})
    assert resp.status_code in (202, 401, 403), (url, method, resp.status_code)
    if resp.status_code == 202 and resp.headers.get("X-Auth-Request-User"):
        reading = _simple_reading(url)
        assert not _is_admin(reading), (url, reading)


@SETTINGS
@given(host=HEADER_TEXT, path=PATHS, method=HEADER_TEXT, proto=HEADER_TEXT, xff=HEADER_TEXT)
def test_junk_traefik_headers(
    gw: Gateway, host: str, path: str, method: str, proto: str, xff: str
) -> None:
    headers = {
        "X-Forwarded-Host": host,
        "X-Forwarded-Uri": path,
        "X-Forwarded-Method": method,
        "X-Forwarded-Proto": proto,
        "X-Forwarded-For": xff,
    }
    resp = gw.get("/.sso/auth", headers=headers)
    assert resp.status_code in (202, 401, 403), (headers, resp.status_code)
    if resp.status_code == 202 and resp.headers.get("X-Auth-Request-User"):
        reading = _simple_reading("x://h" + path)
        assert not _is_admin(reading), (headers, reading)


@SETTINGS
@given(cookie=HEADER_TEXT, xff=HEADER_TEXT)
def test_junk_cookies_never_authenticate(gw: Gateway, cookie: str, xff: str) -> None:
    anonymous = gw.app.test_client()
    resp = anonymous.get(
        "/.sso/auth",
        base_url="https://localhost",
        headers={
            "X-Original-URL": "https://intercom.test/doors/",
            "Cookie": f"__Host-sso_gw={cookie}; sso_gw={cookie}",
            "X-Forwarded-For": xff,
        },
    )
    assert resp.status_code == 401


def test_no_internal_errors_were_logged(gw: Gateway) -> None:
    # runs after the fuzzers in this module (same gateway): nothing failed closed
    # for an internal reason
    assert not gw.events("error")
