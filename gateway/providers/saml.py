"""SAML 2.0 service provider (ADFS and other IdPs) on python3-saml.

The adapter translates SAML into an :class:`Identity` and protocol facts; it
never decides access, and it keeps no login state itself (the views keep the
request IDs, RelayState handles and the replay cache in the session store).

Every XML signature, digest, decryption and canonicalisation is done by
python3-saml / xmlsec.  On top of the library's strict mode this module adds:

* a pre-screen of the raw XML: no DTD, no entity declarations, no comments or
  processing instructions (a comment inside a NameID is how the "comment
  injection" attack truncates a name; legitimate IdPs never send any);
* exact checks of Destination and Recipient against this gateway's ACS URL
  (the library compares prefixes) and of InResponseTo against the request this
  gateway issued (or its absence: unsolicited responses are refused unless
  allowed);
* ``NotBefore``/``NotOnOrAfter`` with the configured clock skew, on the
  gateway's clock (the library's drift is a fixed 300 s);
* an ``AudienceRestriction`` is required and every one must name this SP
  (SAML core 2.5.1.4: each must hold; the library merges them into one list);
* encrypted parts must use RSA-OAEP key transport (no RSA PKCS#1 v1.5), checked
  before anything is decrypted;
* HTTP-Redirect (Single Logout) messages are read from the raw query string:
  each protocol parameter exactly once and literally named, the signature
  verified over exactly those raw parts before anything is inflated, and the
  inflated message capped at :data:`MAX_INFLATED` bytes;
* a LogoutRequest's ``IssueInstant`` must be recent (``request_lifetime``, with
  the clock skew);
* the IdP metadata URL never follows a redirect to a weaker scheme.

Errors are :class:`AuthenticationFailed` with a reason for the audit log.
"""

from __future__ import annotations

import hashlib
import re
import ssl
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote_plus, urlsplit

from lxml import etree
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.logout_request import OneLogin_Saml2_Logout_Request
from onelogin.saml2.metadata import OneLogin_Saml2_Metadata
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from gateway.core.errors import AuthenticationFailed, GatewayError, Problem
from gateway.core.model import Identity
from gateway.settings_saml import SamlSettings

PROVIDER = "saml"
ACS_PATH = "/.sso/saml/acs"
SLO_PATH = "/.sso/saml/slo"
METADATA_PATH = "/.sso/saml/metadata"
MAX_METADATA_BYTES = 1024 * 1024
MAX_SUBJECT = 256
# a SAMLResponse posted to the ACS, base64 (the view's body limit is the same):
# at most 768 KiB of XML; the POST binding is not compressed, and a decrypted
# assertion is no larger than its ciphertext
MAX_RESPONSE_CHARS = 1024 * 1024
# a LogoutRequest / LogoutResponse of the HTTP-Redirect binding, inflated (real
# ones are a few KiB; the deflated value in an 8 KiB URL could inflate to MBs)
MAX_INFLATED = 256 * 1024
# the parameters of the HTTP-Redirect binding (SAML bindings 3.4.4)
REDIRECT_PARAMETERS = ("SAMLRequest", "SAMLResponse", "RelayState", "SigAlg", "Signature")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._~-]+")
_REDIRECT_SIG_ALGS = frozenset({C.RSA_SHA256, C.RSA_SHA384, C.RSA_SHA512})
# key transport for encrypted assertions: RSA-OAEP only (PKCS#1 v1.5 invites
# padding-oracle attacks on the SP key)
XENC = "http://www.w3.org/2001/04/xmlenc#"
KEY_TRANSPORTS = frozenset({XENC + "rsa-oaep-mgf1p", "http://www.w3.org/2009/xmlenc11#rsa-oaep"})
# after a failed metadata load, seconds before the next try (with / without an
# older copy in force)
RETRY_KEPT = 60.0
RETRY_NONE = 10.0

Emit = Callable[..., Any]
Fetch = Callable[[str, float], bytes]


class SamlUnavailable(GatewayError):
    """The IdP's metadata could not be loaded: SAML sign-in cannot start."""


@dataclass(frozen=True)
class SamlLogin:
    """What a valid response proved, and what logout needs later."""

    identity: Identity
    assertion_id: str
    issuer: str
    in_response_to: str | None
    not_on_or_after: float
    authn_instant: float
    name_id: str
    name_id_format: str | None
    name_id_nq: str | None
    name_id_spnq: str | None
    session_index: str | None

    def logout_facts(self) -> dict[str, Any]:
        """What is kept server-side with the session, for Single Logout."""
        return {
            "name_id": self.name_id,
            "name_id_format": self.name_id_format,
            "name_id_nq": self.name_id_nq,
            "name_id_spnq": self.name_id_spnq,
            "session_index": self.session_index,
        }


