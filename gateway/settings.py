"""Settings: one YAML file plus environment overrides, parsed once into frozen models.

Loading never changes anything global.  Every problem is collected and reported
together as :class:`gateway.core.errors.ConfigError` (file, key path, reason).

Where values come from, in order of precedence:

1. ``SSO_GATEWAY__<KEY>__<SUBKEY>=value`` environment variables (``__`` separates
   levels, names are case-insensitive, values are read as YAML scalars), and
   ``SSO_GATEWAY__<KEY>...__FILE=/path`` (or ``..._FILE`` when ``<KEY>_FILE`` is
   not a setting of its own) to read a value from a file (Kubernetes Secrets
   mounted as files).
2. The YAML file.  Any value in it may be written as ``{env: NAME}`` or
   ``{file: /path}`` to take it from an environment variable or a file; secrets
   should always be given that way.
3. Defaults below.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from gateway.core.errors import ConfigError, Problem, key_path
from gateway.core.network import parse_networks
from gateway.files import STANDARD_STREAMS
from gateway.settings_ldap import LdapProviderSettings
from gateway.settings_oidc import OidcSettings
from gateway.settings_proxy import ProxySettings, proxy_problems
from gateway.settings_saml import SamlSettings, saml_problems

ENV_PREFIX = "SSO_GATEWAY__"
CONFIG_ENV = "SSO_GATEWAY_CONFIG"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=2, ge=1, le=64)
    worker_class: Literal["gevent", "sync", "gthread"] = "gevent"
    worker_connections: int = Field(default=1000, ge=1)
    timeout: int = Field(default=30, ge=1)


class CookieSettings(_Model):
    name: str = Field(default="sso_gw", pattern=r"^[A-Za-z0-9_]{1,64}$")
    secure: bool = True
    domain: str | None = None
    samesite: Literal["Lax", "Strict"] = "Lax"


_SENTINEL_ADDRESS = re.compile(
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::(?P<port>[0-9]{1,5}))?"
)


def parse_sentinel_address(text: str) -> tuple[str, int]:
    """``host[:port]`` (an IPv6 literal in brackets; port 26379 when left out)."""
    match = _SENTINEL_ADDRESS.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not host[:port]")
    port = int(match.group("port") or 26379)
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: the port must be 1-65535")
    return match.group("host").strip("[]"), port


class RedisSentinelSettings(_Model):
    """Where Redis Sentinel is asked for the current master (instead of redis_url)."""

    master: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")  # the name sentinels monitor
    sentinels: tuple[str, ...] = Field(min_length=1, max_length=16)  # host[:port]
    db: int = Field(default=0, ge=0, le=1023)
    username: str | None = None  # ACL user on the master/replicas
    password: SecretStr | None = None  # password of the master/replicas (requirepass)
    sentinel_username: str | None = None
    sentinel_password: SecretStr | None = None  # the sentinels' own requirepass

    @field_validator("sentinels")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            parse_sentinel_address(item)
        return value

    def addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(parse_sentinel_address(item) for item in self.sentinels)


class SessionSettings(_Model):
    store: Literal["file", "redis", "memory"] = "file"
    redis_url: SecretStr | None = None
    redis_sentinel: RedisSentinelSettings | None = None
    file_dir: Path | None = None
    idle_timeout: int = Field(default=900, ge=30)
    absolute_lifetime: int = Field(default=28800, ge=60)
    warn_before: int = Field(default=120, ge=0)
    touch_interval: int = Field(default=5, ge=0, le=300)
    cache_seconds: float = Field(default=2.0, ge=0, le=30)
    redis_socket_timeout: float = Field(default=1.0, gt=0, le=30)


class NetworkSettings(_Model):
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")

    @field_validator("trusted_proxies")
    @classmethod
    def _nets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(list(value))
        return value


class RedirectSettings(_Model):
    allowed_domains: tuple[str, ...] = ()
    default: str = "/.sso/userinfo"


class HeaderSettings(_Model):
    user: str = "X-Auth-Request-User"
    email: str = "X-Auth-Request-Email"
    groups: str = "X-Auth-Request-Groups"
    tier: str = "X-Auth-Request-Tier"
    jwt: str = "X-Auth-Request-Jwt"
    # header name -> identity attributes tried in order (first non-empty wins)
    extra: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {
            "X-Auth-Request-Extension": ("ipPhone", "telephoneNumber"),
            "X-Auth-Request-Department": ("department",),
        }
    )

    @field_validator("user", "email", "groups", "tier", "jwt")
    @classmethod
    def _header_name(cls, value: str) -> str:
        return _check_header_name(value)

    @field_validator("extra")
    @classmethod
    def _extra_names(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for name in value:
            _check_header_name(name)
        return value

    def all_names(self) -> tuple[str, ...]:
        return (self.user, self.email, self.groups, self.tier, self.jwt, *self.extra)


class JwtSettings(_Model):
    enabled: bool = True
    audience: str = "intercom-upstreams"
    issuer: str | None = None
    lifetime: int = Field(default=60, ge=10, le=3600)
    key_file: Path | None = None
    # public halves also published at /.sso/jwks.json, never used to sign:
    # the next key before a rotation, the previous one after it
    published_key_files: list[Path] = Field(default_factory=list, max_length=8)


class LocalProviderSettings(_Model):
    users_file: Path = Path("users.yaml")


class ProviderSettings(_Model):
    default: Literal["local", "oidc", "saml", "ldap"] = "local"
    local: LocalProviderSettings = LocalProviderSettings()
    oidc: OidcSettings | None = None
    saml: SamlSettings | None = None
    ldap: LdapProviderSettings | None = None


class LoginSettings(_Model):
    max_user_failures: int = Field(default=5, ge=1)
    max_client_failures: int = Field(default=20, ge=1)
    failure_window: int = Field(default=900, ge=1)
    # logins started at an identity provider per client address and minute
    max_starts_per_minute: int = Field(default=120, ge=1)


class MetricsSettings(_Model):
    enabled: bool = True
    # /.sso/metrics answers only direct requests (no proxy headers) from these
    # networks, and, when a token is set, only with "Authorization: Bearer <token>"
    allowed_networks: tuple[str, ...] = (
        "127.0.0.1/32",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
    )
    token: SecretStr | None = None

    @field_validator("allowed_networks")
    @classmethod
    def _nets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(list(value))
        return value


class AuditSettings(_Model):
    destination: str = "stderr"  # stderr, stdout or a file path


class AccessLogSettings(_Model):
    """One JSON line per request (gateway.access_log), off unless enabled."""

    enabled: bool = False
    destination: str = Field(default="stdout", min_length=1)  # stdout, stderr or a file path
    # query parameters whose values are logged as [redacted] (any case, percent-
    # encoded or not; gateway.access_log.QueryRedactor); an empty list logs queries as sent
    redact_query: tuple[str, ...] = (
        # OpenID Connect / OAuth 2.0: the callback's code and state, tokens
        "code",
        "state",
        "id_token",
        "id_token_hint",
        "access_token",
        "refresh_token",
        "logout_token",
        "client_secret",
        # SAML HTTP-Redirect binding (/.sso/saml/slo); the gateway's RelayState is a
        # one-time handle to its logout state, not the return URL
        "SAMLRequest",
        "SAMLResponse",
        "Signature",
        "RelayState",
        # what dashboards and camera streams put into URLs
        "token",
        "auth_token",
        "authSig",  # Home Assistant's signed paths
        "api_key",
        "apikey",
        "password",
        "passwd",
        "secret",
    )

    @field_validator("redact_query")
    @classmethod
    def _query_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            # names as the application reads them (decoded), matched ignoring ASCII case
            if not re.fullmatch(r"[!-~]+", name) or re.search(r"[&;=+%]", name):
                raise ValueError(
                    f"{name!r} is not a query parameter name: printable ASCII without"
                    " spaces or any of & ; = + %"
                )
        return value


class Settings(_Model):
    site_name: str = "Intercom SSO Gateway"
    public_url: str | None = None
    data_dir: Path = Path("var")
    policies_dir: Path = Path("policies")
    secret_key: SecretStr | None = None
    listen: ListenSettings = ListenSettings()
    cookie: CookieSettings = CookieSettings()
    session: SessionSettings = SessionSettings()
    network: NetworkSettings = NetworkSettings()
    redirects: RedirectSettings = RedirectSettings()
    headers: HeaderSettings = HeaderSettings()
    jwt: JwtSettings = JwtSettings()
    providers: ProviderSettings = ProviderSettings()
    login: LoginSettings = LoginSettings()
    audit: AuditSettings = AuditSettings()
    access_log: AccessLogSettings = AccessLogSettings()
    metrics: MetricsSettings = MetricsSettings()
    proxy: ProxySettings = ProxySettings()

    # where the file came from, for relative paths and messages
    source: str = Field(default="<defaults>", exclude=True)

    def resolve_path(self, value: Path) -> Path:
        """Relative paths in the config are relative to the config file's folder."""
        if value.is_absolute() or self.source.startswith("<"):
            return value
        return Path(self.source).resolve().parent / value

    def resolve_destination(self, destination: str) -> str:
        """A log destination: ``stdout``, ``stderr``, or a file path resolved
        like every other path (see gateway.files.open_destination)."""
        if destination in STANDARD_STREAMS:
            return destination
        return str(self.resolve_path(Path(destination)))

    @property
    def audit_destination(self) -> str:
        return self.resolve_destination(self.audit.destination)

    @property
    def access_log_destination(self) -> str:
        return self.resolve_destination(self.access_log.destination)

    @property
    def jwt_key_path(self) -> Path:
        """The assertion's signing key: jwt.key_file, else one generated into data_dir."""
        if self.jwt.key_file:
            return self.resolve_path(self.jwt.key_file)
        return self.resolve_path(self.data_dir) / "jwt-signing-key.json"

    @property
    def sessions_dir(self) -> Path:
        if self.session.file_dir is not None:
            return self.resolve_path(self.session.file_dir)
        return self.resolve_path(self.data_dir) / "sessions"


