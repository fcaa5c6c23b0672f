"""Metadata both ways: the SP metadata the gateway publishes (read by a second
SAML library, signature checked by the xmlsec1 tool) and the IdP metadata it
loads (URL or file, refresh, certificate rollover, fingerprint pinning, a URL
whose redirects may not lower the scheme)."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.md import entity_descriptor_from_string

from gateway.core.errors import ConfigError
from gateway.providers.saml import (
    MetadataRedirectRefused,
    SamlServiceProvider,
    SamlUnavailable,
    _default_fetch,
)
from gateway.settings import load_settings
from gateway.settings_saml import SamlSettings
from tests.flows.conftest import Gateway
from tests.integration.pki import make_pki
from tests.peers import require_binary
from tests.saml.conftest import ACS_URL, PUBLIC_URL, SP_ENTITY_ID, saml_login
from tests.saml_idp import SamlIdp, cert_body, sha256_fingerprint


def test_sp_metadata_parses_with_pysaml2_and_is_signed(
    sgw: Gateway, sp_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    r = sgw.get("/.sso/saml/metadata")
    assert r.status_code == 200
    assert r.mimetype == "application/samlmetadata+xml"
    text = r.get_data(as_text=True)
    entity = entity_descriptor_from_string(text)
    assert entity.entity_id == SP_ENTITY_ID
    sp = entity.spsso_descriptor[0]
    assert sp.authn_requests_signed == "true"
    assert sp.want_assertions_signed == "true"
    acs = sp.assertion_consumer_service[0]
    assert (acs.location, acs.binding) == (ACS_URL, BINDING_HTTP_POST)
    slo = sp.single_logout_service[0]
    assert (slo.location, slo.binding) == (
        PUBLIC_URL + "/.sso/saml/slo",
        BINDING_HTTP_REDIRECT,
    )
    uses = {kd.use for kd in sp.key_descriptor}
    assert uses == {"signing", "encryption"}
    body = cert_body(sp_keys[1])
    for kd in sp.key_descriptor:
        assert kd.key_info.x509_data[0].x509_certificate.text.replace("\n", "") == body
    assert entity.signature is not None
    # the signature verifies with the xmlsec1 tool and the SP certificate
    xmlsec1 = require_binary("xmlsec1", "checks the metadata signature")
    path = tmp_path / "sp.xml"
    path.write_text(text, encoding="utf-8")
    checked = subprocess.run(
        [xmlsec1, "--verify", "--pubkey-cert-pem", str(sp_keys[1]),
         "--id-attr:ID", "urn:oasis:names:tc:SAML:2.0:metadata:EntityDescriptor", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    # a changed document no longer verifies
    path.write_text(text.replace(ACS_URL, ACS_URL + "x"), encoding="utf-8")
    tampered = subprocess.run(
        [xmlsec1, "--verify", "--pubkey-cert-pem", str(sp_keys[1]),
         "--id-attr:ID", "urn:oasis:names:tc:SAML:2.0:metadata:EntityDescriptor", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert tampered.returncode != 0


def test_certificate_rollover(make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp) -> None:
    """The IdP publishes its old and new signing certificates: responses signed
    with either are accepted."""
    gw = make_saml_gateway(idp_options={"rollover": True, "signing": "a"})
    assert saml_login(gw, saml_idp, "alice").status_code == 303
    saml_idp.configure(rollover=True, signing="b")
    assert saml_login(gw, saml_idp, "bob", prompt=True).status_code == 303
    loaded = gw.events("saml_metadata_loaded")
    assert len(loaded[-1]["signing_certs"]) == 2


def test_new_key_without_rollover_is_refused_until_metadata_refresh(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway()
    assert saml_login(gw, saml_idp, "alice").status_code == 303
    saml_idp.configure(signing="b")  # new key, announced only in new metadata
    assert saml_login(gw, saml_idp, "alice", prompt=True).status_code == 401
    assert "signature" in gw.events("login_failed")[-1]["reason"].lower()
    assert gw.services.saml is not None
    gw.services.saml.refresh()
    assert saml_login(gw, saml_idp, "alice", prompt=True).status_code == 303


def test_pinned_fingerprint_ignores_other_certificates(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    pinned = sha256_fingerprint(saml_idp.key_files("a")[1])
    gw = make_saml_gateway(
        idp_options={"rollover": True, "signing": "b"},
        idp_cert_fingerprints=[":".join(pinned[i : i + 2] for i in range(0, 64, 2))],
    )
    r = saml_login(gw, saml_idp, "alice")
    assert r.status_code == 401  # signed with b, which the metadata lists but we do not trust
    ignored = gw.events("saml_metadata_cert_ignored")
    assert ignored and ignored[-1]["fingerprints"] == [
        sha256_fingerprint(saml_idp.key_files("b")[1])
    ]
    saml_idp.configure(rollover=True, signing="a")
    assert saml_login(gw, saml_idp, "alice").status_code == 303


def test_metadata_without_a_trusted_certificate_is_refused(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway(idp_cert_fingerprints=["ab" * 32])
    r = gw.get("/.sso/start")
    assert r.status_code == 503
    assert gw.events("saml_metadata_failed")[-1]["reason"].endswith(
        "no (trusted) signing certificate"
    )
    assert gw.events("saml_unavailable")


def _provider(
    tmp_path: Path, sp_keys: tuple[Path, Path], metadata: Path, **kw: object
) -> tuple[SamlServiceProvider, list[tuple[str, dict[str, object]]], list[float]]:
    events: list[tuple[str, dict[str, object]]] = []
    clock = [0.0]
    settings = SamlSettings.model_validate(
        {"sp_key_file": sp_keys[0], "sp_cert_file": sp_keys[1], "idp_metadata_file": metadata,
         **kw}
    )  # fmt: skip
    sp = SamlServiceProvider(
        settings,
        public_url=PUBLIC_URL,
        resolve_path=lambda p: p,
        emit=lambda event, **fields: events.append((event, fields)),
        monotonic=lambda: clock[0],
    )
    return sp, events, clock


def test_metadata_file_is_refreshed_and_a_broken_one_keeps_the_old(
    saml_idp: SamlIdp, sp_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    saml_idp.configure()
    metadata = tmp_path / "FederationMetadata.xml"
    metadata.write_text(saml_idp.metadata(), encoding="utf-8")
    sp, events, clock = _provider(tmp_path, sp_keys, metadata, idp_metadata_refresh=600)
    first = sp._current()
    assert sp.idp_entity_id == saml_idp.entity_id
    saml_idp.configure(rollover=True)
    metadata.write_text(saml_idp.metadata(), encoding="utf-8")
    clock[0] = 599
    assert sp._current() is first  # not yet due
    clock[0] = 601
    second = sp._current()
    assert len(second.fingerprints) == 2
    metadata.write_text("<not metadata", encoding="utf-8")
    clock[0] = 1300
    assert sp._current() is second  # kept, and the failure audited
    assert events[-1][0] == "saml_metadata_failed"
    assert events[-1][1]["kept_previous"] is True
    saml_idp.configure()


@pytest.mark.parametrize(
    "text",
    [
        '<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><m>&x;</m>',
        "<EntityDescriptor xmlns='urn:oasis:names:tc:SAML:2.0:metadata' entityID='x'/>",
        "",
    ],
    ids=["xxe", "no-idp", "empty"],
)
def test_bad_idp_metadata_makes_saml_unavailable(
    sp_keys: tuple[Path, Path], tmp_path: Path, text: str
) -> None:
    metadata = tmp_path / "md.xml"
    metadata.write_text(text, encoding="utf-8")
    sp, events, _clock = _provider(tmp_path, sp_keys, metadata)
    with pytest.raises(SamlUnavailable):
        sp.login_redirect("h", force_authn=False)
    assert events[-1][0] == "saml_metadata_failed"
    assert events[-1][1]["kept_previous"] is False


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def test_settings_problems_are_listed(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        "providers:\n  default: saml\n  saml:\n    sp_cert_file: a.crt\n    sp_key_file: a.key\n"
        "    idp_metadata_url: http://adfs.corp.test/FederationMetadata/2007-06/"
        "FederationMetadata.xml\n    clock_skew: 900\n    idp_cert_fingerprints: [abc]\n"
        "    surprise: 1\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    text = str(caught.value)
    assert "providers.saml.clock_skew" in text
    assert "providers.saml.idp_cert_fingerprints" in text
    assert "providers.saml.surprise: unknown key" in text


def test_settings_need_public_url_and_one_metadata_source(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        "providers:\n  default: saml\n  saml:\n    sp_cert_file: a.crt\n    sp_key_file: a.key\n"
        "    idp_metadata_url: https://adfs.corp.test/FederationMetadata/2007-06/"
        "FederationMetadata.xml\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert "public_url: required with providers.saml" in str(caught.value)
    both = _config(
        tmp_path,
        "public_url: https://sso.corp.test\nproviders:\n  saml:\n    sp_cert_file: a.crt\n"
        "    sp_key_file: a.key\n    idp_metadata_file: md.xml\n"
        "    idp_metadata_url: https://adfs.corp.test/md.xml\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(both, environ={})
    assert "exactly one of idp_metadata_file and idp_metadata_url" in str(caught.value)
    missing = _config(tmp_path, "providers:\n  default: saml\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(missing, environ={})
    assert "providers.saml: required when providers.default is 'saml'" in str(caught.value)


def test_metadata_endpoint_without_saml(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    assert gw.get("/.sso/saml/metadata").status_code == 404
    assert gw.post("/.sso/saml/acs", data={"SAMLResponse": "x"}).status_code == 404
    assert gw.get("/.sso/saml/slo").status_code == 404
    assert gw.get("/.sso/start", query_string={"provider": "saml"}).status_code == 400


def test_check_reports_unusable_saml_files(
    saml_idp: SamlIdp, sp_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    from gateway.cli import main

    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "site.yaml").write_text(
        "tiers: {admin: {rank: 1, groups: [Intercom-Admins]}}\n"
        "routes: [{name: all, hosts: [sso.corp.test], path: /, allow: [admin]}]\n",
        encoding="utf-8",
    )
    saml_idp.configure()
    (tmp_path / "bad.key").write_text("not a key", encoding="utf-8")
    metadata = tmp_path / "md.xml"
    metadata.write_text(saml_idp.metadata(), encoding="utf-8")
    body = (
        "public_url: https://sso.corp.test\npolicies_dir: policies\n"
        "providers:\n  default: saml\n  saml:\n"
        f"    sp_cert_file: {sp_keys[1]}\n    sp_key_file: {{key}}\n"
        f"    idp_metadata_file: {metadata}\n    idp_cert_fingerprints: [{{fp}}]\n"
    )
    good = _config(tmp_path, body.format(key=sp_keys[0], fp=sha256_fingerprint(
        saml_idp.key_files("a")[1])))  # fmt: skip
    assert main(["--config", str(good), "check"]) == 0
    bad = _config(tmp_path, body.format(key=tmp_path / "bad.key", fp="00" * 32))
    assert main(["--config", str(bad), "check"]) == 1
    untrusted = _config(tmp_path, body.format(key=sp_keys[0], fp="00" * 32))
    assert main(["--config", str(untrusted), "check"]) == 1


def test_metadata_load_failures_are_not_retried_on_every_request(
    saml_idp: SamlIdp, sp_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    metadata = tmp_path / "md.xml"
    metadata.write_text("<broken", encoding="utf-8")
    sp, events, clock = _provider(tmp_path, sp_keys, metadata)
    for _ in range(3):
        with pytest.raises(SamlUnavailable):
            sp.login_redirect("h", force_authn=False)
    assert [e for e, _ in events] == ["saml_metadata_failed"]  # one try, not three
    saml_idp.configure()
    metadata.write_text(saml_idp.metadata(), encoding="utf-8")
    clock[0] = 9
    with pytest.raises(SamlUnavailable):
        sp.login_redirect("h", force_authn=False)
    clock[0] = 11  # the IdP is back: the next try after 10 s succeeds
    _request_id, url = sp.login_redirect("h", force_authn=False)
    assert url.startswith(saml_idp.url + "/sso/redirect?SAMLRequest=")
    assert events[-1][0] == "saml_metadata_loaded"


# -- fetching the metadata: redirects never lower the scheme ---------------------------


class _Server:
    """A loopback HTTP(S) server in a thread answering every GET with
    ``answer(path) -> (status, headers, body)``; records the paths asked for."""

    def __init__(
        self,
        answer: Callable[[str], tuple[int, dict[str, str], bytes]],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hits.append(self.path)
                status, headers, body = answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(key, certificate, CA) of the tests' throwaway PKI: a server certificate
    for 127.0.0.1 (the metadata server's name)."""
    pki = make_pki(tmp_path_factory.mktemp("metadata-tls"))
    return pki.server_key, pki.server_cert, pki.ca