@dataclass(frozen=True)
class LogoutRequestFacts:
    """A verified LogoutRequest from the IdP."""

    request_id: str
    issuer: str
    name_id: str
    session_indexes: tuple[str, ...]
    response_url: str  # the signed LogoutResponse to send the browser to
    # until when (gateway clock) this request would still be accepted: how long
    # its ID must be remembered against a replay
    accepted_until: float


@dataclass(frozen=True)
class RedirectMessage:
    """A message of the HTTP-Redirect binding, read from the raw query string
    (:func:`read_redirect_query`)."""

    kind: str  # "SAMLRequest" or "SAMLResponse"
    raw: Mapping[str, str]  # protocol parameter -> its value as sent (percent-encoded)
    args: Mapping[str, str]  # the same, decoded

    def signed_octets(self) -> str:
        """What the Redirect-binding signature covers (SAML bindings 3.4.4.1):
        the raw ``SAMLRequest``/``SAMLResponse``, ``RelayState`` (when sent) and
        ``SigAlg`` parts, in that order."""
        names = (self.kind, "RelayState", "SigAlg")
        return "&".join(f"{name}={self.raw[name]}" for name in names if name in self.raw)

    def query_string(self) -> str:
        """The accepted parameters only, as sent (for python3-saml, which
        rebuilds the signed octets from it as well)."""
        return "&".join(f"{name}={value}" for name, value in self.raw.items())


def read_redirect_query(query_string: str) -> RedirectMessage:
    """The SAML parameters of a raw query string, refusing anything that could
    read one way to the signature check and another to the code that acts on
    it: a parameter name that is percent-encoded (or otherwise not plain), a
    protocol parameter sent twice or without a value (``RelayState=`` may be
    empty, but not bare), both or neither of
    ``SAMLRequest`` and ``SAMLResponse``.  Other plain parameters are ignored."""
    if not query_string.isascii():
        raise AuthenticationFailed("query string is not ASCII")
    raw: dict[str, str] = {}
    for part in query_string.split("&"):
        if not part:
            continue
        name, has_value, value = part.partition("=")
        if not _PLAIN_NAME.fullmatch(name):
            raise AuthenticationFailed(
                f"query parameter name {name[:40]!r} is percent-encoded or not plain"
            )
        if name not in REDIRECT_PARAMETERS:
            continue
        if name in raw:
            raise AuthenticationFailed(f"{name} appears twice in the query string")
        # an empty RelayState is still a part the signature covers
        if not has_value or (not value and name != "RelayState"):
            raise AuthenticationFailed(f"{name} has no value")
        raw[name] = value
    kinds = [name for name in ("SAMLRequest", "SAMLResponse") if name in raw]
    if len(kinds) != 1:
        raise AuthenticationFailed(
            "both SAMLRequest and SAMLResponse" if kinds else "no SAMLRequest or SAMLResponse"
        )
    return RedirectMessage(
        kind=kinds[0], raw=raw, args={name: unquote_plus(value) for name, value in raw.items()}
    )


@dataclass
class _Idp:
    data: dict[str, Any]
    fingerprints: tuple[str, ...]
    settings: OneLogin_Saml2_Settings
    loaded_at: float
    version: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


class MetadataRedirectRefused(ValueError):
    """The metadata URL redirected to a scheme it may not go to."""


class _NoDowngradeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to one of ``schemes``: from an https URL to https
    alone, never to plain http (nor ftp, which urllib would follow too)."""

    def __init__(self, schemes: frozenset[str]) -> None:
        super().__init__()
        self._schemes = schemes

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        scheme = urlsplit(newurl).scheme.lower()
        if scheme not in self._schemes:
            raise MetadataRedirectRefused(
                f"the metadata URL redirected to {newurl[:120]!r}: refused, "
                f"only {' or '.join(sorted(self._schemes))} may follow {req.full_url[:80]!r}"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _default_fetch(url: str, timeout: float, *, context: ssl.SSLContext | None = None) -> bytes:
    """GET the IdP metadata.  ``url`` is https (or http, where the settings
    allow it for tests); a redirect may not lower the scheme (from https only to
    https).  ``context``: the TLS context (tests; default: the system's)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("https", "http"):
        raise ValueError(f"the metadata URL is not http(s): {url[:120]!r}")
    schemes = frozenset({"https"}) if scheme == "https" else frozenset({"http", "https"})
    opener = urllib.request.build_opener(
        _NoDowngradeRedirects(schemes), urllib.request.HTTPSHandler(context=context)
    )
    request = urllib.request.Request(url, headers={"Accept": "application/samlmetadata+xml"})  # noqa: S310 (https only unless allowed)
    with opener.open(request, timeout=timeout) as answer:
        data: bytes = answer.read(MAX_METADATA_BYTES + 1)
    if len(data) > MAX_METADATA_BYTES:
        raise ValueError("the metadata is larger than 1 MiB")
    return data


def cert_fingerprint(cert_b64: str) -> str:
    """SHA-256 of a certificate's DER bytes, as lower-case hex."""
    der = OneLogin_Saml2_Utils.b64decode("".join(cert_b64.split()))
    return hashlib.sha256(der).hexdigest()


# -- the raw-XML pre-screen --------------------------------------------------------

_SAFE_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=False,
    remove_pis=False,
    collect_ids=False,
)


