"""Settings of reverse-proxy mode: ``proxy``.

Kept apart from :mod:`gateway.settings` (which imports it).  With no
``proxy.upstreams`` the gateway is a forward-auth service only; with them it
also stands in front of the dashboards and forwards every request outside
``/.sso/`` to the upstream its host and path select.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.core.errors import AmbiguousPath, Problem
from gateway.core.paths import normalise_path
from gateway.core.policy import compile_host_globs

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UpstreamMatch(_Model):
    """Which requests go to an upstream: a host glob (required) and a path prefix."""

    hosts: tuple[str, ...] = Field(min_length=1)
    path_prefix: str = "/"
    # send the path without the prefix (/pbx/admin -> /admin); Location headers
    # pointing below the upstream get the prefix back
    strip_prefix: bool = False

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for glob in value:
            if glob.strip() == "*":
                raise ValueError(
                    "'*' would make this a default upstream for any host name; "
                    "list the host names (globs such as *.intercom.example are fine)"
                )
        compile_host_globs(value)
        return value

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        try:
            canonical = normalise_path(value)
        except AmbiguousPath as exc:
            raise ValueError(f"not a clean path: {exc}") from None
        if canonical != value:
            raise ValueError(f"write the path prefix in canonical form ({canonical!r})")
        return value


class DeviceLoginSettings(_Model):
    """The device's own admin account, used by the gateway for people it has
    authorised (the credential bridge).  Give the password as ``{file: ...}`` or
    ``{env: ...}``."""

    scheme: Literal["basic", "digest"]
    username: str = Field(min_length=1, max_length=256)
    password: SecretStr

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if ":" in value or any(c < " " or c == "\x7f" for c in value):
            raise ValueError("no ':' or control characters")
        return value


class UpstreamSettings(_Model):
    name: str
    match: UpstreamMatch
    # http://host[:port][/base] or https://...; the base path is put in front of
    # every forwarded path
    url: str
    ca_bundle: Path | None = None  # PEM; default: the system's trust store
    client_cert: Path | None = None  # PEM certificate (chain) shown to the upstream
    client_key: Path | None = None  # its key, when not in client_cert
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    # longest silence between two reads (streams that idle longer are cut)
    read_timeout: float = Field(default=300.0, gt=0, le=86400)
    preserve_host: bool = False  # send the browser's Host instead of the upstream's
    # the upstream's own cookies, expired on /.sso/logout
    logout_cookies: tuple[str, ...] = ()
    pool_size: int = Field(default=64, ge=1, le=1000)
    # old device firmware: accept bare-LF line ends, folded header values and
    # spaces before the colon in its answers; one connection per request
    legacy_http: bool = False
    # answer the device's Basic/Digest challenge for authorised people
    device_login: DeviceLoginSettings | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("letters, digits, '_', '.', '-' (up to 64)")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("must name a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials")
        if parts.query or parts.fragment or "?" in value or "#" in value:
            raise ValueError("must not have a query or fragment")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        if parts.path and parts.path != "/":
            try:
                canonical = normalise_path(parts.path)
            except AmbiguousPath as exc:
                raise ValueError(f"the base path is not clean: {exc}") from None
            if canonical != parts.path:
                raise ValueError(f"write the base path in canonical form ({canonical!r})")
        return value

    @field_validator("logout_cookies")
    @classmethod
    def _cookies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _COOKIE_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a cookie name")
        return value

    @model_validator(mode="after")
    def _tls(self) -> UpstreamSettings:
        https = self.url.startswith("https:")
        if not https and (self.ca_bundle or self.client_cert or self.client_key):
            raise ValueError("ca_bundle, client_cert and client_key need an https:// url")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        return self


class ProxySettings(_Model):
    upstreams: tuple[UpstreamSettings, ...] = ()
    # how many proxies stand in front of the gateway (their X-Forwarded-For
    # entries, X-Forwarded-Proto and -Host are kept, when they connect from
    # network.trusted_proxies); 0: the gateway faces browsers directly
    trusted_hops: int = Field(default=0, ge=0, le=10)

    @field_validator("upstreams")
    @classmethod
    def _unique(cls, value: tuple[UpstreamSettings, ...]) -> tuple[UpstreamSettings, ...]:
        names = [u.name for u in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"upstream names must be unique: {', '.join(dupes)}")
        return value


def proxy_problems(settings: Any) -> list[Problem]:
    """File checks (``settings`` is a :class:`gateway.settings.Settings`): every CA
    bundle and client certificate must load."""
    import ssl

    problems: list[Problem] = []
    src = settings.source
    for i, upstream in enumerate(settings.proxy.upstreams):
        where = f"proxy.upstreams[{i}]"
        if upstream.ca_bundle is not None:
            path = settings.resolve_path(upstream.ca_bundle)
            try:
                ssl.create_default_context(cafile=str(path))
            except (OSError, ssl.SSLError, ValueError) as exc:
                problems.append(Problem(src, f"{where}.ca_bundle", f"cannot load {path}: {exc}"))
        if upstream.client_cert is not None:
            cert = settings.resolve_path(upstream.client_cert)
            key = (
                settings.resolve_path(upstream.client_key)
                if upstream.client_key is not None
                else None
            )
            try:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
            except (OSError, ssl.SSLError, ValueError) as exc:
                problems.append(Problem(src, f"{where}.client_cert", f"cannot load {cert}: {exc}"))
    return problems
