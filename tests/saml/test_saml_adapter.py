"""The SAML adapter on its own (no Flask): the raw-XML pre-screen, the hostile
corpus straight into ``validate_response``, the clock skew at its edges and
the claim mapping for an IdP that is not ADFS."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.core.errors import AuthenticationFailed
from gateway.providers.saml import MAX_RESPONSE_CHARS, SamlServiceProvider, screen_xml
from gateway.settings_saml import SamlSettings
from tests.saml import forge
from tests.saml_idp import SamlIdp, sign_in_at_idp

PUBLIC = "https://sso.adapter.test"


def provider(sp_keys: tuple[Path, Path], metadata: Path, **options: Any) -> SamlServiceProvider:
    settings = SamlSettings.model_validate(
        {"sp_key_file": sp_keys[0], "sp_cert_file": sp_keys[1], "idp_metadata_file": metadata,
         **options}
    )  # fmt: skip
    return SamlServiceProvider(
        settings, public_url=PUBLIC, resolve_path=lambda p: p, emit=lambda e, **f: None
    )


class Issued:
    """A real response of the IdP to a request ``sp`` made."""

    def __init__(self, sp: SamlServiceProvider, idp: SamlIdp, user: str = "alice") -> None:
        self.request_id, url = sp.login_redirect("relay", force_authn=False)
        with requests.Session() as browser:
            browser.trust_env = False
            fields = sign_in_at_idp(browser, url, user)
        self.b64 = fields["SAMLResponse"]
        self.xml = base64.b64decode(self.b64)


@pytest.fixture
def sp(
    saml_idp: SamlIdp, sp_keys: tuple[Path, Path], tmp_path: Path
) -> Iterator[SamlServiceProvider]:
    saml_idp.configure()
    metadata = tmp_path / "idp.xml"
    metadata.write_text(saml_idp.metadata(), encoding="utf-8")
    made = provider(sp_keys, metadata)
    saml_idp.register_sp(made.sp_metadata())
    yield made


def b64(xml: bytes) -> str:
    return base64.b64encode(xml).decode()


@pytest.mark.parametrize(
    ("xml", "reason"),
    [
        (b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>', "DTD"),
        (b"<!doctype r><r/>", "DTD"),
        (b"<r><a>alice<!---->.evil</a></r>", "comment"),
        (b"<r><?evil instruction?></r>", "processing instruction"),
        (b"<!-- before --><r/>", "comment"),
        (b"<r>", "does not parse"),
        (b"<?xml version='1.0' encoding='UTF-16'?><r/>", "does not parse"),
    ],
)
def test_screen_refuses(xml: bytes, reason: str) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        screen_xml(xml)
    assert reason.lower() in caught.value.reason.lower()


def test_screen_passes_plain_xml() -> None:
    screen_xml(b'<?xml version="1.0"?><r xmlns="urn:x"><a b="c">text</a></r>')


def test_valid_response_gives_identity_and_logout_facts(
    sp: SamlServiceProvider, saml_idp: SamlIdp
) -> None:
    issued = Issued(sp, saml_idp, "bob")
    login = sp.validate_response(issued.b64, request_id=issued.request_id, now=time.time())
    assert login.identity.subject == "bob@corp.test"
    assert login.identity.provider == "saml"
    assert login.identity.mfa is True
    assert "http://schemas.microsoft.com/claims/multipleauthn" in login.identity.amr
    assert login.in_response_to == issued.request_id
    assert login.issuer == saml_idp.entity_id
    facts = login.logout_facts()
    assert facts["name_id"] == "bob@corp.test" and facts["session_index"]
    assert abs(login.identity.auth_time - time.time()) < 60


@pytest.mark.parametrize("variant", range(3, 9))
def test_signature_wrapping_at_the_adapter(
    sp: SamlServiceProvider, saml_idp: SamlIdp, variant: int
) -> None:
    issued = Issued(sp, saml_idp)
    with pytest.raises(AuthenticationFailed):
        sp.validate_response(
            b64(forge.xsw(variant, issued.xml)), request_id=issued.request_id, now=time.time()
        )


def test_wrong_request_and_unsolicited_at_the_adapter(
    sp: SamlServiceProvider, saml_idp: SamlIdp
) -> None:
    issued = Issued(sp, saml_idp)
    with pytest.raises(AuthenticationFailed, match="does not match"):
        sp.validate_response(issued.b64, request_id="_other", now=time.time())
    with pytest.raises(AuthenticationFailed, match="never sent"):
        sp.validate_response(issued.b64, request_id=None, now=time.time())


def test_clock_skew_edges(saml_idp: SamlIdp, sp_keys: tuple[Path, Path], tmp_path: Path) -> None:
    """``now`` is the gateway's clock: a response is good until NotOnOrAfter
    plus the configured skew, and from NotBefore minus it."""
    from onelogin.saml2.utils import OneLogin_Saml2_Utils

    saml_idp.configure()
    metadata = tmp_path / "idp.xml"
    metadata.write_text(saml_idp.metadata(), encoding="utf-8")
    sp = provider(sp_keys, metadata, clock_skew=30)
    saml_idp.register_sp(sp.sp_metadata())
    issued = Issued(sp, saml_idp)
    root = forge.parse(issued.xml)
    conditions = forge.assertion_of(root).find("saml:Conditions", forge.NS)
    not_after = OneLogin_Saml2_Utils.parse_SAML_to_time(conditions.get("NotOnOrAfter"))
    not_before = OneLogin_Saml2_Utils.parse_SAML_to_time(conditions.get("NotBefore"))
    ok = sp.validate_response(issued.b64, request_id=issued.request_id, now=not_after + 29)
    assert ok.identity.subject == "alice@corp.test"
    with pytest.raises(AuthenticationFailed, match="expired"):
        sp.validate_response(issued.b64, request_id=issued.request_id, now=not_after + 30)
    sp.validate_response(issued.b64, request_id=issued.request_id, now=not_before - 30)
    with pytest.raises(AuthenticationFailed, match="not yet valid"):
        sp.validate_response(issued.b64, request_id=issued.request_id, now=not_before - 31)


def test_claim_mapping_for_another_idp(sp_keys: tuple[Path, Path], tmp_path: Path) -> None:
    """Any IdP's attribute names can feed the identity (here Shibboleth-style
    OIDs); values are de-duplicated, the first present wins for single ones."""
    metadata = tmp_path / "unused.xml"
    sp = provider(
        sp_keys,
        metadata,
        claims={
            "subject": ["urn:oid:0.9.2342.19200300.100.1.1"],
            "email": ["urn:oid:0.9.2342.19200300.100.1.3"],
            "name": ["urn:oid:2.16.840.1.113730.3.1.241"],
            "groups": ["urn:oid:1.3.6.1.4.1.5923.1.5.1.1"],
            "group_ids": [],
            "amr": ["urn:x:amr"],
            "mfa_values": ["otp"],
            "attributes": {"ipPhone": ["urn:x:phone", "urn:x:mobile"]},
        },
    )
    identity = sp.identity(
        "transient-123",
        {
            "urn:oid:0.9.2342.19200300.100.1.1": ["jdoe"],
            "urn:oid:0.9.2342.19200300.100.1.3": ["jdoe@uni.test", "other@uni.test"],
            "urn:oid:2.16.840.1.113730.3.1.241": ["J. Doe"],
            "urn:oid:1.3.6.1.4.1.5923.1.5.1.1": ["Intercom-Operators", "Intercom-Operators"],
            "urn:x:amr": ["pwd", "otp"],
            "urn:x:mobile": ["+49 171 0"],
        },
        1_800_000_000.0,
    )
    assert identity.subject == "jdoe"
    assert identity.email == "jdoe@uni.test"
    assert identity.name == "J. Doe"
    assert identity.groups == ("Intercom-Operators",)
    assert identity.mfa is True and identity.amr == ("pwd", "otp")
    assert identity.attributes == {"ipPhone": "+49 171 0"}
    assert identity.auth_time == 1_800_000_000.0
    # no subject claim: the NameID; none at all, or an unprintable one: refused
    assert sp.identity("nameid@uni.test", {}, 0).subject == "nameid@uni.test"
    with pytest.raises(AuthenticationFailed):
        sp.identity("", {}, 0)
    with pytest.raises(AuthenticationFailed):
        sp.identity("a\nb", {}, 0)


def test_oversized_response_is_refused_before_decoding(sp: SamlServiceProvider) -> None:
    """The adapter caps a SAMLResponse on its own (the ACS body limit is the
    same 1 MiB): at most 768 KiB of XML, never compressed."""
    huge = base64.b64encode(b"<r>" + b" " * MAX_RESPONSE_CHARS + b"</r>").decode()
    with pytest.raises(AuthenticationFailed, match="larger than 1 MiB"):
        sp.validate_response(huge, request_id="_x", now=time.time())