def _tls(tls_files: tuple[Path, Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting only that PKI)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(tls_files[1]), str(tls_files[0]))
    client = ssl.create_default_context(cafile=str(tls_files[2]))
    return server, client


METADATA_BODY = b"<md>the metadata</md>"


def _serve(path: str) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/samlmetadata+xml"}, METADATA_BODY


def _redirect(
    location: str, status: int = 302
) -> Callable[[str], tuple[int, dict[str, str], bytes]]:
    return lambda path: (status, {"Location": location}, b"")


def test_https_metadata_redirected_to_http_is_refused(
    sp_keys: tuple[Path, Path], tls_files: tuple[Path, Path, Path]
) -> None:
    """An on-path attacker who can make the https endpoint redirect (or who
    answers a redirect's target) must not get to serve the trust anchor over
    plain http: the fetch stops before the http request is made, and the
    provider reports why."""
    server_tls, client_tls = _tls(tls_files)
    with _Server(_serve) as plain:
        target = plain.url + "/FederationMetadata.xml"
        with _Server(_redirect(target), server_tls) as https:
            url = https.url + "/FederationMetadata.xml"
            with pytest.raises(MetadataRedirectRefused, match="only https"):
                _default_fetch(url, 5, context=client_tls)
            settings = SamlSettings.model_validate(
                {"sp_key_file": sp_keys[0], "sp_cert_file": sp_keys[1], "idp_metadata_url": url}
            )
            events: list[tuple[str, dict[str, object]]] = []
            sp = SamlServiceProvider(
                settings,
                public_url=PUBLIC_URL,
                resolve_path=lambda p: p,
                emit=lambda event, **fields: events.append((event, fields)),
                fetch=lambda u, t: _default_fetch(u, t, context=client_tls),
            )
            with pytest.raises(SamlUnavailable):
                sp.refresh()
    assert plain.hits == []
    assert events[-1][0] == "saml_metadata_failed"
    assert "MetadataRedirectRefused" in str(events[-1][1]["reason"])
    assert "http://127.0.0.1" in str(events[-1][1]["reason"])


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/md.xml", "file:///etc/passwd"])
def test_metadata_redirect_to_another_scheme_is_refused(
    tls_files: tuple[Path, Path, Path], location: str
) -> None:
    server_tls, client_tls = _tls(tls_files)
    with _Server(_redirect(location, 301), server_tls) as https:
        with pytest.raises((MetadataRedirectRefused, urllib.error.HTTPError)):
            _default_fetch(https.url + "/md", 5, context=client_tls)


