"""Real peers for the OpenID Connect tests.

* :class:`OpenIdProvider` runs ``tests/oidc_op/server.mjs`` - the certified
  node ``oidc-provider`` configured to issue Entra ID-shaped tokens - on a
  loopback port, with test accounts, clients and its own RSA signing key (the
  tests hold the private key too, so they can sign hostile tokens the provider
  itself would never issue).
* :class:`GraphServer` answers ``/v1.0/users/{oid}/transitiveMemberOf/
  microsoft.graph.group`` in Microsoft Graph's documented paging format
  (``value`` + ``@odata.nextLink``), since the real Graph is out of reach.  It
  accepts only access tokens the provider says are active (RFC 7662
  introspection at the real provider), as Graph accepts only Entra's tokens.

Node.js and the npm packages (``make test`` runs ``npm ci`` in tests/oidc_op)
are required; without them the tests are skipped (a failure under CI=true).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc.jwk import RSAKey

from tests.peers import free_port, launch, require_binary, stop_process, tail

OP_DIR = Path(__file__).resolve().parent / "oidc_op"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OTHER_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
GATEWAY_CLIENT = "3f1c2b9e-0d7a-4c55-9e0e-5b8d1c2a7e10"
GATEWAY_SECRET = "gateway-client-secret-for-tests"
OTHER_CLIENT = "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d"
OTHER_SECRET = "other-client-secret-for-tests"
JWT_CLIENT = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"
GRAPH_CLIENT = "graph-introspection"
GRAPH_SECRET = "graph-introspection-secret"


@dataclass(frozen=True)
class Account:
    login: str
    password: str
    claims: Mapping[str, Any]
    amr: Sequence[str] = ("pwd",)


@dataclass
class OpenIdProvider:
    """The node oidc-provider process."""

    directory: Path
    accounts: Mapping[str, Account]
    redirect_uris: Sequence[str]
    post_logout_uris: Sequence[str] = ()
    backchannel_uri: str | None = None
    jwt_client_jwks: Mapping[str, Any] | None = None
    port: int = field(default_factory=free_port)
    key: RSAKey = field(default_factory=lambda: _signing_key("op-key-1"))
    _process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.base}/{TENANT}/v2.0"

    @property
    def common_issuer(self) -> str:
        return f"{self.base}/{{tenantid}}/v2.0"

    @property
    def common_discovery(self) -> str:
        return f"{self.base}/common/v2.0/.well-known/openid-configuration"

    def _clients(self) -> list[dict[str, Any]]:
        gateway: dict[str, Any] = {
            "client_id": GATEWAY_CLIENT,
            "client_secret": GATEWAY_SECRET,
            "redirect_uris": list(self.redirect_uris),
            "post_logout_redirect_uris": list(self.post_logout_uris),
            "grant_types": ["authorization_code", "client_credentials"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }
        if self.backchannel_uri:
            gateway["backchannel_logout_uri"] = self.backchannel_uri
            gateway["backchannel_logout_session_required"] = True
        clients = [
            gateway,
            {
                "client_id": OTHER_CLIENT,
                "client_secret": OTHER_SECRET,
                "redirect_uris": list(self.redirect_uris),
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
            },
            {
                "client_id": GRAPH_CLIENT,
                "client_secret": GRAPH_SECRET,
                "redirect_uris": [],
                "grant_types": [],
                "response_types": [],
            },
        ]
        if self.jwt_client_jwks is not None:
            clients.append(
                {
                    "client_id": JWT_CLIENT,
                    "redirect_uris": list(self.redirect_uris),
                    "grant_types": ["authorization_code", "client_credentials"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "private_key_jwt",
                    "token_endpoint_auth_signing_alg": "RS256",
                    "jwks": dict(self.jwt_client_jwks),
                }
            )
        return clients

    def write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        private = self.key.as_dict(private=True)
        config = {
            "port": self.port,
            "tenant": TENANT,
            "keys": {"keys": [private]},
            "clients": self._clients(),
            "accounts": {
                a.login: {"password": a.password, "amr": list(a.amr), "claims": dict(a.claims)}
                for a in self.accounts.values()
            },
        }
        path = self.directory / "op.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        return path

    def start(self, timeout: float = 20.0) -> None:
        node = require_binary("node", "the OpenID Connect tests need Node.js (oidc-provider)")
        if not (OP_DIR / "node_modules" / "oidc-provider").is_dir():
            reason = "tests/oidc_op/node_modules is missing: run `make test` (npm ci)"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        config = self.write_config()
        log_path = self.directory / "op.log"
        self._process = launch(
            [node, str(OP_DIR / "server.mjs"), str(config)],
            log_path,
            self._discoverable,
            timeout,
            cwd=OP_DIR,
        )
        if self._process is not None:
            return
        raise RuntimeError(f"oidc-provider did not start:\n{tail(log_path)}")

    def _discoverable(self) -> bool:
        try:
            r = requests.get(self.issuer + "/.well-known/openid-configuration", timeout=1)
        except requests.RequestException:
            return False
        return r.status_code == 200

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)

    def restart_with_new_key(self, kid: str) -> None:
        """Key rollover: the same provider (issuer, port) signing with a new key."""
        self.stop()
        self.key = _signing_key(kid)
        self.start()

    def tamper_next_id_token(self, mode: str, **options: Any) -> None:
        """The next ID token the token endpoint hands out is altered (see server.mjs)."""
        r = requests.post(
            f"{self.base}/_test/tamper", data=json.dumps({"mode": mode, **options}), timeout=5
        )
        r.raise_for_status()

    def introspect(self, token: str) -> dict[str, Any]:
        r = requests.post(
            self.issuer + "/token/introspection",
            data={"token": token},
            auth=(GRAPH_CLIENT, GRAPH_SECRET),
            timeout=5,
        )
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def log_text(self) -> str:
        return tail(self.directory / "op.log", 20000)


def _signing_key(kid: str) -> RSAKey:
    key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
    return key


# -- Microsoft Graph ------------------------------------------------------------------


class GraphServer:
    """``GET /v1.0/users/{oid}/transitiveMemberOf/microsoft.graph.group``, paged."""

    def __init__(self, provider: OpenIdProvider, groups: Mapping[str, Sequence[str]], page: int):
        self.provider = provider
        self.groups = dict(groups)
        self.page_size = page
        self.requests: list[dict[str, Any]] = []
        self.available = True
        self.port = free_port()
        graph = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                graph.handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1.0"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        auth = handler.headers.get("Authorization", "")
        self.requests.append({"path": handler.path, "authorization": auth})
        if not self.available:
            self._send(handler, 503, {"error": {"code": "serviceNotAvailable"}})
            return
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or not self.provider.introspect(token).get("active"):
            self._send(handler, 401, {"error": {"code": "InvalidAuthenticationToken"}})
            return
        segments = parts.path.split("/")
        # /v1.0/users/{oid}/transitiveMemberOf/microsoft.graph.group
        if len(segments) != 6 or segments[2] != "users" or segments[4] != "transitiveMemberOf":
            self._send(handler, 400, {"error": {"code": "BadRequest"}})
            return
        oid = segments[3]
        if oid not in self.groups:
            self._send(handler, 404, {"error": {"code": "Request_ResourceNotFound"}})
            return
        query = parse_qs(parts.query)
        skip = int(query.get("$skiptoken", ["0"])[0])
        ids = list(self.groups[oid])
        chunk = ids[skip : skip + self.page_size]
        body: dict[str, Any] = {
            "@odata.context": f"{self.url}/$metadata#directoryObjects",
            "value": [
                {"@odata.type": "#microsoft.graph.group", "id": gid, "displayName": f"name-{gid}"}
                for gid in chunk
            ],
        }
        if skip + self.page_size < len(ids):
            body["@odata.nextLink"] = (
                f"{self.url}/users/{oid}/transitiveMemberOf/microsoft.graph.group"
                f"?$select=id&$top=999&$skiptoken={skip + self.page_size}"
            )
        self._send(handler, 200, body)
