"""Settings of the OpenID Connect provider (``providers.oidc``), Entra ID first.

Kept apart from :mod:`gateway.settings` because it is long; the rules are the
same (frozen, unknown keys are errors, secrets from ``{env:}``/``{file:}``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

TENANT_PLACEHOLDER = "{tenantid}"
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OidcClaimSettings(_Model):
    """Which token claims make up the identity (Entra ID's names by default)."""

    subject: str = "oid"  # Entra's stable, tenant-wide object id (sub is per app)
    username: str = "preferred_username"
    email: str = "email"
    name: str = "name"
    groups: str = "groups"
    roles: str = "roles"


class GraphSettings(_Model):
    """Microsoft Graph, for the groups overage (``transitiveMemberOf``)."""

    url: str = "https://graph.microsoft.com/v1.0"
    # an app-only token for Graph, by the client credentials grant
    token_scope: str = "https://graph.microsoft.com/.default"  # noqa: S105 - a scope
    timeout: float = Field(default=5.0, gt=0, le=60)
    max_pages: int = Field(default=20, ge=1, le=1000)


class OidcSettings(_Model):
    display_name: str = Field(default="Microsoft Entra ID", min_length=1, max_length=64)
    # https://login.microsoftonline.com/<tenant-id>/v2.0, or .../{tenantid}/v2.0
    # (the multi-tenant form; ``tenants`` then lists the tenants allowed in)
    issuer: str
    discovery_url: str | None = None  # default: issuer + /.well-known/openid-configuration
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    client_auth: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = (
        "client_secret_basic"
    )
    # private_key_jwt (Entra "certificate credentials"): PEM key + its certificate,
    # whose thumbprint goes into the assertion header (x5t#S256 and x5t)
    private_key_file: Path | None = None
    certificate_file: Path | None = None
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    redirect_uri: str | None = (
        None  # default: https://<host the login started on>/.sso/oidc/callback
    )
    post_logout_redirect_uri: str | None = None  # default: https://<host>/.sso/logout
    tenants: tuple[str, ...] = ()  # allow-list of tenant ids (tid); empty: the issuer's own
    algorithms: tuple[str, ...] = ("RS256",)
    leeway: int = Field(default=60, ge=0, le=300)  # seconds of clock skew accepted
    userinfo: bool = False
    claims: OidcClaimSettings = OidcClaimSettings()
    group_names: dict[str, str] = Field(default_factory=dict)  # group object id -> name
    group_overage: Literal["graph", "directory", "refuse"] = "graph"
    graph: GraphSettings = GraphSettings()
    end_session: bool = True  # RP-initiated logout at the provider after local logout
    backchannel_logout: bool = True
    http_timeout: float = Field(default=5.0, gt=0, le=60)
    ca_bundle: Path | None = None
    metadata_refresh: int = Field(default=3600, ge=60)
    login_timeout: int = Field(default=600, ge=60, le=3600)
    # plain http to the provider: only for a provider on this machine (tests)
    allow_insecure_http: bool = False

    @field_validator("tenants")
    @classmethod
    def _guids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for tenant in value:
            if not _GUID.match(tenant):
                raise ValueError(f"{tenant!r} is not a tenant id (a GUID)")
        return tuple(t.lower() for t in value)

    @field_validator("group_names")
    @classmethod
    def _group_ids(cls, value: dict[str, str]) -> dict[str, str]:
        return {k.lower(): v for k, v in value.items()}

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"}
        bad = [a for a in value if a not in allowed]
        if bad or not value:
            raise ValueError(
                f"ID tokens must be signed with one of {sorted(allowed)} (never none or HS*)"
            )
        return value

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in value:
            raise ValueError("must include 'openid'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> OidcSettings:
        for name in ("issuer", "discovery_url", "redirect_uri", "post_logout_redirect_uri"):
            url = getattr(self, name)
            if url is not None:
                _check_url(name, url, self.allow_insecure_http)
        _check_url("graph.url", self.graph.url, self.allow_insecure_http)
        if self.client_auth == "private_key_jwt":
            if self.private_key_file is None:
                raise ValueError("client_auth private_key_jwt needs private_key_file")
        elif self.client_secret is None:
            raise ValueError(f"client_auth {self.client_auth} needs client_secret")
        if self.multi_tenant and not self.tenants:
            raise ValueError(
                f"an issuer with {TENANT_PLACEHOLDER} accepts any tenant: list the allowed "
                "ones in tenants"
            )
        return self

    @property
    def multi_tenant(self) -> bool:
        return TENANT_PLACEHOLDER in self.issuer

    @property
    def discovery(self) -> str:
        if self.discovery_url:
            return self.discovery_url
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


def _check_url(name: str, url: str, insecure_ok: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK and insecure_ok:
        return
    raise ValueError(
        f"{name} must be an https URL (plain http only to this machine with allow_insecure_http)"
    )
