"""Hostile SAML responses posted to the ACS of the real gateway app: each must be
refused (no session, a generic page) with a ``login_failed`` audit line that
says why.  The inputs start from real responses of the test IdP and are changed
(and where needed signed again) through the XML libraries."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree

from tests.flows.conftest import Gateway
from tests.saml import forge
from tests.saml.conftest import ACS_URL, SP_ENTITY_ID, idp_form, post_acs, start_login
from tests.saml.forge import Element
from tests.saml_idp import SamlIdp, make_keypair


def issued(gw: Gateway, idp: SamlIdp, user: str = "alice") -> tuple[bytes, str]:
    """A real response for a login this browser started (not yet posted)."""
    fields = idp_form(idp, start_login(gw), user)
    return base64.b64decode(fields["SAMLResponse"]), fields.get("RelayState", "")


def post(gw: Gateway, xml: bytes, relay: str) -> int:
    r = post_acs(gw, {"SAMLResponse": base64.b64encode(xml).decode(), "RelayState": relay})
    return r.status_code


def assert_refused(gw: Gateway, status: int, reason: str) -> None:
    assert status in (400, 401), status
    failed = gw.events("login_failed")
    assert failed, "no login_failed audit line"
    assert reason.lower() in failed[-1]["reason"].lower(), failed[-1]["reason"]
    assert gw.events("login") == []
    assert gw.session_cookie() is None


@pytest.fixture
def idp_key(saml_idp: SamlIdp) -> tuple[Path, Path]:
    return saml_idp.key_files("a")


def test_resigned_but_unchanged_response_is_accepted(
    sgw: Gateway, saml_idp: SamlIdp, idp_key: tuple[Path, Path]
) -> None:
    """The forging helpers themselves are sound: a response signed again with
    the IdP's key and nothing changed logs in (so the refusals below are
    about what was changed)."""
    xml, relay = issued(sgw, saml_idp)
    again = forge.resign_assertion(xml, *idp_key, lambda r, a: None)
    assert post(sgw, again, relay) == 303
    assert sgw.events("login")[-1]["user"] == "alice@corp.test"


def test_assertion_with_signature_removed(sgw: Gateway, saml_idp: SamlIdp) -> None:
    xml, relay = issued(sgw, saml_idp)
    root = forge.parse(xml)
    forge.strip_signature(forge.assertion_of(root))
    assert_refused(sgw, post(sgw, forge.dump(root), relay), "not signed")


def test_assertion_changed_after_signing(sgw: Gateway, saml_idp: SamlIdp) -> None:
    xml, relay = issued(sgw, saml_idp)
    root = forge.parse(xml)
    forge.set_subject(forge.assertion_of(root), "bob@corp.test", ("Intercom-Admins",))
    assert_refused(sgw, post(sgw, forge.dump(root), relay), "signature validation failed")


def test_response_signed_by_another_key(sgw: Gateway, saml_idp: SamlIdp, tmp_path: Path) -> None:
    other = make_keypair(tmp_path, "mallory", "idp-a")  # same name, other key
    xml, relay = issued(sgw, saml_idp)
    forged = forge.resign_assertion(
        xml, *other, lambda r, a: forge.set_subject(a, "bob@corp.test", ("Intercom-Admins",))
    )
    assert_refused(sgw, post(sgw, forged, relay), "signature validation failed")


@pytest.mark.parametrize("variant", range(1, 9))
def test_signature_wrapping(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp, variant: int
) -> None:
    # XSW1/2 attack a signed Response; 3-8 a signed Assertion
    gw = make_saml_gateway(idp_options={"sign_response": variant in (1, 2)})
    xml, relay = issued(gw, saml_idp)
    status = post(gw, forge.xsw(variant, xml), relay)
    assert status == 401
    failed = gw.events("login_failed")
    assert failed and failed[-1]["reason"]
    assert gw.events("login") == []
    assert gw.session_cookie() is None


def _comment_injected(xml: bytes) -> bytes:
    # mallory's real UPN is alice@corp.test.evil; a comment cuts it for an SP
    # that reads only the first text node.  Comments are not signed (exclusive
    # c14n drops them), so the signature still holds.
    text = xml.decode("utf-8")
    assert "alice@corp.test.evil" in text
    return text.replace("alice@corp.test.evil", "alice@corp.test<!---->.evil").encode()


def test_nameid_comment_injection(sgw: Gateway, saml_idp: SamlIdp) -> None:
    xml, relay = issued(sgw, saml_idp, "mallory")
    assert_refused(sgw, post(sgw, _comment_injected(xml), relay), "comment")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r, a: _conditions(a, not_after=forge.saml_time(-3600)), "expired"),
        # inside python3-saml's fixed 300 s drift, outside our 60 s skew
        (lambda r, a: _conditions(a, not_after=forge.saml_time(-120)), "expired"),
        (lambda r, a: _conditions(a, not_before=forge.saml_time(3600)), "not yet valid"),
        (lambda r, a: _conditions(a, not_before=forge.saml_time(120)), "not yet valid"),
        (lambda r, a: _audience(a, "https://other-sp.test/metadata"), "audience"),
        (lambda r, a: _no_audience_restriction(a), "no AudienceRestriction"),
        (lambda r, a: _another_restriction(a, "https://other-sp.test/metadata"), "audience"),
        (lambda r, a: _another_restriction(a, SP_ENTITY_ID + "-other"), "audience"),
        (lambda r, a: r.set("Destination", "https://other-sp.test/acs"), "destination"),
        (lambda r, a: _recipient(a, "https://other-sp.test/acs"), "subjectconfirmation"),
        (lambda r, a: _recipient(a, ACS_URL + ".evil"), "subjectconfirmation"),
        (lambda r, a: _issuer(a, "https://evil-idp.test/metadata"), "issuer"),
    ],
    ids=[
        "expired",
        "expired-beyond-skew",
        "not-yet-valid",
        "not-yet-valid-beyond-skew",
        "wrong-audience",
        "no-audience-restriction",
        "second-restriction-for-another-sp",
        "second-restriction-for-a-prefix",
        "wrong-destination",
        "wrong-recipient",
        "recipient-prefix",
        "wrong-issuer",
    ],
)
def test_validly_signed_but_wrong(
    sgw: Gateway,
    saml_idp: SamlIdp,
    idp_key: tuple[Path, Path],
    mutate: Callable[[Element, Element], None],
    reason: str,
) -> None:
    xml, relay = issued(sgw, saml_idp)
    forged = forge.resign_assertion(xml, *idp_key, mutate)
    assert_refused(sgw, post(sgw, forged, relay), reason)


def _conditions(assertion: Element, *, not_before: str = "", not_after: str = "") -> None:
    conditions = assertion.find("saml:Conditions", forge.NS)
    assert conditions is not None
    if not_before:
        conditions.set("NotBefore", not_before)
    if not_after:
        conditions.set("NotOnOrAfter", not_after)


def _audience(assertion: Element, value: str) -> None:
    audience = assertion.find("saml:Conditions/saml:AudienceRestriction/saml:Audience", forge.NS)
    assert audience is not None
    audience.text = value


def _no_audience_restriction(assertion: Element) -> None:
    conditions = assertion.find("saml:Conditions", forge.NS)
    assert conditions is not None
    restrictions = conditions.findall("saml:AudienceRestriction", forge.NS)
    assert restrictions  # the IdP sends one: it is the forger who took it out
    for restriction in restrictions:
        conditions.remove(restriction)


def _another_restriction(assertion: Element, audience: str) -> None:
    """A second AudienceRestriction, for someone else: both must hold (SAML
    core 2.5.1.4), so this SP is not an audience."""
    conditions = assertion.find("saml:Conditions", forge.NS)
    assert conditions is not None
    ours = conditions.find("saml:AudienceRestriction", forge.NS)
    assert ours is not None
    other = copy.deepcopy(ours)
    audiences = other.findall("saml:Audience", forge.NS)
    audiences[0].text = audience
    for extra in audiences[1:]:
        other.remove(extra)
    conditions.insert(0, other)


def test_audience_restriction_listing_this_sp_among_others_is_accepted(
    sgw: Gateway, saml_idp: SamlIdp, idp_key: tuple[Path, Path]
) -> None:
    """Within one AudienceRestriction the audiences are alternatives."""

    def add_audience(root: Element, assertion: Element) -> None:
        restriction = assertion.find("saml:Conditions/saml:AudienceRestriction", forge.NS)
        assert restriction is not None
        other = copy.deepcopy(restriction.find("saml:Audience", forge.NS))
        other.text = "https://other-sp.test/metadata"
        restriction.insert(0, other)

    xml, relay = issued(sgw, saml_idp)
    assert post(sgw, forge.resign_assertion(xml, *idp_key, add_audience), relay) == 303


def test_idp_assertion_names_this_sp_as_its_only_audience(sgw: Gateway, saml_idp: SamlIdp) -> None:
    xml, _relay = issued(sgw, saml_idp)
    restrictions = forge.assertion_of(forge.parse(xml)).findall(
        "saml:Conditions/saml:AudienceRestriction", forge.NS
    )
    assert [[a.text for a in r] for r in restrictions] == [[SP_ENTITY_ID]]


@pytest.mark.parametrize("where", ["inline", "sibling"])
def test_rsa_pkcs1_v15_key_transport_is_refused(
    sgw: Gateway, saml_idp: SamlIdp, sp_keys: tuple[Path, Path], where: str
) -> None:
    """A genuinely signed assertion encrypted to the SP certificate (public, in
    its metadata) with RSA PKCS#1 v1.5 key transport: refused before the SP key
    decrypts anything (no padding oracle on the SP key).  The EncryptedKey inside
    the EncryptedData, or beside it (referenced by a RetrievalMethod)."""
    xml, relay = issued(sgw, saml_idp)
    root = forge.parse(xml)
    encrypted = forge.encrypt_assertion(root, sp_keys[1], transport="rsa15")
    if where == "sibling":
        key = encrypted.find(".//xenc:EncryptedKey", forge.NS)
        assert key is not None
        holder = key.getparent()
        key.set("Id", "_k1")
        method = etree.SubElement(holder, f"{{{forge.DS}}}RetrievalMethod")
        method.set("URI", "#_k1")
        method.set("Type", forge.XENC + "EncryptedKey")
        encrypted.append(key)
    assert_refused(sgw, post(sgw, forge.dump(root), relay), "key transport")


def test_rsa_oaep_key_transport_is_accepted(
    sgw: Gateway, saml_idp: SamlIdp, sp_keys: tuple[Path, Path]
) -> None:
    """The same made with RSA-OAEP: decrypted and accepted (the helper is sound)."""
    xml, relay = issued(sgw, saml_idp)
    root = forge.parse(xml)
    forge.encrypt_assertion(root, sp_keys[1], transport="oaep")
    assert post(sgw, forge.dump(root), relay) == 303


def _recipient(assertion: Element, value: str) -> None:
    for scd in assertion.iterfind(
        "saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData", forge.NS
    ):
        scd.set("Recipient", value)


def _issuer(assertion: Element, value: str) -> None:
    issuer = assertion.find("saml:Issuer", forge.NS)
    assert issuer is not None
    issuer.text = value


def test_replayed_response_is_refused(sgw: Gateway, saml_idp: SamlIdp) -> None:
    xml, relay = issued(sgw, saml_idp)
    assert post(sgw, xml, relay) == 303
    sgw.client.delete_cookie(sgw.services.cookie_name, domain="localhost")
    assert_refused_after_login(sgw, post(sgw, xml, relay))


def assert_refused_after_login(gw: Gateway, status: int) -> None:
    assert status == 401
    assert len(gw.events("login")) == 1
    assert gw.events("login_failed")


def test_replayed_unsolicited_assertion_is_refused(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway(allow_unsolicited=True)
    fields = saml_idp.unsolicited_form("alice", relay_state="https://intercom.test/console")
    first = post_acs(gw, fields)
    assert first.status_code == 303
    assert first.headers["Location"] == "https://intercom.test/console"
    assert gw.events("login")[-1]["unsolicited"] is True
    gw.client.delete_cookie(gw.services.cookie_name, domain="localhost")
    assert post_acs(gw, fields).status_code == 401
    assert gw.events("login_failed")[-1]["reason"] == "replayed assertion"


def test_unsolicited_response_refused_by_default(sgw: Gateway, saml_idp: SamlIdp) -> None:
    fields = saml_idp.unsolicited_form("alice")
    r = post_acs(sgw, fields)
    assert_refused(sgw, r.status_code, "unsolicited")


def test_unsolicited_relay_state_follows_the_redirect_allow_list(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway(allow_unsolicited=True)
    fields = saml_idp.unsolicited_form("alice", relay_state="https://evil.example/phish")
    r = post_acs(gw, fields)
    assert r.status_code == 303
    assert r.headers["Location"] == "/.sso/userinfo"
    assert gw.events("redirect_refused")


def test_in_response_to_for_a_request_never_sent(
    sgw: Gateway, saml_idp: SamlIdp, idp_key: tuple[Path, Path]
) -> None:
    xml, relay = issued(sgw, saml_idp)

    def forge_irt(root: Element, assertion: Element) -> None:
        root.set("InResponseTo", "_never_sent")
        for scd in assertion.iterfind(
            "saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData", forge.NS
        ):
            scd.set("InResponseTo", "_never_sent")

    forged = forge.resign_assertion(xml, *idp_key, forge_irt)
    assert_refused(sgw, post(sgw, forged, relay), "InResponseTo")


def test_response_for_another_browsers_login(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    """A response to a login started in one browser, posted from another (no
    login-state cookie): InResponseTo names a request this browser never sent."""
    gw = make_saml_gateway()
    xml, relay = issued(gw, saml_idp)
    gw.client.delete_cookie(gw.services.cookie_name + "_saml", domain="localhost",
                            path="/")  # fmt: skip
    assert_refused(gw, post(gw, xml, relay), "never sent")


def test_relay_state_of_another_login(sgw: Gateway, saml_idp: SamlIdp) -> None:
    xml, _relay = issued(sgw, saml_idp)
    assert_refused(sgw, post(sgw, xml, "someone-elses-handle"), "RelayState")


def test_sha1_signature_refused(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway(idp_options={"sha1": True})
    xml, relay = issued(gw, saml_idp)
    assert_refused(gw, post(gw, xml, relay), "deprecated signature algorithm")


def test_sha1_signature_accepted_when_allowed(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway(idp_options={"sha1": True}, allow_sha1=True)
    xml, relay = issued(gw, saml_idp)
    assert post(gw, xml, relay) == 303


def test_unsigned_response_refused_when_response_signature_required(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway(want_response_signed=True)
    xml, relay = issued(gw, saml_idp)
    assert_refused(gw, post(gw, xml, relay), "message of the response is not signed")


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
"""