def test_https_metadata_redirected_to_https_is_followed(tls_files: tuple[Path, Path, Path]) -> None:
    server_tls, client_tls = _tls(tls_files)
    with _Server(_serve, server_tls) as final:
        target = final.url + "/FederationMetadata/2007-06/FederationMetadata.xml"
        with _Server(_redirect(target, 301), server_tls) as first:
            assert _default_fetch(first.url + "/md", 5, context=client_tls) == METADATA_BODY
    assert final.hits == ["/FederationMetadata/2007-06/FederationMetadata.xml"]


def test_http_metadata_url_allowed_for_tests_may_redirect_to_http_or_https(
    tls_files: tuple[Path, Path, Path],
) -> None:
    """``allow_http_metadata_url`` lets an http URL through the settings (tests
    only); its redirects may stay on http or go to https, and no further."""
    server_tls, client_tls = _tls(tls_files)
    with _Server(_serve) as plain, _Server(_serve, server_tls) as https:
        for target in (plain.url + "/md", https.url + "/md"):
            with _Server(_redirect(target)) as first:
                assert _default_fetch(first.url + "/x", 5, context=client_tls) == METADATA_BODY
        with _Server(_redirect("ftp://127.0.0.1/md")) as first:
            with pytest.raises((MetadataRedirectRefused, urllib.error.HTTPError)):
                _default_fetch(first.url + "/x", 5, context=client_tls)
    assert plain.hits == ["/md"] and https.hits == ["/md"]


def test_metadata_url_must_be_https_unless_allowed(sp_keys: tuple[Path, Path]) -> None:
    base = {"sp_key_file": sp_keys[0], "sp_cert_file": sp_keys[1]}
    with pytest.raises(ValueError, match="https"):
        SamlSettings.model_validate({**base, "idp_metadata_url": "http://idp.test/md"})
    with pytest.raises(ValueError, match="https"):
        SamlSettings.model_validate(
            {**base, "idp_metadata_url": "ftp://idp.test/md", "allow_http_metadata_url": True}
        )
    SamlSettings.model_validate(
        {**base, "idp_metadata_url": "http://idp.test/md", "allow_http_metadata_url": True}
    )