def screen_xml(data: bytes) -> Any:
    """Refuse XML a SAML message never needs: a DTD (XXE, entity expansion),
    comments and processing instructions (NameID comment injection).  Returns
    the parsed root element (lxml)."""
    lowered = data.lower()
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        raise AuthenticationFailed("xml has a DTD or entity declaration")
    try:
        root = etree.fromstring(data, _SAFE_PARSER)
    except etree.XMLSyntaxError as exc:
        raise AuthenticationFailed(f"xml does not parse: {str(exc)[:120]}") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise AuthenticationFailed("xml has a DTD")
    for node in root.iter():
        if isinstance(node, etree._Comment):
            raise AuthenticationFailed("xml contains a comment")
        if isinstance(node, etree._ProcessingInstruction):
            raise AuthenticationFailed("xml contains a processing instruction")
    for sibling in (*root.itersiblings(preceding=True), *root.itersiblings()):
        if isinstance(sibling, etree._Comment | etree._ProcessingInstruction):
            raise AuthenticationFailed("xml contains a comment or processing instruction")
    return root


def check_key_transport(root: Any) -> None:
    """Refuse encrypted parts whose key is not sent with RSA-OAEP (above all
    RSA PKCS#1 v1.5, ``xmlenc#rsa-1_5``): run on the received document before
    anything in it is decrypted."""
    for key in root.iter(f"{{{XENC}}}EncryptedKey"):
        methods = key.findall(f"{{{XENC}}}EncryptionMethod")
        algorithm = methods[0].get("Algorithm") if len(methods) == 1 else None
        if algorithm not in KEY_TRANSPORTS:
            raise AuthenticationFailed(
                f"encrypted key transport {str(algorithm)[:80]!r} refused (RSA-OAEP only)"
            )


def _b64_xml(value: str, what: str) -> bytes:
    try:
        data = OneLogin_Saml2_Utils.b64decode(value)
    except (ValueError, TypeError):
        raise AuthenticationFailed(f"{what} is not base64") from None
    if not isinstance(data, bytes) or not data.strip():
        raise AuthenticationFailed(f"{what} is empty")
    return data


# -- the service provider ------------------------------------------------------------