@pytest.mark.parametrize(
    "prefix", [XXE, LAUGHS, b'<!DOCTYPE r SYSTEM "http://127.0.0.1:9/x.dtd">\n']
)
def test_dtd_and_entities_refused(sgw: Gateway, saml_idp: SamlIdp, prefix: bytes) -> None:
    xml, relay = issued(sgw, saml_idp)
    body = xml.split(b"?>", 1)[1] if xml.startswith(b"<?xml") else xml
    if b"xxe" in prefix:
        body = body.replace(b"alice@corp.test", b"&xxe;", 1)
    elif b"lol" in prefix:
        body = body.replace(b"alice@corp.test", b"&lol4;", 1)
    assert_refused(sgw, post(sgw, prefix + body, relay), "DTD")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not base64 !!",
        base64.b64encode(b"<notxml").decode(),
        base64.b64encode(b"\x00" * 64).decode(),
    ],
    ids=["empty", "not-base64", "not-xml", "binary"],
)
def test_garbage_responses(sgw: Gateway, saml_idp: SamlIdp, value: str) -> None:
    _xml, relay = issued(sgw, saml_idp)
    r = sgw.post("/.sso/saml/acs", data={"SAMLResponse": value, "RelayState": relay})
    assert r.status_code in (400, 401)
    assert sgw.events("login_failed")
    assert "Traceback" not in r.get_data(as_text=True)
