"""Settings of the SAML 2.0 provider (``providers.saml``), strict by default.

Kept apart from :mod:`gateway.settings` (which imports them) so each provider's
settings stay in a module of their own.  The claim URIs below are the ones ADFS
issues; other identity providers are served by changing ``providers.saml.claims``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.core.errors import Problem

ADFS_UPN = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn"
ADFS_EMAIL = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"
ADFS_NAME = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"
ADFS_GROUP = "http://schemas.xmlsoap.org/claims/Group"
ADFS_GROUP_SID = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"
# ADFS's built-in "Group SID" claim type (Token-Groups as SIDs)
ADFS_GROUPSID = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groupsid"
ADFS_ROLE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
ADFS_AMR = "http://schemas.microsoft.com/claims/authnmethodsreferences"
ADFS_MFA = "http://schemas.microsoft.com/claims/multipleauthn"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamlClaimSettings(_Model):
    """Which assertion attributes (by ``Name``) fill which part of the identity.
    Each entry lists attribute names tried in order; the first present wins for
    single values, all are merged for lists."""

    subject: tuple[str, ...] = (ADFS_UPN,)  # falls back to the NameID
    email: tuple[str, ...] = (ADFS_EMAIL, ADFS_UPN)
    name: tuple[str, ...] = (ADFS_NAME,)
    groups: tuple[str, ...] = (ADFS_GROUP, ADFS_ROLE)
    group_ids: tuple[str, ...] = (ADFS_GROUP_SID, ADFS_GROUPSID)
    amr: tuple[str, ...] = (ADFS_AMR,)
    # an amr value among these means the person passed multi-factor authentication
    mfa_values: tuple[str, ...] = (ADFS_MFA,)
    # identity attribute (for the extra identity headers) -> assertion attributes
    attributes: dict[str, tuple[str, ...]] = Field(default_factory=dict)


class SamlSettings(_Model):
    """``providers.saml``: this gateway as a SAML service provider."""

    # this SP's entity ID; default: <public_url>/.sso/saml/metadata
    entity_id: str | None = None
    # the SP's signing (and decryption) key pair, PEM files
    sp_cert_file: Path
    sp_key_file: Path
    # the IdP's metadata: a file or an https URL (exactly one)
    idp_metadata_file: Path | None = None
    idp_metadata_url: str | None = None
    idp_metadata_refresh: int = Field(default=3600, ge=60, le=7 * 86400)
    idp_metadata_timeout: float = Field(default=5.0, gt=0, le=60)
    # SHA-256 fingerprints (hex, ':' allowed) of the IdP signing certificates to
    # trust; when set, any other certificate in the metadata is ignored
    idp_cert_fingerprints: tuple[str, ...] = ()
    # the IdP's entity ID, when its metadata describes more than one IdP
    idp_entity_id: str | None = None
    want_response_signed: bool = False  # the assertion is always required signed
    want_assertions_encrypted: bool = False
    allow_unsolicited: bool = False  # IdP-initiated login
    allow_sha1: bool = False
    allow_http_metadata_url: bool = False
    clock_skew: int = Field(default=60, ge=0, le=300)
    # how long a started login may take at the IdP
    request_lifetime: int = Field(default=600, ge=30, le=3600)
    name_id_format: str = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
    claims: SamlClaimSettings = SamlClaimSettings()

    @field_validator("idp_cert_fingerprints")
    @classmethod
    def _fingerprints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for item in value:
            hexed = item.replace(":", "").strip().lower()
            if len(hexed) != 64 or any(c not in "0123456789abcdef" for c in hexed):
                raise ValueError("a fingerprint is the SHA-256 of the certificate, 64 hex digits")
            out.append(hexed)
        return tuple(out)

    @model_validator(mode="after")
    def _one_metadata_source(self) -> SamlSettings:
        if (self.idp_metadata_file is None) == (self.idp_metadata_url is None):
            raise ValueError("give exactly one of idp_metadata_file and idp_metadata_url")
        url = self.idp_metadata_url
        if url is not None and not (
            url.startswith("https://")
            or (self.allow_http_metadata_url and url.startswith("http://"))
        ):
            raise ValueError(
                "idp_metadata_url must be https:// (allow_http_metadata_url for tests only)"
            )
        return self


def saml_problems(settings: Any) -> list[Problem]:
    """Checks across sections (``settings`` is a :class:`gateway.settings.Settings`)."""
    problems: list[Problem] = []
    src = settings.source
    saml = settings.providers.saml
    if settings.providers.default == "saml" and saml is None:
        problems.append(Problem(src, "providers.saml", "required when providers.default is 'saml'"))
    if saml is not None and not settings.public_url:
        problems.append(
            Problem(src, "public_url", "required with providers.saml (it names the ACS URL)")
        )
    return problems
