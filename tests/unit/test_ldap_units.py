"""Pure parts of the LDAP provider and the deprovisioning watcher (the protocol
itself is tested against a real Samba AD in tests/ldap)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ldap3.utils.conv import unescape_filter_chars

from gateway.core.errors import ConfigError, ProviderUnavailable
from gateway.core.model import Identity
from gateway.deprovision import DirectoryLink, _norm_id, directory_keys
from gateway.providers.ldap import AD_BIND_REASONS, _bind_reason, guid_filter_value
from gateway.sessions.manager import Session
from gateway.settings import load_settings
from gateway.settings_ldap import LdapProviderSettings


def _ad(code: str) -> dict[str, object]:
    return {
        "result": 49,
        "description": "invalidCredentials",
        "message": f"80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, "
        f"data {code}, v4563",
    }


@pytest.mark.parametrize(("code", "reason"), sorted(AD_BIND_REASONS.items()))
def test_every_ad_sub_code_has_a_reason(code: str, reason: str) -> None:
    assert _bind_reason(_ad(code)) == reason
    assert _bind_reason(_ad(code.upper())) == reason


def test_unknown_sub_codes_and_other_results() -> None:
    assert _bind_reason(_ad("52f")) == "bind-refused-52f"
    assert _bind_reason({"result": 49, "message": "no data here"}) == "bad-password"
    assert _bind_reason({"result": 50, "description": "insufficientAccessRights"}) == (
        "bind-refused-insufficientAccessRights"
    )
    with pytest.raises(ProviderUnavailable):
        _bind_reason({"result": 8, "description": "strongerAuthRequired"})


@given(st.uuids())
def test_guid_filter_values_escape_every_byte(value: uuid.UUID) -> None:
    escaped = guid_filter_value(str(value))
    assert len(escaped) == 48 and escaped.count("\\") == 16
    assert unescape_filter_chars(escaped) != b""


GUID = "6F9619FF-8B86-D011-B42D-00C04FC964FF"


def test_directory_keys_of_identities() -> None:
    attributes = {"objectGUID": GUID, "userPrincipalName": "Bob@Corp.Test"}
    ldap = Identity(subject="bob", provider="ldap", attributes=attributes)
    assert directory_keys(ldap) == (GUID.lower(), {"bob", "bob@corp.test"})
    oidc = Identity(subject="oid-1", provider="oidc", attributes={"upn": "X@Y"})
    assert directory_keys(oidc) == ("", {"oid-1", "x@y"})
    # a SAML/OIDC session's directory link (found at sign-in) gives the objectGUID
    link = DirectoryLink(guid=GUID.lower(), dn="CN=X,DC=corp")
    assert directory_keys(oidc, link) == (GUID.lower(), {"oid-1", "x@y"})


def test_a_directory_link_is_read_from_the_login_facts_only_when_well_formed() -> None:
    def link_of(facts: object) -> DirectoryLink | None:
        record = {"login": {"directory": facts}}
        session = Session("k", Identity(subject="x", provider="saml"), None, 0.0, 0.0, 1, 1, "",
                          record)  # fmt: skip
        return DirectoryLink.of(session)

    good = {"guid": GUID, "dn": "CN=X", "groups": ["intercom-operators", 7]}
    assert link_of(good) == DirectoryLink(GUID.lower(), "CN=X", ("intercom-operators",))
    assert link_of({"guid": GUID}) == DirectoryLink(GUID.lower())
    bad: object
    for bad in (None, "x", [], {"guid": "nope"}, {"guid": 1}, {"dn": "CN=X"}):
        assert link_of(bad) is None


def test_a_value_that_is_no_object_guid_is_ignored() -> None:
    # e.g. ADFS's base64 objectGUID mapped into a SAML identity's attributes:
    # it must not be taken for a GUID (nor break the whole poll)
    for value in ("ABC", "/5kZb4aLEdC0LQDAT8lk/w==", "*", ""):
        saml = Identity(subject="x@y", provider="saml", attributes={"objectGUID": value})
        assert directory_keys(saml) == ("", {"x@y"})


def test_group_identifiers_compare_by_kind() -> None:
    assert _norm_id("CN=A , OU=G,DC=x") == _norm_id("cn=a,ou=g,dc=X")
    assert _norm_id("s-1-5-21-1") == "S-1-5-21-1"
    assert _norm_id("Intercom-Admins") == "intercom-admins"


def _settings(**kw: object) -> LdapProviderSettings:
    base: dict[str, object] = {
        "servers": ["dc1.corp.test", "dc2.corp.test:3269", "[::1]"],
        "bind_dn": "CN=svc",
        "bind_password": "x",
        "base_dns": ["DC=corp"],
    }
    base.update(kw)
    return LdapProviderSettings.model_validate(base)


def test_server_addresses_default_ports_by_transport() -> None:
    assert _settings().server_addresses() == (
        ("dc1.corp.test", 636), ("dc2.corp.test", 3269), ("::1", 636),
    )  # fmt: skip
    starttls = _settings(transport="starttls")
    assert starttls.server_addresses()[0] == ("dc1.corp.test", 389)


@pytest.mark.parametrize(
    "bad",
    [{"transport": "plain"}, {"servers": ["dc1:0"]}, {"servers": ["a b"]}, {"servers": []},
     {"user_filter": "(a=b"}, {"base_dns": []}, {"pool_size": 0}, {"timeout": 0}],
)  # fmt: skip
def test_invalid_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _settings(**bad)


def test_plain_needs_the_opt_in() -> None:
    assert _settings(transport="plain", allow_plain=True).transport == "plain"


def test_the_bind_password_may_come_from_a_file_named_in_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "bind"
    secret.write_text("s3cret\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(
        "providers:\n  default: ldap\n  ldap:\n    servers: [dc1]\n    bind_dn: CN=svc\n"
        "    base_dns: [DC=corp]\n",
        encoding="utf-8",
    )
    for name in ("SSO_GATEWAY__PROVIDERS__LDAP__BIND_PASSWORD_FILE",
                 "SSO_GATEWAY__PROVIDERS__LDAP__BIND_PASSWORD__FILE"):  # fmt: skip
        settings = load_settings(config, environ={name: str(secret)})
        assert settings.providers.ldap is not None
        assert settings.providers.ldap.bind_password.get_secret_value() == "s3cret"
    with pytest.raises(ConfigError) as err:
        load_settings(config, environ={})
    assert "providers.ldap.bind_password" in str(err.value)
