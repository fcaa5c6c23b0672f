"""OpenID Connect end to end: the real gateway (gunicorn, gevent workers) against the
real node oidc-provider issuing Entra ID-shaped tokens, and a local server speaking
Microsoft Graph's paging format for group overage.

The gateway answers on ``localhost:<port>`` and the provider on
``127.0.0.1:<port>``, so a browser-like ``requests.Session`` keeps their cookies
apart as a browser would for two sites.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import RSAKey

from tests.integration.conftest import GatewayProcess
from tests.oidc_peer import (
    GATEWAY_CLIENT,
    GATEWAY_SECRET,
    OTHER_TENANT,
    TENANT,
    Account,
    GraphServer,
    OpenIdProvider,
)
from tests.peers import free_port

G_ADMINS = "6f0b2f4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
G_OPERATORS = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
G_CONTRACTORS = "c0ffee00-1111-4222-8333-944455556666"
G_OTHER = "deadbeef-0000-4000-8000-000000000001"

POLICIES = {
    "00-tiers.yaml": f"""\
timezone: UTC
tiers:
  admin:
    rank: 50
    groups: [Intercom-Admins]          # the name the group_names table gives {G_ADMINS}
  supervisor:
    rank: 40
    groups: [Intercom.Supervisor]      # an Entra app role
  operator:
    rank: 30
    groups: [Intercom-Operators]
  contractor:
    rank: 5
    groups: ["{G_CONTRACTORS}"]        # by object id, no name configured
""",
    "10-routes.yaml": """\
routes:
  - name: admin
    hosts: [localhost]
    path: /admin/
    allow: [admin]
  - name: fresh
    hosts: [localhost]
    path: /fresh/
    allow: [admin, operator]
    conditions:
      max_auth_age: 2
  - name: console
    hosts: [localhost]
    path: /
    allow: [admin, supervisor, operator, contractor]
""",
}


def _account(login: str, tid: str = TENANT, **claims: Any) -> Account:
    oid = claims.pop("oid", f"00000000-0000-4000-8000-{abs(hash(login)) % 10**12:012d}")
    amr = claims.pop("amr", ("pwd",))
    base = {
        "oid": oid,
        "tid": tid,
        "preferred_username": f"{login}@corp.example",
        "email": f"{login}@corp.example",
        "name": login.title(),
    }
    return Account(login=login, password=f"{login}-pw-4711", claims={**base, **claims}, amr=amr)


SLOTS = 6
OVERAGE_OID = "11111111-2222-4333-8444-555555555555"
ACCOUNTS = {
    a.login: a
    for a in (
        _account("adam", groups=[G_ADMINS, G_OTHER], amr=("pwd", "mfa")),
        _account("sue", groups=[], roles=["Intercom.Supervisor"]),
        _account("alice", groups=[G_OPERATORS]),
        _account("carl", groups=[G_CONTRACTORS]),
        _account(
            "olga",
            oid=OVERAGE_OID,
            _claim_names={"groups": "src1"},
            _claim_sources={
                "src1": {"endpoint": f"https://graph.windows.net/{TENANT}/users/x/getMemberObjects"}
            },
        ),
        _account("hal", hasgroups=True, oid="99999999-2222-4333-8444-555555555555"),
        # synced from Active Directory (bob there, in Intercom-Admins), groups overage
        _account(
            "bobsync",
            oid="22222222-3333-4444-8555-666666666666",
            preferred_username="bob@corp.example.test",
            email="bob@corp.example.test",
            hasgroups=True,
        ),
        # synced from Active Directory too: oidcgone there, created (in
        # Intercom-Operators) and deleted by tests/ldap/test_deprovision_linked.py
        _account(
            "oidcgone",
            oid="33333333-4444-4555-8666-777777777777",
            preferred_username="oidcgone@corp.example.test",
            email="oidcgone@corp.example.test",
            groups=[G_OPERATORS],
        ),
        _account("eve", tid=OTHER_TENANT, groups=[G_ADMINS]),
        _account("nobody", groups=[G_OTHER]),
    )
}
# olga's 45 groups: admin on the last of three pages
GRAPH_GROUPS = {
    OVERAGE_OID: [f"00000000-0000-4000-a000-{i:012d}" for i in range(44)] + [G_ADMINS],
}


@dataclass
class OidcSite:
    provider: OpenIdProvider
    graph: GraphServer
    # the gateway ports registered at the provider (redirect URIs); slot 0 is
    # the module-wide gateway, the others are for gateways with other settings
    gateway_ports: list[int]
    directory: Path
    client_key: Path  # private_key_jwt: the gateway's key and certificate
    client_certificate: Path

    @property
    def gateway_base(self) -> str:
        return self.base(0)

    def base(self, slot: int) -> str:
        return f"http://localhost:{self.gateway_ports[slot]}"

    def gateway_settings(self, **oidc: Any) -> dict[str, Any]:
        options: dict[str, Any] = {
            "issuer": self.provider.issuer,
            "client_id": GATEWAY_CLIENT,
            "client_secret": GATEWAY_SECRET,
            "allow_insecure_http": True,
            "group_names": {G_ADMINS: "Intercom-Admins", G_OPERATORS: "Intercom-Operators"},
            "graph": {"url": self.graph.url, "token_scope": "graph.read"},
            "leeway": 5,
        }
        options.update(oidc)
        return {
            "providers": {"default": "oidc", "oidc": options},
            "redirects": {"default": "/.sso/userinfo"},
            "login": {"max_starts_per_minute": 10_000},  # every test logs in from 127.0.0.1
        }

    def gateway(self, name: str, slot: int = 0, **oidc: Any) -> GatewayProcess:
        gw = GatewayProcess(
            self.directory / name,
            users=(),
            policies=POLICIES,
            settings=self.gateway_settings(**oidc),
            workers=1,
        )
        gw.port = self.gateway_ports[slot]
        return gw


def _client_certificate(directory: Path) -> tuple[Path, Path, dict[str, Any]]:
    """The gateway's key pair for private_key_jwt: PEM key, self-signed
    certificate (what an Entra app registration holds) and the public JWK."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intercom-sso-gateway test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / "client.key", directory / "client.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    public = RSAKey.import_key(key.public_key()).as_dict(private=False)
    return key_path, cert_path, {"keys": [{**public, "use": "sig", "alg": "RS256"}]}


