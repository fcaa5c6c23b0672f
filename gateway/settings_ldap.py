"""Settings of the LDAP (Active Directory) provider: ``providers.ldap``.

Kept apart from :mod:`gateway.settings` (which imports it) so the other
providers' settings can grow beside it without touching the same lines.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# enabled people only: objectCategory person, userAccountControl bit 2 (ACCOUNTDISABLE) off
DEFAULT_USER_FILTER = (
    "(&(objectCategory=person)(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))"
)
_HOST_PORT = re.compile(
    r"(?P<host>[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
)
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,63}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeprovisionSettings(_Model):
    enabled: bool = True
    interval: float = Field(default=30.0, ge=1, le=3600)  # seconds between change polls
    full_check_interval: float = Field(default=600.0, ge=10, le=86400)  # backstop


class LdapProviderSettings(_Model):
    servers: tuple[str, ...] = Field(min_length=1)  # host or host:port, tried in order
    transport: Literal["ldaps", "starttls", "plain"] = "ldaps"
    allow_plain: bool = False  # "plain" sends passwords in clear: needs this too
    ca_bundle: Path | None = None  # PEM file; default: the system's trust store
    connect_timeout: float = Field(default=3.0, gt=0, le=60)
    timeout: float = Field(default=5.0, gt=0, le=120)  # per LDAP operation
    retry_down_after: float = Field(default=30.0, ge=0, le=3600)
    bind_dn: str = Field(min_length=1)
    bind_password: SecretStr
    base_dns: tuple[str, ...] = Field(min_length=1)
    login_attribute: Literal["sAMAccountName", "userPrincipalName"] = "sAMAccountName"
    user_filter: str = DEFAULT_USER_FILTER
    group_base_dns: tuple[str, ...] = ()  # default: the domain (defaultNamingContext)
    extra_attributes: tuple[str, ...] = ("department", "telephoneNumber", "ipPhone")
    pool_size: int = Field(default=4, ge=1, le=64)
    deprovision: DeprovisionSettings = DeprovisionSettings()

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for server in value:
            match = _HOST_PORT.fullmatch(server)
            if match is None or (match["port"] and not 0 < int(match["port"]) < 65536):
                raise ValueError(f"{server!r} is not host or host:port")
        return value

    @field_validator("user_filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(
            ")"
        ):
            raise ValueError("must be one parenthesised LDAP filter")
        return value

    @field_validator("extra_attributes")
    @classmethod
    def _attributes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _ATTRIBUTE.fullmatch(name):
                raise ValueError(f"{name!r} is not an LDAP attribute name")
        return value

    @model_validator(mode="after")
    def _plain_needs_opt_in(self) -> LdapProviderSettings:
        if self.transport == "plain" and not self.allow_plain:
            raise ValueError(
                "transport 'plain' sends passwords unencrypted; use ldaps or starttls, "
                "or set allow_plain: true if you really must"
            )
        return self

    def server_addresses(self) -> tuple[tuple[str, int], ...]:
        default = 636 if self.transport == "ldaps" else 389
        out = []
        for server in self.servers:
            match = _HOST_PORT.fullmatch(server)
            assert match is not None  # validated
            host = match["host"].strip("[]")
            out.append((host, int(match["port"]) if match["port"] else default))
        return tuple(out)
