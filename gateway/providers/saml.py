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
  gateway's clock (the library's drift is a fixed 300 s).

Errors are :class:`AuthenticationFailed` with a reason for the audit log.
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    name_id: str
    session_indexes: tuple[str, ...]
    response_url: str  # the signed LogoutResponse to send the browser to


@dataclass
class _Idp:
    data: dict[str, Any]
    fingerprints: tuple[str, ...]
    settings: OneLogin_Saml2_Settings
    loaded_at: float
    version: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


def _default_fetch(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/samlmetadata+xml"})  # noqa: S310 (https only unless allowed)
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
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


def screen_xml(data: bytes) -> None:
    """Refuse XML a SAML message never needs: a DTD (XXE, entity expansion),
    comments and processing instructions (NameID comment injection)."""
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
        data = _b64_xml(saml_response, "SAMLResponse")
        screen_xml(data)
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

    def _slo_auth(self, args: Mapping[str, str], query_string: str) -> OneLogin_Saml2_Auth:
        if "Signature" not in args or "SigAlg" not in args:
            raise AuthenticationFailed("logout message is not signed")
        if not self.settings.allow_sha1 and args["SigAlg"] in C.DEPRECATED_ALGORITHMS:
            raise AuthenticationFailed("logout message signed with SHA-1")
        key = "SAMLResponse" if "SAMLResponse" in args else "SAMLRequest"
        screen_xml(_inflate(args[key], key))
        idp = self._current()
        return OneLogin_Saml2_Auth(
            self._request_data(SLO_PATH, get=args, query_string=query_string),
            old_settings=idp.settings,
        )

    def validate_logout_response(
        self, args: Mapping[str, str], query_string: str, request_id: str
    ) -> None:
        """Check the IdP's answer to our LogoutRequest (signed, for ``request_id``)."""
        auth = self._slo_auth(args, query_string)
        try:
            auth.process_slo(keep_local_session=True, request_id=request_id)
        except Exception as exc:  # noqa: BLE001
            raise AuthenticationFailed(f"logout response invalid: {str(exc)[:200]}") from None
        errors = auth.get_errors()
        if errors:
            reason = auth.get_last_error_reason() or ", ".join(errors)
            raise AuthenticationFailed(f"logout response invalid: {str(reason)[:200]}")

    def read_logout_request(self, args: Mapping[str, str], query_string: str) -> LogoutRequestFacts:
        """Verify an IdP-initiated LogoutRequest and build the signed answer."""
        auth = self._slo_auth(args, query_string)
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
        except Exception as exc:  # noqa: BLE001
            raise AuthenticationFailed(f"logout request unreadable: {str(exc)[:200]}") from None
        return LogoutRequestFacts(
            request_id=str(request_id),
            name_id=str(name_id),
            session_indexes=tuple(str(i) for i in indexes),
            response_url=str(url),
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
    try:
        data = OneLogin_Saml2_Utils.decode_base64_and_inflate(value)
    except Exception:  # noqa: BLE001 (zlib/base64 errors)
        raise AuthenticationFailed(f"{what} is not deflated base64") from None
    return data if isinstance(data, bytes) else str(data).encode("utf-8")


def _time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(OneLogin_Saml2_Utils.parse_SAML_to_time(value))
    except (ValueError, TypeError):
        raise AuthenticationFailed("a timestamp does not parse") from None