def _check_header_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", value):
        raise ValueError("a header name is letters, digits and '-' only")
    return value


# -- loading ------------------------------------------------------------------


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Parse the config file (or defaults when ``path`` is None) plus environment
    overrides.  Raises ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    problems: list[Problem] = []
    # absolute, so relative paths in the file keep meaning the same after a chdir
    source = str(Path(path).absolute()) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path), problems)
    _apply_env_overrides(raw, env, problems)
    raw = _resolve_refs(raw, source, "", env, problems)
    if problems:
        raise ConfigError(problems)
    try:
        settings = Settings.model_validate({**raw, "source": source})
    except ValidationError as exc:
        for err in exc.errors():
            key = key_path(err.get("loc", ()))
            problems.append(Problem(source, key, _reason(err)))
        raise ConfigError(problems) from None
    problems.extend(_cross_checks(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def fallback_paths(path: str | Path | None) -> tuple[Path, Path]:
    """(policies folder, users file) named by a config file that does not
    validate, or the defaults: so ``check`` can still look at them."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        raw = _read_yaml(Path(path), [])
        base = Path(path).absolute().parent
    policies = raw.get("policies_dir")
    providers = raw.get("providers")
    local = providers.get("local") if isinstance(providers, dict) else None
    users = local.get("users_file") if isinstance(local, dict) else None
    policies_path = Path(policies) if isinstance(policies, str) else Path("policies")
    users_path = Path(users) if isinstance(users, str) else Path("users.yaml")
    return base / policies_path, base / users_path


def _read_yaml(path: Path, problems: list[Problem]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(Problem(str(path), "", f"cannot read: {exc.strerror or exc}"))
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or "invalid YAML"
        # the offending line is not echoed: it may hold a secret
        problems.append(Problem(str(path), where, f"YAML syntax error: {what}"))
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(Problem(str(path), "", "the top level must be a mapping"))
        return {}
    return data


def _apply_env_overrides(
    raw: dict[str, Any], env: Mapping[str, str], problems: list[Problem]
) -> None:
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        from_file = False
        if parts[-1] == "file" and len(parts) > 1:
            parts = parts[:-1]
            from_file = True
        elif (
            parts[-1].endswith("_file")
            and not _is_setting(parts)
            and _is_setting([*parts[:-1], parts[-1][: -len("_file")]])
        ):
            # NAME_FILE reads NAME from a file, unless NAME_FILE is a setting of
            # its own (providers.local.users_file, jwt.key_file)
            parts[-1] = parts[-1][: -len("_file")]
            from_file = True
        value: Any
        if from_file:
            value = {"file": env[name]}
        else:
            try:
                value = yaml.safe_load(env[name]) if env[name] else ""
            except yaml.YAMLError:
                value = env[name]
            if isinstance(value, dict | list) and not _is_collection_setting(parts):
                value = env[name]  # a scalar setting: take the text as it is
        node = raw
        ok = True
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(Problem(f"env {name}", ".".join(parts), "overrides a non-mapping"))
                ok = False
                break
            node = child
        if ok:
            node[parts[-1]] = value


_NOT_A_SETTING = object()


def _annotation(parts: list[str]) -> Any:
    """The type of the setting ``parts`` names (nested models followed), or
    ``_NOT_A_SETTING``."""
    node: Any = Settings
    for part in parts:
        fields = getattr(node, "model_fields", None)
        if fields is None or part not in fields or part == "source":
            return _NOT_A_SETTING
        node = _unwrap_optional(fields[part].annotation)
    return node


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X`` (an optional section such as session.redis_sentinel)."""
    args = typing.get_args(annotation)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _is_setting(parts: list[str]) -> bool:
    return _annotation(parts) is not _NOT_A_SETTING


def _is_collection_setting(parts: list[str]) -> bool:
    """Whether ``parts`` names a list or mapping setting (trusted_proxies, ...)."""
    return typing.get_origin(_annotation(parts)) in (tuple, list, dict)


def _resolve_refs(
    node: Any, source: str, path: str, env: Mapping[str, str], problems: list[Problem]
) -> Any:
    """Replace ``{env: NAME}`` and ``{file: PATH}`` mappings by what they point at."""
    if isinstance(node, dict):
        keys = set(node)
        if keys == {"env"} and isinstance(node["env"], str):
            value = env.get(node["env"])
            if value is None:
                problems.append(
                    Problem(source, path, f"environment variable {node['env']} is not set")
                )
                return None
            return value
        if keys == {"file"} and isinstance(node["file"], str):
            try:
                return Path(node["file"]).read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append(
                    Problem(source, path, f"cannot read {node['file']}: {exc.strerror or exc}")
                )
                return None
        return {
            k: _resolve_refs(v, source, f"{path}.{k}" if path else str(k), env, problems)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_resolve_refs(v, source, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    return node


def _reason(err: Mapping[str, Any]) -> str:
    if err.get("type") == "extra_forbidden":
        return "unknown key"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def _check_ca_bundle(src: str, path: Path) -> list[Problem]:
    """The LDAP CA bundle must be a readable PEM file with at least one certificate."""
    import ssl

    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return [Problem(src, "providers.ldap.ca_bundle", f"cannot load {path}: {reason}")]
    return []


def _cross_checks(settings: Settings) -> list[Problem]:
    problems: list[Problem] = []
    src = settings.source
    session = settings.session
    if session.store == "redis" and session.redis_url is None and session.redis_sentinel is None:
        problems.append(
            Problem(
                src,
                "session.redis_url",
                "required when session.store is 'redis' (or give session.redis_sentinel)",
            )
        )
    if session.redis_url is not None and session.redis_sentinel is not None:
        problems.append(
            Problem(src, "session.redis_sentinel", "give session.redis_url or this, not both")
        )
    if settings.session.idle_timeout > settings.session.absolute_lifetime:
        problems.append(
            Problem(src, "session.idle_timeout", "must not exceed session.absolute_lifetime")
        )
    if settings.cookie.domain is not None and not settings.cookie.domain.strip("."):
        problems.append(Problem(src, "cookie.domain", "must name a domain"))
    default = settings.providers.default
    if default != "local" and getattr(settings.providers, default) is None:
        problems.append(
            Problem(src, f"providers.{default}", f"required when providers.default is {default!r}")
        )
    ldap = settings.providers.ldap
    if ldap is not None and ldap.ca_bundle is not None:
        problems.extend(_check_ca_bundle(src, settings.resolve_path(ldap.ca_bundle)))
    if settings.redirects.default and not settings.redirects.default.startswith("/"):
        problems.append(Problem(src, "redirects.default", "must be a path starting with '/'"))
    problems.extend(saml_problems(settings))
    problems.extend(proxy_problems(settings))
    return problems
