"""A real SAML 2.0 identity provider for the tests, standing in for ADFS.

pysaml2's library IdP (``saml2.server.Server``, signing with the ``xmlsec1``
binary) wrapped in a small Flask app that the test suite runs as a child
process on a loopback port it picks (``python -m tests.saml_idp --port P --dir D``).
Its users carry the claim URIs ADFS emits (UPN, e-mail, name, group names,
group SIDs, roles, authentication methods).

Endpoints:

* ``GET /metadata`` -- the IdP's metadata (a second signing certificate is
  listed too while a rollover is configured);
* ``GET /sso/redirect`` -- SP-initiated login (HTTP-Redirect binding; the
  AuthnRequest must be signed).  Without an IdP session the login form is shown;
  with one the browser gets an auto-submitting form that POSTs the signed
  response to the SP's Assertion Consumer Service;
* ``POST /login`` -- the login form (user name only: these are test users);
* ``GET /slo/redirect`` -- Single Logout: answers the SP's signed LogoutRequest
  with a signed LogoutResponse, and takes the SP's LogoutResponse to an
  IdP-initiated logout;
* ``POST /_admin/...`` -- what the tests steer: register the SP's metadata,
  pick the signing key and options, start an IdP-initiated logout, read the last
  AuthnRequest seen.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

XMLSEC1 = "/usr/bin/xmlsec1"

UPN = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn"
EMAIL = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"
NAME = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"
GROUP = "http://schemas.xmlsoap.org/claims/Group"
GROUP_SID = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"
ROLE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
AMR = "http://schemas.microsoft.com/claims/authnmethodsreferences"
MFA = "http://schemas.microsoft.com/claims/multipleauthn"
PASSWORD_AMR = "http://schemas.microsoft.com/ws/2008/06/identity/authenticationmethod/password"


@dataclass(frozen=True)
class IdpUser:
    """A person at the IdP and the ADFS claims it issues for them."""

    login: str
    upn: str
    name: str
    groups: tuple[str, ...] = ()
    sids: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    mfa: bool = False
    name_id: str = ""  # defaults to the UPN

    def claims(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {
            UPN: [self.upn],
            EMAIL: [self.upn],
            NAME: [self.name],
            AMR: [PASSWORD_AMR, MFA] if self.mfa else [PASSWORD_AMR],
        }
        if self.groups:
            out[GROUP] = list(self.groups)
        if self.sids:
            out[GROUP_SID] = list(self.sids)
        if self.roles:
            out[ROLE] = list(self.roles)
        return out


OPERATORS_SID = "S-1-5-21-3623811015-3361044348-30300820-1013"
ADMINS_SID = "S-1-5-21-3623811015-3361044348-30300820-1014"

USERS: dict[str, IdpUser] = {
    u.login: u
    for u in (
        IdpUser("alice", "alice@corp.test", "Alice Operator", ("Intercom-Operators",),
                (OPERATORS_SID,)),
        IdpUser("bob", "bob@corp.test", "Bob Admin", ("Intercom-Admins",), (ADMINS_SID,),
                mfa=True),
        IdpUser("sid", "sid@corp.test", "Sid Only", (), (ADMINS_SID,)),
        IdpUser("rosa", "rosa@corp.test", "Rosa Role", (), (), ("Intercom-Operators",)),
        IdpUser("dave", "dave@corp.test", "Dave Contractor", ("Contractors",)),
        IdpUser("nobody", "nobody@corp.test", "No Groups"),
        IdpUser("mallory", "alice@corp.test.evil", "Mallory", ("Intercom-Admins",)),
        # a long-serving admin in very many AD groups (a response of ~150 kB)
        IdpUser("many", "many@corp.test", "Many Groups",
                ("Intercom-Admins", *(f"Project-Group-{i:04d}" for i in range(1500))),
                tuple(f"S-1-5-21-3623811015-3361044348-30300820-{5000 + i}"
                      for i in range(1500))),
    )
}  # fmt: skip

# "ad.<name>" signs in <name>@corp.example.test, a person of the tests' Samba AD
# domain (tests/samba_ad.py) that the test itself creates, asserting the group
# Intercom-Operators: for the directory deprovisioning tests (tests/ldap)
DIRECTORY_PREFIX = "ad."
DIRECTORY_UPN_SUFFIX = "corp.example.test"


def find_user(login: str) -> IdpUser | None:
    """The IdP's user ``login``: one of USERS, or a directory person (above)."""
    if login in USERS:
        return USERS[login]
    name = login.removeprefix(DIRECTORY_PREFIX)
    if login.startswith(DIRECTORY_PREFIX) and 0 < len(name) <= 20 and name.isalnum():
        return IdpUser(login, f"{name}@{DIRECTORY_UPN_SUFFIX}", name.title(),
                       ("Intercom-Operators",))  # fmt: skip
    return None


