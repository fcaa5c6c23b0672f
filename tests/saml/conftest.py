"""SAML flow fixtures: the real gateway app (Flask test client, real stores) and
a real pysaml2 IdP (tests/saml_idp.py) running as a child process, talking the
ADFS claim dialect.

The browser is played by two HTTP clients: the Flask test client for the
gateway and a ``requests`` session for the IdP; the auto-POST form the IdP
answers with is submitted to the gateway's ACS, as a browser would.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from werkzeug.test import TestResponse

from tests.flows.conftest import Clock, Gateway, make_gateway  # noqa: F401 (fixture)
from tests.saml_idp import SamlIdp, make_keypair, sign_in_at_idp

PUBLIC_URL = "https://localhost"
ACS_URL = PUBLIC_URL + "/.sso/saml/acs"
SP_ENTITY_ID = PUBLIC_URL + "/.sso/saml/metadata"


@pytest.fixture(scope="session")
def saml_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SamlIdp]:
    """One real IdP for the whole run (pysaml2 + xmlsec1)."""
    idp = SamlIdp(tmp_path_factory.mktemp("saml-idp"))
    idp.start()
    try:
        yield idp
    finally:
        idp.stop()


@pytest.fixture(scope="session")
def sp_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_keypair(tmp_path_factory.mktemp("saml-sp"), "sp", "gateway-sp")


def saml_yaml(idp: SamlIdp, keys: tuple[Path, Path], root: Path, **options: Any) -> str:
    key, cert = keys
    lines = [
        f"public_url: {PUBLIC_URL}",
        "providers:",
        "  default: saml",
        "  local:",
        f"    users_file: {root / 'users.yaml'}",
        "  saml:",
        f"    sp_cert_file: {cert}",
        f"    sp_key_file: {key}",
        f"    idp_metadata_url: {idp.url}/metadata",
        "    allow_http_metadata_url: true",
    ]
    for name, value in options.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list | tuple):
            value = "[" + ", ".join(str(v) for v in value) + "]"
        lines.append(f"    {name}: {value}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def make_saml_gateway(
    make_gateway: Callable[..., Gateway],  # noqa: F811 (the imported fixture)
    saml_idp: SamlIdp,
    sp_keys: tuple[Path, Path],
    tmp_path: Path,
) -> Callable[..., Gateway]:
    """A gateway whose default provider is SAML against the test IdP; its SP
    metadata registered at the IdP; the IdP back to its default behaviour."""

    def make(*, idp_options: dict[str, Any] | None = None, **saml_options: Any) -> Gateway:
        saml_idp.configure(**(idp_options or {}))
        root = tmp_path / "site"
        gw = make_gateway(
            extra_yaml=saml_yaml(saml_idp, sp_keys, root, **saml_options),
            clock=Clock(time.time()),
            root=root,
        )
        saml_idp.register_sp(gw.get("/.sso/saml/metadata").get_data(as_text=True))
        return gw

    return make


@pytest.fixture
def sgw(make_saml_gateway: Callable[..., Gateway]) -> Gateway:
    return make_saml_gateway()


def start_login(gw: Gateway, rd: str = "", *, prompt: bool = False) -> str:
    """``/.sso/start`` -> the IdP URL the browser is sent to."""
    query = {"rd": rd} if rd else {}
    if prompt:
        query["prompt"] = "login"
    r = gw.get("/.sso/start", query_string=query)
    assert r.status_code == 302, (r.status_code, r.get_data(as_text=True))
    location = r.headers["Location"]
    return location


def idp_form(
    idp: SamlIdp, sso_url: str, user: str, browser: requests.Session | None = None
) -> dict[str, str]:
    return sign_in_at_idp(browser or idp.browser(), sso_url, user)


def post_acs(gw: Gateway, fields: dict[str, str]) -> TestResponse:
    data = {"SAMLResponse": fields["SAMLResponse"]}
    if "RelayState" in fields:
        data["RelayState"] = fields["RelayState"]
    return gw.post("/.sso/saml/acs", data=data)


def saml_login(
    gw: Gateway,
    idp: SamlIdp,
    user: str,
    rd: str = "",
    *,
    prompt: bool = False,
    browser: requests.Session | None = None,
) -> TestResponse:
    """The whole browser round trip: start, IdP login, POST to the ACS."""
    fields = idp_form(idp, start_login(gw, rd, prompt=prompt), user, browser)
    assert fields["action"] == "https://localhost/.sso/saml/acs"
    return post_acs(gw, fields)


def relay_state(url: str) -> str:
    return parse_qs(urlsplit(url).query)["RelayState"][0]


def request_id_of(idp: SamlIdp) -> str:
    return str(idp.last_request()["id"])


def last_event(gw: Gateway, name: str) -> dict[str, Any]:
    events = gw.events(name)
    assert events, f"no {name} audit event in {gw.events()}"
    return events[-1]


def strip_ws(text: str) -> str:
    return re.sub(r"\s+", "", text)