@pytest.fixture(scope="session")
def oidc_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcSite]:
    directory = tmp_path_factory.mktemp("oidc")
    key_path, cert_path, client_jwks = _client_certificate(directory / "client")
    ports = [free_port() for _ in range(SLOTS)]
    bases = [f"http://localhost:{port}" for port in ports]
    port = ports[0]
    provider = OpenIdProvider(
        directory / "op",
        ACCOUNTS,
        redirect_uris=[f"{base}/.sso/oidc/callback" for base in bases],
        post_logout_uris=[f"{base}/.sso/logout" for base in bases],
        # server to server: 127.0.0.1 (node would try localhost's ::1 first)
        backchannel_uri=f"http://127.0.0.1:{port}/.sso/oidc/backchannel-logout",
        jwt_client_jwks=client_jwks,
    )
    provider.start()
    graph = GraphServer(provider, GRAPH_GROUPS, page=20)
    graph.start()
    try:
        yield OidcSite(provider, graph, ports, directory, key_path, cert_path)
    finally:
        graph.stop()
        provider.stop()


@pytest.fixture(scope="module")
def gateway(oidc_site: OidcSite) -> Iterator[GatewayProcess]:
    """One gateway (default OIDC settings) per test module."""
    gw = oidc_site.gateway("gw-default")
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


# -- a browser, as far as HTTP goes ----------------------------------------------------------

_FORM = re.compile(r'<form[^>]*action="([^"]+)"', re.I)


class Browser:
    """requests.Session that follows redirects and fills in the provider's login."""

    def __init__(self, site: OidcSite, slot: int = 0) -> None:
        self.site = site
        self.base = site.base(slot)
        self.http = requests.Session()
        self.http.trust_env = False

    def start_login(self, rd: str = "/", **params: str) -> requests.Response:
        """From /.sso/start to the provider's login form."""
        query = {"rd": self.base + rd, **params}
        return self.http.get(self.base + "/.sso/start", params=query, timeout=10)

    def submit_login(
        self, form_page: requests.Response, login: str, password: str
    ) -> requests.Response:
        match = _FORM.search(form_page.text)
        assert match, f"no login form at {form_page.url}: {form_page.text[:300]}"
        action = urljoin(form_page.url, html.unescape(match.group(1)))
        return self.http.post(action, data={"login": login, "password": password}, timeout=10)

    def login(self, login: str, rd: str = "/", **params: str) -> requests.Response:
        """The whole login; returns the last response (after every redirect)."""
        account = ACCOUNTS[login]
        form_page = self.start_login(rd, **params)
        if "<form" not in form_page.text:
            return form_page  # the provider's session was reused (no form)
        return self.submit_login(form_page, login, account.password)

    def provider_logout(self, url: str | None = None) -> requests.Response:
        """Sign out at the provider: its logout page, then its confirmation form."""
        page = self.http.get(url or self.site.provider.issuer + "/session/end", timeout=10)
        xsrf = re.search(r'name="xsrf" value="([^"]+)"', page.text)
        assert xsrf, page.text[:300]
        return self.http.post(
            self.site.provider.issuer + "/session/end/confirm",
            data={"xsrf": xsrf.group(1), "logout": "yes"},
            timeout=10,
        )

    def userinfo(self) -> requests.Response:
        return self.http.get(
            self.base + "/.sso/userinfo",
            headers={"Accept": "application/json"},
            timeout=10,
        )

    def auth(self, path: str) -> requests.Response:
        """Forward-auth check of a request for ``path`` on the gateway's host."""
        return self.http.get(
            self.base + "/.sso/auth",
            headers={"X-Original-URL": self.base + path, "X-Original-Method": "GET"},
            timeout=10,
        )


@pytest.fixture
def browser(oidc_site: OidcSite) -> Browser:
    return Browser(oidc_site)