class SamlServiceProvider:
    """This gateway as a SAML SP: metadata, AuthnRequests, response validation,
    Single Logout.  Thread-safe; the IdP metadata is reloaded in the request that
    finds it older than ``idp_metadata_refresh`` (the old one stays in force when
    a reload fails)."""

    def __init__(
        self,
        settings: SamlSettings,
        *,
        public_url: str,
        resolve_path: Callable[[Path], Path],
        emit: Emit,
        fetch: Fetch | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        base = public_url.rstrip("/")
        self.base_url = base
        self.acs_url = base + ACS_PATH
        self.slo_url = base + SLO_PATH
        self.metadata_url = base + METADATA_PATH
        self.entity_id = settings.entity_id or self.metadata_url
        self._emit = emit
        self._fetch = fetch or _default_fetch
        self._monotonic = monotonic
        self._resolve = resolve_path
        self._cert = resolve_path(settings.sp_cert_file).read_text(encoding="ascii")
        self._key = resolve_path(settings.sp_key_file).read_text(encoding="ascii")
        self._idp: _Idp | None = None
        self._lock = threading.Lock()
        self._retry_after = 0.0
        self._sp_metadata: str | None = None
        self._sp_metadata_at = 0.0
        parts = urlsplit(base)
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._base_path = parts.path

    # -- settings for python3-saml ---------------------------------------------
    def _security(self) -> dict[str, Any]:
        s = self.settings
        return {
            "nameIdEncrypted": False,
            "authnRequestsSigned": True,
            "logoutRequestSigned": True,
            "logoutResponseSigned": True,
            "signMetadata": False,  # signed below, with encryption keys listed too
            "wantMessagesSigned": s.want_response_signed,
            "wantAssertionsSigned": True,
            "wantAssertionsEncrypted": s.want_assertions_encrypted,
            "wantNameId": True,
            "wantNameIdEncrypted": False,
            "wantAttributeStatement": False,
            "requestedAuthnContext": False,
            "failOnAuthnContextMismatch": False,
            "signatureAlgorithm": C.RSA_SHA256,
            "digestAlgorithm": C.SHA256,
            "rejectDeprecatedAlgorithm": not s.allow_sha1,
            "rejectUnsolicitedResponsesWithInResponseTo": True,
            "allowRepeatAttributeName": False,
            "allowSingleLabelDomains": True,
        }

    def _sp(self) -> dict[str, Any]:
        return {
            "entityId": self.entity_id,
            "assertionConsumerService": {"url": self.acs_url, "binding": C.BINDING_HTTP_POST},
            "singleLogoutService": {"url": self.slo_url, "binding": C.BINDING_HTTP_REDIRECT},
            "NameIDFormat": self.settings.name_id_format,
            "x509cert": self._cert,
            "privateKey": self._key,
        }

    def sp_metadata(self) -> str:
        """This SP's metadata: signing and encryption certificates, the ACS and
        SLO endpoints, signed with the SP key (RSA-SHA256)."""
        # python3-saml stamps validUntil two days ahead: rebuild hourly so the
        # published document never runs out
        now = self._monotonic()
        if self._sp_metadata is None or now - self._sp_metadata_at > 3600:
            self._sp_metadata_at = now
            settings = OneLogin_Saml2_Settings(
                {"strict": True, "sp": self._sp(), "security": self._security()},
                sp_validation_only=True,
            )
            sp = settings.get_sp_data()
            xml = OneLogin_Saml2_Metadata.builder(sp, True, True, None, None, None, None)
            xml = OneLogin_Saml2_Metadata.add_x509_key_descriptors(xml, self._cert, True)
            signed = OneLogin_Saml2_Metadata.sign_metadata(
                xml, self._key, self._cert, C.RSA_SHA256, C.SHA256
            )
            self._sp_metadata = signed.decode("utf-8") if isinstance(signed, bytes) else signed
        return self._sp_metadata

    # -- IdP metadata -------------------------------------------------------------
    def _load_metadata(self) -> _Idp:
        s = self.settings
        if s.idp_metadata_file is not None:
            path = self._resolve(s.idp_metadata_file)
            raw = path.read_bytes()
            where = str(path)
        else:
            assert s.idp_metadata_url is not None
            raw = self._fetch(s.idp_metadata_url, s.idp_metadata_timeout)
            where = s.idp_metadata_url
        if len(raw) > MAX_METADATA_BYTES:
            raise ValueError("the metadata is larger than 1 MiB")
        try:
            screen_xml(raw)
        except AuthenticationFailed as exc:
            raise ValueError(f"refused: {exc.reason}") from None
        parsed = OneLogin_Saml2_IdPMetadataParser.parse(
            raw,
            required_sso_binding=C.BINDING_HTTP_REDIRECT,
            required_slo_binding=C.BINDING_HTTP_REDIRECT,
            entity_id=s.idp_entity_id,
        )
        idp = dict(parsed.get("idp") or {})
        if not idp.get("entityId") or not idp.get("singleSignOnService"):
            raise ValueError(f"{where}: no IdP with an HTTP-Redirect sign-on service")
        multi = idp.pop("x509certMulti", None) or {}
        signing = list(multi.get("signing") or [])
        if "x509cert" in idp:
            signing.append(idp.pop("x509cert"))
        signing = list(dict.fromkeys("".join(c.split()) for c in signing))
        prints = {cert_fingerprint(c): c for c in signing}
        if s.idp_cert_fingerprints:
            trusted = {fp: c for fp, c in prints.items() if fp in s.idp_cert_fingerprints}
            ignored = sorted(set(prints) - set(trusted))
            if ignored:
                self._emit("saml_metadata_cert_ignored", fingerprints=ignored, source=where)
            prints = trusted
        if not prints:
            raise ValueError(f"{where}: no (trusted) signing certificate")
        certs = list(prints.values())
        idp["x509cert"] = certs[0]
        idp["x509certMulti"] = {"signing": certs}
        settings = OneLogin_Saml2_Settings(
            {
                "strict": True,
                "debug": False,
                "sp": self._sp(),
                "idp": idp,
                "security": self._security(),
            }
        )
        version = (self._idp.version + 1) if self._idp is not None else 1
        return _Idp(idp, tuple(prints), settings, self._monotonic(), version)

    def _current(self) -> _Idp:
        now = self._monotonic()
        idp = self._idp
        if idp is not None and now - idp.loaded_at < self.settings.idp_metadata_refresh:
            return idp
        with self._lock:
            idp = self._idp
            if idp is not None and now - idp.loaded_at < self.settings.idp_metadata_refresh:
                return idp
            if now < self._retry_after:
                # a load failed a moment ago: do not make every request wait on
                # the IdP again (nor hammer it)
                if idp is None:
                    raise SamlUnavailable("the IdP metadata could not be loaded")
                return idp
            try:
                fresh = self._load_metadata()
            except (OSError, ValueError, OneLogin_Saml2_Error, etree.XMLSyntaxError) as exc:
                self._retry_after = now + (RETRY_KEPT if idp is not None else RETRY_NONE)
                self._emit(
                    "saml_metadata_failed",
                    reason=f"{type(exc).__name__}: {str(exc)[:200]}",
                    kept_previous=idp is not None,
                )
                if idp is None:
                    raise SamlUnavailable("the IdP metadata could not be loaded") from exc
                return idp
            old = idp.fingerprints if idp is not None else ()
            if fresh.fingerprints != old:
                self._emit(
                    "saml_metadata_loaded",
                    idp=fresh.data.get("entityId"),
                    signing_certs=list(fresh.fingerprints),
                )
            self._idp = fresh
            return fresh

    def refresh(self) -> None:
        """Load the IdP metadata now (start-up check, tests)."""
        with self._lock:
            self._idp = None
            self._retry_after = 0.0
        self._current()

    @property
    def idp_entity_id(self) -> str:
        return str(self._current().data["entityId"])

    def has_slo(self) -> bool:
        return bool(self._current().data.get("singleLogoutService"))

    # -- requests -------------------------------------------------------------------
    def _request_data(
        self,
        path: str,
        get: Mapping[str, str] | None = None,
        post: Mapping[str, str] | None = None,
        query_string: str = "",
    ) -> dict[str, Any]:
        """The request as python3-saml wants it, built from the configured public
        URL (never from the Host header), so Destination checks compare with
        what the IdP was told."""
        return {
            "https": "on" if self._https else "off",
            "http_host": self._netloc,
            "script_name": self._base_path + path,
            "get_data": dict(get or {}),
            "post_data": dict(post or {}),
            "query_string": query_string,
            "validate_signature_from_qs": bool(query_string),
        }

    def login_redirect(self, relay_state: str, *, force_authn: bool) -> tuple[str, str]:
        """(request ID, IdP URL) for a signed AuthnRequest (HTTP-Redirect)."""
        idp = self._current()
        auth = OneLogin_Saml2_Auth(self._request_data(ACS_PATH), old_settings=idp.settings)
        url = auth.login(return_to=relay_state, force_authn=force_authn, set_nameid_policy=True)
        return str(auth.get_last_request_id()), str(url)

    # -- the response ---------------------------------------------------------------
    def validate_response(
        self,
        saml_response: str,
        *,
        request_id: str | None,
        now: float,
    ) -> SamlLogin:
        """Check a SAMLResponse posted to the ACS.  ``request_id`` is the ID of
        the AuthnRequest this browser started (None: no login was started here,
        which only an allowed unsolicited response may be)."""
        if len(saml_response) > MAX_RESPONSE_CHARS:
            raise AuthenticationFailed("SAMLResponse is larger than 1 MiB")
        data = _b64_xml(saml_response, "SAMLResponse")
        check_key_transport(screen_xml(data))
        idp = self._current()
        try:
            response = OneLogin_Saml2_Response(idp.settings, saml_response)
        except (OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError) as exc:
            raise AuthenticationFailed(f"response refused: {str(exc)[:200]}") from None
        except Exception as exc:  # noqa: BLE001 (xmlsec/lxml raise many types on garbage)
            raise AuthenticationFailed(
                f"response does not parse: {type(exc).__name__}: {str(exc)[:160]}"
            ) from None
        if response.encrypted:  # the pre-screen could not see inside
            for node in response.decrypted_document.iter():
                if isinstance(node, etree._Comment | etree._ProcessingInstruction):
                    raise AuthenticationFailed(
                        "decrypted assertion contains a comment or processing instruction"
                    )
        doc = response.document
        in_response_to = doc.get("InResponseTo")
        if request_id is None:
            if in_response_to is not None:
                raise AuthenticationFailed("InResponseTo names a request this browser never sent")
            if not self.settings.allow_unsolicited:
                raise AuthenticationFailed("unsolicited response (IdP-initiated login) refused")
        elif in_response_to != request_id:
            raise AuthenticationFailed("InResponseTo does not match the request sent")
        destination = doc.get("Destination")
        if destination != self.acs_url:
            raise AuthenticationFailed("response Destination is not this ACS")
        try:
            valid = response.is_valid(
                self._request_data(ACS_PATH, post={"SAMLResponse": saml_response}),
                request_id=request_id,
                raise_exceptions=True,
            )
        except Exception as exc:  # noqa: BLE001 (library errors of many types)
            raise AuthenticationFailed(f"response invalid: {str(exc)[:200]}") from None
        if not valid:
            raise AuthenticationFailed(f"response invalid: {response.get_error()}")
        try:
            return self._facts(response, request_id, now)
        except OneLogin_Saml2_ValidationError as exc:
            raise AuthenticationFailed(f"response invalid: {str(exc)[:200]}") from None

    def _facts(
        self, response: OneLogin_Saml2_Response, request_id: str | None, now: float
    ) -> SamlLogin:
        skew = self.settings.clock_skew
        q = response._query_assertion  # the signed assertion (python3-saml's own query)
        assertions = q("")
        if len(assertions) != 1:
            raise AuthenticationFailed("not exactly one signed assertion")
        conditions = q("/saml:Conditions")
        if len(conditions) != 1:
            raise AuthenticationFailed("not exactly one Conditions element")
        not_before = _time(conditions[0].get("NotBefore"))
        not_after = _time(conditions[0].get("NotOnOrAfter"))
        if not_after is None:
            raise AuthenticationFailed("assertion has no NotOnOrAfter")
        if not_before is not None and not_before > now + skew:
            raise AuthenticationFailed("assertion not yet valid (NotBefore)")
        if not_after <= now - skew:
            raise AuthenticationFailed("assertion expired (NotOnOrAfter)")
        # the library accepts an assertion without any audience and merges all
        # AudienceRestrictions into one list; SAML core 2.5.1.4 wants each to
        # hold: at least one, and every one names this SP
        restrictions = q("/saml:Conditions/saml:AudienceRestriction")
        if not restrictions:
            raise AuthenticationFailed("assertion has no AudienceRestriction (audience)")
        for restriction in restrictions:
            audiences = [a.text for a in restriction.findall(f"{{{C.NS_SAML}}}Audience")]
            if self.entity_id not in audiences:
                raise AuthenticationFailed(
                    "an AudienceRestriction does not name this SP (audience)"
                )
        # one bearer confirmation for exactly this ACS and this request
        confirmed = False
        for scd in q("/saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData"):
            method = scd.getparent().get("Method")
            if method != C.CM_BEARER:
                continue
            if scd.get("Recipient") != self.acs_url:
                continue
            if scd.get("InResponseTo") != request_id:
                continue
            scd_after = _time(scd.get("NotOnOrAfter"))
            if scd_after is None or scd_after <= now - skew:
                continue
            scd_before = _time(scd.get("NotBefore"))
            if scd_before is not None and scd_before > now + skew:
                continue
            confirmed = True
            break
        if not confirmed:
            raise AuthenticationFailed(
                "no bearer SubjectConfirmation for this ACS, request and time"
            )
        statements = q("/saml:AuthnStatement")
        if len(statements) != 1:
            raise AuthenticationFailed("not exactly one AuthnStatement")
        authn_instant = _time(statements[0].get("AuthnInstant"))
        if authn_instant is None:
            raise AuthenticationFailed("AuthnStatement has no AuthnInstant")
        assertion_id = assertions[0].get("ID")
        if not assertion_id:
            raise AuthenticationFailed("assertion has no ID")
        nameid = response.get_nameid_data()
        name_id = str(nameid.get("Value") or "")
        attributes = response.get_attributes()
        identity = self.identity(name_id, attributes, authn_instant)
        issuers = response.get_issuers()
        return SamlLogin(
            identity=identity,
            assertion_id=str(assertion_id),
            issuer=str(issuers[0]) if issuers else "",
            in_response_to=response.document.get("InResponseTo"),
            not_on_or_after=not_after,
            authn_instant=authn_instant,
            name_id=name_id,
            name_id_format=nameid.get("Format"),
            name_id_nq=nameid.get("NameQualifier"),
            name_id_spnq=nameid.get("SPNameQualifier"),
            session_index=response.get_session_index(),
        )

    def identity(
        self, name_id: str, attributes: Mapping[str, list[Any]], authn_instant: float
    ) -> Identity:
        """Map claims to an identity (``providers.saml.claims``)."""
        claims = self.settings.claims

        def values(names: tuple[str, ...]) -> list[str]:
            out: list[str] = []
            for name in names:
                for value in attributes.get(name, ()):
                    if isinstance(value, str) and value and value not in out:
                        out.append(value)
            return out

        def first(names: tuple[str, ...]) -> str:
            found = values(names)
            return found[0] if found else ""

        subject = first(claims.subject) or name_id
        if not subject or len(subject) > MAX_SUBJECT or not subject.isprintable():
            raise AuthenticationFailed("no usable subject (UPN or NameID)")
        amr = tuple(values(claims.amr))
        extra = {key: first(names) for key, names in claims.attributes.items()}
        return Identity(
            subject=subject,
            provider=PROVIDER,
            name=first(claims.name),
            email=first(claims.email),
            groups=tuple(values(claims.groups)),
            group_ids=tuple(values(claims.group_ids)),
            auth_time=authn_instant,
            mfa=any(value in claims.mfa_values for value in amr),
            amr=amr,
            attributes={k: v for k, v in extra.items() if v},
        )

    # -- Single Logout --------------------------------------------------------------
    def logout_redirect(self, facts: Mapping[str, Any], relay_state: str) -> tuple[str, str] | None:
        """(request ID, IdP URL) of a signed LogoutRequest for the login ``facts``
        (see :meth:`SamlLogin.logout_facts`), or None when the IdP has no SLO."""
        idp = self._current()
        if not idp.data.get("singleLogoutService"):
            return None
        auth = OneLogin_Saml2_Auth(self._request_data(SLO_PATH), old_settings=idp.settings)
        url = auth.logout(
            return_to=relay_state,
            name_id=facts.get("name_id"),
            session_index=facts.get("session_index"),
            nq=facts.get("name_id_nq"),
            name_id_format=facts.get("name_id_format"),
            spnq=facts.get("name_id_spnq"),
        )
        return str(auth.get_last_request_id()), str(url)

    def _verify_redirect_signature(self, idp: _Idp, message: RedirectMessage) -> None:
        """The Redirect-binding signature over the raw parts it covers, checked
        before the message is inflated or parsed (it signs the deflated value)."""
        args = message.args
        if "Signature" not in args or "SigAlg" not in args:
            raise AuthenticationFailed("logout message is not signed")
        algorithm = args["SigAlg"]
        if algorithm in C.DEPRECATED_ALGORITHMS:
            if not self.settings.allow_sha1:
                raise AuthenticationFailed("logout message signed with SHA-1")
            if algorithm != C.RSA_SHA1:
                raise AuthenticationFailed("logout message signature algorithm not supported")
        elif algorithm not in _REDIRECT_SIG_ALGS:
            raise AuthenticationFailed("logout message signature algorithm not supported")
        try:
            signature = OneLogin_Saml2_Utils.b64decode(args["Signature"])  # as the library
        except (ValueError, TypeError):  # binascii.Error is a ValueError
            raise AuthenticationFailed("logout message signature is not base64") from None
        signed = message.signed_octets()
        data = idp.settings.get_idp_data()
        certs = list((data.get("x509certMulti") or {}).get("signing") or [])
        certs = certs or [data.get("x509cert")]
        for cert in certs:
            if cert and OneLogin_Saml2_Utils.validate_binary_sign(
                signed, signature, cert, algorithm
            ):
                return
        raise AuthenticationFailed("logout message signature validation failed")

    def _slo_auth(self, message: RedirectMessage) -> OneLogin_Saml2_Auth:
        idp = self._current()
        self._verify_redirect_signature(idp, message)
        screen_xml(_inflate(message.args[message.kind], message.kind))
        # python3-saml verifies the signature again, over the same raw parts
        return OneLogin_Saml2_Auth(
            self._request_data(SLO_PATH, get=message.args, query_string=message.query_string()),
            old_settings=idp.settings,
        )

    def validate_logout_response(self, message: RedirectMessage, request_id: str) -> None:
        """Check the IdP's answer to our LogoutRequest (signed, for ``request_id``)."""
        if message.kind != "SAMLResponse":
            raise AuthenticationFailed("not a LogoutResponse")
        auth = self._slo_auth(message)
        try:
            auth.process_slo(keep_local_session=True, request_id=request_id)
        except Exception as exc:  # noqa: BLE001
            raise AuthenticationFailed(f"logout response invalid: {str(exc)[:200]}") from None
        errors = auth.get_errors()
        if errors:
            reason = auth.get_last_error_reason() or ", ".join(errors)
            raise AuthenticationFailed(f"logout response invalid: {str(reason)[:200]}")

    def read_logout_request(self, message: RedirectMessage, now: float) -> LogoutRequestFacts:
        """Verify an IdP-initiated LogoutRequest (signature, then content, then
        ``IssueInstant`` within ``request_lifetime`` and the clock skew of
        ``now``) and build the signed answer.  Its ID is for the caller's replay
        cache."""
        if message.kind != "SAMLRequest":
            raise AuthenticationFailed("not a LogoutRequest")
        auth = self._slo_auth(message)
        try:
            url = auth.process_slo(keep_local_session=True)
        except Exception as exc:  # noqa: BLE001
            raise AuthenticationFailed(f"logout request invalid: {str(exc)[:200]}") from None
        errors = auth.get_errors()
        if errors or not url:
            reason = auth.get_last_error_reason() or ", ".join(errors)
            raise AuthenticationFailed(f"logout request invalid: {str(reason)[:200]}")
        xml = auth.get_last_request_xml()
        try:
            name_id = OneLogin_Saml2_Logout_Request.get_nameid(xml)
            indexes = OneLogin_Saml2_Logout_Request.get_session_indexes(xml)
            request_id = OneLogin_Saml2_Logout_Request.get_id(xml)
            issuer = OneLogin_Saml2_Logout_Request.get_issuer(xml)
            issued = _time(etree.fromstring(xml.encode("utf-8"), _SAFE_PARSER).get("IssueInstant"))
        except AuthenticationFailed:
            raise
        except Exception as exc:  # noqa: BLE001
            raise AuthenticationFailed(f"logout request unreadable: {str(exc)[:200]}") from None
        if not request_id:
            raise AuthenticationFailed("logout request has no ID")
        skew = self.settings.clock_skew
        if issued is None:
            raise AuthenticationFailed("logout request has no IssueInstant")
        if issued > now + skew:
            raise AuthenticationFailed("logout request issued in the future (IssueInstant)")
        accepted_until = issued + self.settings.request_lifetime + skew
        if accepted_until < now:
            raise AuthenticationFailed("logout request too old (IssueInstant)")
        return LogoutRequestFacts(
            request_id=str(request_id),
            issuer=str(issuer or self.idp_entity_id),
            name_id=str(name_id),
            session_indexes=tuple(str(i) for i in indexes),
            response_url=str(url),
            accepted_until=accepted_until,
        )


def check_files(
    settings: SamlSettings, public_url: str, resolve_path: Callable[[Path], Path], source: str
) -> list[Problem]:
    """Problems with the files ``providers.saml`` names (for ``check`` and the
    pre-flight of ``serve``): the SP key pair, and a metadata file when one is
    configured (a metadata URL is not fetched here)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    problems: list[Problem] = []
    key = "providers.saml."
    try:
        x509.load_pem_x509_certificate(resolve_path(settings.sp_cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        problems.append(Problem(source, key + "sp_cert_file", f"not a PEM certificate: {exc}"))
    try:
        serialization.load_pem_private_key(
            resolve_path(settings.sp_key_file).read_bytes(), password=None
        )
    except (OSError, ValueError, TypeError) as exc:
        problems.append(
            Problem(source, key + "sp_key_file", f"not an unencrypted PEM private key: {exc}")
        )
    if problems or settings.idp_metadata_file is None:
        return problems
    failures: list[str] = []
    provider = SamlServiceProvider(
        settings,
        public_url=public_url,
        resolve_path=resolve_path,
        emit=lambda event, **fields: failures.append(str(fields.get("reason", event))),
    )
    try:
        provider.refresh()
    except SamlUnavailable:
        problems.append(
            Problem(source, key + "idp_metadata_file", "; ".join(failures) or "unusable")
        )
    return problems


def _inflate(value: str, what: str) -> bytes:
    """base64 + raw DEFLATE (the HTTP-Redirect encoding), at most
    :data:`MAX_INFLATED` bytes out: a larger message is refused, not inflated."""
    try:
        data = OneLogin_Saml2_Utils.b64decode(value)  # as lenient as the library
    except (ValueError, TypeError):
        raise AuthenticationFailed(f"{what} is not deflated base64") from None
    inflater = zlib.decompressobj(-15)
    try:
        out = inflater.decompress(data, MAX_INFLATED)
    except zlib.error:
        raise AuthenticationFailed(f"{what} is not deflated base64") from None
    if inflater.unconsumed_tail:
        raise AuthenticationFailed(f"{what} inflates to more than {MAX_INFLATED // 1024} KiB")
    if not inflater.eof or inflater.unused_data:
        raise AuthenticationFailed(f"{what} is not deflated base64 (truncated or trailing data)")
    return bytes(out)


def _time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(OneLogin_Saml2_Utils.parse_SAML_to_time(value))
    except (ValueError, TypeError):
        raise AuthenticationFailed("a timestamp does not parse") from None
