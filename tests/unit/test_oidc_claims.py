"""Pure parts of the OIDC adapter: settings validation and the claims mapping."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.providers.oidc import OidcClient, OidcFailed, has_group_overage, identity_from_claims
from gateway.settings_oidc import OidcSettings

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OTHER = "9188040d-6c67-4c5b-b112-36a304b66dad"
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"


def _settings(**extra: Any) -> OidcSettings:
    values: dict[str, Any] = {"issuer": ISSUER, "client_id": "app", "client_secret": "s"}
    values.update(extra)
    return OidcSettings.model_validate(values)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"issuer": "http://login.example/v2.0"}, "https"),
        ({"algorithms": ["none"]}, "never none"),
        ({"algorithms": ["HS256"]}, "never none"),
        ({"scopes": ["profile"]}, "openid"),
        ({"client_secret": None}, "needs client_secret"),
        ({"client_auth": "private_key_jwt", "client_secret": None}, "private_key_file"),
        ({"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0"}, "tenants"),
        ({"tenants": ["not-a-guid"]}, "GUID"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_bad_settings_are_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        _settings(**extra)
    assert message in str(info.value)


def test_plain_http_only_to_this_machine() -> None:
    _settings(issuer="http://127.0.0.1:5000/x/v2.0", allow_insecure_http=True)
    with pytest.raises(ValidationError):
        _settings(issuer="http://10.0.0.1:5000/x/v2.0", allow_insecure_http=True)


def _client(**extra: Any) -> OidcClient:
    return OidcClient(_settings(**extra))


def test_issuer_of_one_tenant() -> None:
    client = _client()
    client.check_issuer({"iss": ISSUER, "tid": TENANT}, "id-token", tid_required=True)
    with pytest.raises(OidcFailed, match="tenant-not-allowed"):
        client.check_issuer({"iss": ISSUER, "tid": OTHER}, "id-token", tid_required=True)
    with pytest.raises(OidcFailed, match="tenant-not-allowed"):
        client.check_issuer({"iss": ISSUER}, "id-token", tid_required=True)
    # logout tokens may leave tid out; the issuer still has to be ours
    client.check_issuer({"iss": ISSUER}, "logout-token", tid_required=False)
    with pytest.raises(OidcFailed, match="issuer"):
        client.check_issuer({"iss": ISSUER + "/"}, "logout-token", tid_required=False)


def test_multi_tenant_issuer_takes_the_token_tenant() -> None:
    client = _client(
        issuer="https://login.microsoftonline.com/{tenantid}/v2.0", tenants=[TENANT, OTHER]
    )
    other_iss = f"https://login.microsoftonline.com/{OTHER}/v2.0"
    client.check_issuer({"iss": other_iss, "tid": OTHER}, "id-token", tid_required=True)
    # the tenant in iss must be the token's own tid
    with pytest.raises(OidcFailed, match="issuer"):
        client.check_issuer({"iss": other_iss, "tid": TENANT}, "id-token", tid_required=True)
    with pytest.raises(OidcFailed, match="tenant"):
        client.check_issuer(
            {"iss": other_iss.replace(OTHER, "11111111-1111-4111-8111-111111111111"),
             "tid": "11111111-1111-4111-8111-111111111111"},
            "id-token",
            tid_required=True,
        )  # fmt: skip


def test_generic_provider_without_tenants() -> None:
    client = _client(issuer="https://idp.example.org")
    client.check_issuer({"iss": "https://idp.example.org"}, "id-token", tid_required=True)


def test_identity_mapping() -> None:
    settings = _settings(group_names={"AAAA-1": "Intercom-Admins"})
    identity = identity_from_claims(
        settings,
        {
            "sub": "pairwise",
            "oid": "object-id",
            "tid": TENANT,
            "preferred_username": "adam@corp.example",
            "name": "Adam",
            "groups": ["aaaa-1", "BBBB-2", 7, "aaaa-1"],
            "roles": ["Intercom.Supervisor"],
            "amr": ["pwd", "mfa"],
            "acrs": ["c1"],
            "auth_time": 1_800_000_000,
        },
    )
    assert identity.subject == "object-id"
    assert identity.email == "adam@corp.example"  # no email claim: the UPN
    assert identity.groups == ("Intercom-Admins", "bbbb-2", "Intercom.Supervisor")
    assert identity.group_ids == ("aaaa-1", "bbbb-2")
    assert identity.mfa and identity.amr == ("pwd", "mfa") and identity.acrs == ("c1",)
    assert identity.attributes["oidc_sub"] == "pairwise"
    assert identity.auth_time == 1_800_000_000


def test_identity_needs_the_subject_claim() -> None:
    with pytest.raises(OidcFailed, match="claim-missing:oid"):
        identity_from_claims(_settings(), {"sub": "x"})


def test_overage_shapes() -> None:
    assert has_group_overage({"_claim_names": {"groups": "src1"}}, "groups")
    assert has_group_overage({"hasgroups": True}, "groups")
    assert not has_group_overage({"groups": [], "hasgroups": True}, "groups")
    assert not has_group_overage({}, "groups")
    assert not has_group_overage({"hasgroups": "true"}, "groups")