# -- keys -------------------------------------------------------------------------


def make_keypair(directory: Path, stem: str, common_name: str) -> tuple[Path, Path]:
    """An RSA key and a self-signed certificate (PEM files) made with the
    ``cryptography`` library; reused when they already exist."""
    key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.crt"
    if key_path.exists() and cert_path.exists():
        return key_path, cert_path
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def cert_body(cert_path: Path) -> str:
    """The base64 body of a PEM certificate (as metadata carries it)."""
    lines = cert_path.read_text(encoding="ascii").strip().splitlines()
    return "".join(line for line in lines if not line.startswith("-----"))


def sha256_fingerprint(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


# -- the IdP application ------------------------------------------------------------


@dataclass
class IdpState:
    base_url: str
    directory: Path
    sp_metadata: list[str] = field(default_factory=list)
    signing: str = "a"  # which key signs: "a" or "b"
    rollover: bool = False  # list both signing certificates in the metadata
    sign_response: bool = False
    sign_assertion: bool = True
    encrypt_assertion: bool = False
    sha1: bool = False  # sign with RSA-SHA1 / SHA-1 digests (must be refused)
    authn_age: int = 0  # seconds to backdate AuthnInstant by (an old IdP login)
    # who is logged in at the IdP, per IdP session cookie value
    sessions: dict[str, str] = field(default_factory=dict)
    # (user, SP entity) -> (NameID, SessionIndex) for IdP-initiated logout
    issued: dict[str, dict[str, str]] = field(default_factory=dict)
    last_request: dict[str, Any] = field(default_factory=dict)
    last_logout: dict[str, Any] = field(default_factory=dict)


def _server(state: IdpState) -> Any:
    from saml2 import BINDING_HTTP_REDIRECT
    from saml2.config import IdPConfig
    from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_UNSPECIFIED
    from saml2.server import Server
    from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

    key, cert = make_keypair(state.directory, f"idp-{state.signing}", f"idp-{state.signing}")
    metadata_dir = state.directory / "sp-metadata"
    metadata_dir.mkdir(exist_ok=True)
    local = []
    for i, text in enumerate(state.sp_metadata):
        path = metadata_dir / f"sp-{i}.xml"
        path.write_text(text, encoding="utf-8")
        local.append(str(path))
    config = IdPConfig()
    config.load(
        {
            "entityid": state.base_url + "/metadata",
            "xmlsec_binary": XMLSEC1,
            "key_file": str(key),
            "cert_file": str(cert),
            "signing_algorithm": SIG_RSA_SHA256,
            "digest_algorithm": DIGEST_SHA256,
            "accepted_time_diff": 60,
            "attribute_map_dir": None,
            "service": {
                "idp": {
                    "name": "Test ADFS",
                    "endpoints": {
                        "single_sign_on_service": [
                            (state.base_url + "/sso/redirect", BINDING_HTTP_REDIRECT)
                        ],
                        "single_logout_service": [
                            (state.base_url + "/slo/redirect", BINDING_HTTP_REDIRECT)
                        ],
                    },
                    "name_id_format": [NAMEID_FORMAT_UNSPECIFIED],
                    "want_authn_requests_signed": True,
                    "policy": {
                        "default": {
                            "lifetime": {"minutes": 5},
                            "attribute_restrictions": None,
                            "name_form": NAME_FORMAT_URI,
                        }
                    },
                }
            },
            "metadata": {"local": local},
        }
    )
    return Server(config=config)


def idp_metadata(state: IdpState) -> str:
    """The IdP's metadata; with a rollover, the other key's certificate is
    listed as a second signing key."""
    from lxml import etree
    from saml2.metadata import create_metadata_string

    server = _server(state)
    text = str(create_metadata_string(None, server.config, valid=24).decode("utf-8"))
    if not state.rollover:
        return text
    other = "b" if state.signing == "a" else "a"
    _key, other_cert = make_keypair(state.directory, f"idp-{other}", f"idp-{other}")
    md = "urn:oasis:names:tc:SAML:2.0:metadata"
    ds = "http://www.w3.org/2000/09/xmldsig#"
    root = etree.fromstring(text.encode("utf-8"))
    idp = root.find(f"{{{md}}}IDPSSODescriptor")
    assert idp is not None
    descriptor = etree.Element(f"{{{md}}}KeyDescriptor", use="signing")
    info = etree.SubElement(descriptor, f"{{{ds}}}KeyInfo")
    data = etree.SubElement(info, f"{{{ds}}}X509Data")
    etree.SubElement(data, f"{{{ds}}}X509Certificate").text = cert_body(other_cert)
    idp.insert(0, descriptor)
    return str(etree.tostring(root, encoding="unicode"))


def create_app(state: IdpState) -> Any:
    import secrets

    from flask import Flask, Response, request
    from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
    from saml2.authn_context import PASSWORDPROTECTEDTRANSPORT
    from saml2.saml import NAMEID_FORMAT_UNSPECIFIED, NameID
    from saml2.xmldsig import DIGEST_SHA1, DIGEST_SHA256, SIG_RSA_SHA1, SIG_RSA_SHA256

    app = Flask("test-adfs")
    holder: dict[str, Any] = {}

    def server() -> Any:
        if "server" not in holder:
            holder["server"] = _server(state)
        return holder["server"]

    def reset() -> None:
        holder.pop("server", None)

    def login_page(next_url: str) -> Response:
        body = (
            "<!doctype html><title>Test ADFS sign-in</title>"
            '<form method="post" action="/login">'
            '<label for="user">User</label><input id="user" name="user" autofocus>'
            f'<input type="hidden" name="next" value="{html.escape(next_url)}">'
            "<button type=submit>Sign in at ADFS</button></form>"
        )
        return Response(body, 200, mimetype="text/html")

    @app.get("/metadata")
    def metadata() -> Response:
        return Response(idp_metadata(state), mimetype="application/samlmetadata+xml")

    @app.post("/login")
    def login() -> Response:
        user = request.form.get("user", "")
        if find_user(user) is None:
            return Response("unknown user", 403)
        cookie = secrets.token_urlsafe(16)
        state.sessions[cookie] = user
        resp = Response(status=303, headers={"Location": request.form.get("next") or "/"})
        resp.set_cookie("idp_session", cookie, httponly=True, samesite="Lax")
        return resp

    @app.get("/sso/redirect")
    def sso() -> Response:
        srv = server()
        args = request.args
        try:
            req = srv.parse_authn_request(
                args["SAMLRequest"],
                BINDING_HTTP_REDIRECT,
                relay_state=args.get("RelayState"),
                sigalg=args.get("SigAlg"),
                signature=args.get("Signature"),
            )
        except Exception as exc:  # noqa: BLE001 (an IdP answering a bad request)
            return Response(f"bad AuthnRequest: {type(exc).__name__}: {exc}", 400)
        if req is None:
            return Response("bad AuthnRequest", 400)
        message = req.message
        state.last_request = {
            "id": message.id,
            "force_authn": str(message.force_authn).lower() == "true",
            "signed": "Signature" in args,
            "sig_alg": args.get("SigAlg", ""),
            "issuer": message.issuer.text,
        }
        user = state.sessions.get(request.cookies.get("idp_session", ""))
        if user is None or state.last_request["force_authn"]:
            if request.args.get("_reauth") != "1" or user is None:
                # ForceAuthn: authenticate again (a fresh login form)
                return login_page(request.full_path + "&_reauth=1")
        assert user is not None
        return _post_response(message.issuer.text, message.id, user, args.get("RelayState", ""))

    def _post_response(
        sp_entity: str, in_response_to: str | None, user: str, relay_state: str
    ) -> Response:
        srv = server()
        person = find_user(user)
        assert person is not None  # signed in: known
        acs = srv.config.metadata.assertion_consumer_service(sp_entity, BINDING_HTTP_POST)[0]
        destination = acs["location"]
        name_id = NameID(format=NAMEID_FORMAT_UNSPECIFIED, text=person.name_id or person.upn)
        kwargs: dict[str, Any] = {}
        if state.encrypt_assertion:
            kwargs = {
                "encrypt_assertion": True,
                "encrypt_cert_assertion": _sp_cert(srv, sp_entity),
                # the self-contained mode renames namespace prefixes after
                # signing, which breaks pysaml2's own assertion signature
                "encrypt_assertion_self_contained": False,
            }
        response = srv.create_authn_response(
            person.claims(),
            in_response_to,
            destination,
            sp_entity,
            name_id=name_id,
            authn={
                "class_ref": PASSWORDPROTECTEDTRANSPORT,
                "authn_instant": int(time.time()) - state.authn_age,
            },
            sign_assertion=state.sign_assertion,
            sign_response=state.sign_response,
            sign_alg=SIG_RSA_SHA1 if state.sha1 else SIG_RSA_SHA256,
            digest_alg=DIGEST_SHA1 if state.sha1 else DIGEST_SHA256,
            **kwargs,
        )
        state.issued[user] = {
            "sp": sp_entity,
            "name_id": person.name_id or person.upn,
            "session_index": _session_index(str(response)),
        }
        info = srv.apply_binding(
            BINDING_HTTP_POST, str(response), destination, relay_state, response=True
        )
        return Response(info["data"], 200, mimetype="text/html")

    @app.get("/slo/redirect")
    def slo() -> Response:
        srv = server()
        args = request.args
        if "SAMLResponse" in args:  # the SP answers our IdP-initiated logout
            try:
                resp = srv.parse_logout_request_response(
                    args["SAMLResponse"], BINDING_HTTP_REDIRECT
                )
            except Exception as exc:  # noqa: BLE001
                return Response(f"bad LogoutResponse: {exc}", 400)
            state.last_logout = {
                "response_status": resp.response.status.status_code.value,
                "in_response_to": resp.response.in_response_to,
                "signed": "Signature" in args,
            }
            return Response("logged out at the IdP", 200)
        try:
            req = srv.parse_logout_request(
                args["SAMLRequest"],
                BINDING_HTTP_REDIRECT,
                relay_state=args.get("RelayState"),
                sigalg=args.get("SigAlg"),
                signature=args.get("Signature"),
            )
        except Exception as exc:  # noqa: BLE001
            return Response(f"bad LogoutRequest: {type(exc).__name__}: {exc}", 400)
        if req is None:
            return Response("bad LogoutRequest", 400)
        message = req.message
        state.last_logout = {
            "name_id": message.name_id.text if message.name_id is not None else None,
            "session_index": [s.text for s in message.session_index],
            "signed": "Signature" in args,
            "sig_alg": args.get("SigAlg", ""),
        }
        state.sessions.pop(request.cookies.get("idp_session", ""), None)
        sp_entity = message.issuer.text
        slo_services = srv.config.metadata.single_logout_service(
            sp_entity, BINDING_HTTP_REDIRECT, "spsso"
        )
        destination = slo_services[0]["location"]
        response = srv.create_logout_response(message, [BINDING_HTTP_REDIRECT], sign=False)
        info = srv.apply_binding(
            BINDING_HTTP_REDIRECT,
            str(response),
            destination,
            args.get("RelayState", ""),
            response=True,
            sign=True,
            sigalg=SIG_RSA_SHA1 if state.sha1 else SIG_RSA_SHA256,
        )
        location = dict(info["headers"])["Location"]
        return Response(status=302, headers={"Location": location})

    @app.post("/_admin/sp")
    def register_sp() -> Response:
        text = request.get_data(as_text=True)
        state.sp_metadata = [text]
        reset()
        return Response("ok")

    @app.post("/_admin/settings")
    def settings() -> Response:
        data = request.get_json(force=True)
        for key in ("signing", "rollover", "sign_response", "sign_assertion",
                    "encrypt_assertion", "sha1", "authn_age"):  # fmt: skip
            if key in data:
                setattr(state, key, data[key])
        reset()
        return Response("ok")

    @app.post("/_admin/unsolicited")
    def unsolicited() -> Response:
        """An IdP-initiated (unsolicited) login of ``user`` at the only SP."""
        data = request.get_json(force=True)
        srv = server()
        sp_entity = next(iter(srv.metadata.with_descriptor("spsso")))
        return _post_response(sp_entity, None, data["user"], data.get("relay_state", ""))

    @app.get("/_admin/last-request")
    def last_request() -> Response:
        return Response(json.dumps(state.last_request), mimetype="application/json")

    @app.get("/_admin/last-logout")
    def last_logout() -> Response:
        return Response(json.dumps(state.last_logout), mimetype="application/json")

    @app.post("/_admin/logout")
    def idp_initiated_logout() -> Response:
        """A signed LogoutRequest for ``user``'s last login, as a redirect URL
        to the SP's SLO endpoint (the test sends the browser there)."""
        srv = server()
        user = request.get_json(force=True)["user"]
        issued = state.issued[user]
        slo_services = srv.config.metadata.single_logout_service(
            issued["sp"], BINDING_HTTP_REDIRECT, "spsso"
        )
        destination = slo_services[0]["location"]
        _id, message = srv.create_logout_request(
            destination,
            issued["sp"],
            name_id=NameID(format=NAMEID_FORMAT_UNSPECIFIED, text=issued["name_id"]),
            session_indexes=[issued["session_index"]] if issued["session_index"] else None,
            sign=False,
        )
        info = srv.apply_binding(
            BINDING_HTTP_REDIRECT,
            str(message),
            destination,
            "",
            response=False,
            sign=True,
            sigalg=SIG_RSA_SHA1 if state.sha1 else SIG_RSA_SHA256,
        )
        return Response(
            json.dumps({"url": dict(info["headers"])["Location"], "id": _id}),
            mimetype="application/json",
        )

    return app


def _sp_cert(srv: Any, sp_entity: str) -> str:
    certs = srv.metadata.certs(sp_entity, "spsso", use="encryption")
    return str(certs[0][1]) if certs else ""


def _session_index(response_xml: str) -> str:
    import re

    match = re.search(r'SessionIndex="([^"]+)"', response_xml)
    return match.group(1) if match else ""


# -- the process ------------------------------------------------------------------


class SamlIdp:
    """The IdP as a child process on a loopback port (stopped by its PID)."""

    def __init__(self, directory: Path) -> None:
        from tests.peers import free_port, require_binary

        require_binary("xmlsec1", "the SAML IdP (pysaml2) signs with the xmlsec1 binary")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = directory / "idp.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.http = requests.Session()
        self.http.trust_env = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def entity_id(self) -> str:
        return self.url + "/metadata"

    def key_files(self, which: str = "a") -> tuple[Path, Path]:
        return make_keypair(self.directory, f"idp-{which}", f"idp-{which}")

    def start(self, timeout: float = 20.0) -> None:
        from tests.peers import child_env

        self.key_files("a")
        self.key_files("b")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.saml_idp", "--port", str(self.port),
                 "--dir", str(self.directory)],
                cwd=Path(__file__).resolve().parents[1],
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                if self.http.get(self.url + "/metadata", timeout=2).status_code == 200:
                    return
            except requests.RequestException:  # refused, or accepted by a worker still booting
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the SAML IdP did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        from tests.peers import stop_process

        process, self._process = self._process, None
        stop_process(process)
        self.http.close()

    # -- steering ----------------------------------------------------------------
    def register_sp(self, metadata_xml: str) -> None:
        r = self.http.post(self.url + "/_admin/sp", data=metadata_xml.encode(), timeout=10)
        r.raise_for_status()

    def configure(self, **options: Any) -> None:
        defaults = {"signing": "a", "rollover": False, "sign_response": False,
                    "sign_assertion": True, "encrypt_assertion": False, "sha1": False,
                    "authn_age": 0}  # fmt: skip
        defaults.update(options)
        r = self.http.post(self.url + "/_admin/settings", json=defaults, timeout=10)
        r.raise_for_status()

    def metadata(self) -> str:
        return self.http.get(self.url + "/metadata", timeout=10).text

    def last_request(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get(self.url + "/_admin/last-request", timeout=10).json()
        return data

    def last_logout(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get(self.url + "/_admin/last-logout", timeout=10).json()
        return data

    def unsolicited_form(self, user: str, relay_state: str = "") -> dict[str, str]:
        r = self.http.post(
            self.url + "/_admin/unsolicited",
            json={"user": user, "relay_state": relay_state},
            timeout=10,
        )
        r.raise_for_status()
        fields = _inputs(r.text)
        fields["action"] = _form_action(r.text)
        return fields

    def logout_request_url(self, user: str) -> str:
        r = self.http.post(self.url + "/_admin/logout", json={"user": user}, timeout=10)
        r.raise_for_status()
        return str(r.json()["url"])

    def browser(self) -> requests.Session:
        """A fresh browser-side HTTP client for the IdP's pages (its own cookies)."""
        session = requests.Session()
        session.trust_env = False
        return session


def sign_in_at_idp(browser: requests.Session, sso_url: str, user: str) -> dict[str, str]:
    """Follow the SP's redirect to the IdP as a browser does, log in as ``user``
    when asked, and return the auto-POST form's fields plus its ``action``."""
    page = browser.get(sso_url, timeout=10, allow_redirects=True)
    if 'action="/login"' in page.text:
        fields = _inputs(page.text)
        page = browser.post(
            page.url.split("/sso/")[0] + "/login",
            data={"user": user, "next": fields["next"]},
            timeout=10,
        )
    assert page.status_code == 200, page.text
    fields = _inputs(page.text)
    action = _form_action(page.text)
    assert "SAMLResponse" in fields, page.text
    fields["action"] = action
    return fields


def _inputs(text: str) -> dict[str, str]:
    import re

    out = {}
    for match in re.finditer(r"<input([^>]*)>", text):
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if "name" in attrs:
            out[attrs["name"]] = html.unescape(attrs.get("value", ""))
    return out


def _form_action(text: str) -> str:
    import re

    match = re.search(r'<form[^>]*action="([^"]*)"', text)
    assert match, text
    return html.unescape(match.group(1))


def decode_response(saml_response: str) -> bytes:
    return base64.b64decode(saml_response)


def encode_response(xml: bytes | str) -> str:
    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    return base64.b64encode(data).decode("ascii")


def iter_users() -> Iterator[IdpUser]:
    return iter(USERS.values())


def main() -> None:
    parser = argparse.ArgumentParser(description="test SAML IdP (pysaml2)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    state = IdpState(base_url=f"http://127.0.0.1:{args.port}", directory=args.dir)
    app = create_app(state)
    from werkzeug.serving import make_server

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    server = make_server("127.0.0.1", args.port, app, threaded=False)
    print(f"test IdP on {state.base_url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
