"""Settings: YAML plus environment overrides into frozen models; every problem at once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from gateway.core.errors import ConfigError, Problem
from gateway.serve import gunicorn_options
from gateway.settings import Settings, load_settings

FULL_CONFIG = """\
site_name: Site A intercom
public_url: https://sso.site-a.example
data_dir: /var/lib/sso-gateway
policies_dir: /etc/sso-gateway/policies
secret_key: {env: GW_TEST_SECRET_KEY}
listen:
  host: 0.0.0.0
  port: 9000
  workers: 4
  worker_class: gthread
  worker_connections: 500
  timeout: 45
cookie:
  name: sso_site_a
  secure: true
  domain: .site-a.example
  samesite: Strict
session:
  store: redis
  redis_url: {file: REDIS_URL_FILE}
  idle_timeout: 600
  absolute_lifetime: 14400
  warn_before: 60
  touch_interval: 10
  redis_socket_timeout: 0.5
network:
  trusted_proxies: [10.0.0.0/8, "fd00::/8", 192.0.2.7]
redirects:
  allowed_domains: [site-a.example, pbx.example]
  default: /.sso/userinfo
headers:
  user: X-Remote-User
  email: X-Remote-Email
  groups: X-Remote-Groups
  tier: X-Remote-Tier
  jwt: X-Remote-Jwt
  extra:
    X-Remote-Extension: [ipPhone, telephoneNumber]
jwt:
  enabled: true
  audience: site-a-upstreams
  issuer: https://sso.site-a.example
  lifetime: 120
  key_file: /var/lib/sso-gateway/jwt.json
providers:
  default: local
  local:
    users_file: /etc/sso-gateway/users.yaml
login:
  max_user_failures: 3
  max_client_failures: 10
  failure_window: 600
audit:
  destination: /var/log/sso-gateway/audit.log
access_log:
  enabled: true
  destination: /var/log/sso-gateway/access.log
"""

SECRET_KEY = "s3cret-key-value-nobody-should-see-0123456789"
REDIS_URL = "redis://:redis-password-value@redis.internal:6379/2"


def write_config(directory: Path, text: str, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path | None, environ: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={} if environ is None else environ)
    assert info.value.problems, "a ConfigError must carry its problems"
    return info.value.problems


def by_key(found: list[Problem]) -> dict[str, str]:
    return {p.key_path: p.reason for p in found}


@pytest.fixture
def full(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    redis_file = tmp_path / "redis-url"
    redis_file.write_text(REDIS_URL + "\n", encoding="utf-8")
    config = write_config(tmp_path, FULL_CONFIG.replace("REDIS_URL_FILE", str(redis_file)))
    return config, {"GW_TEST_SECRET_KEY": SECRET_KEY}


# -- defaults and a full file --------------------------------------------------------


def test_defaults_load() -> None:
    settings = load_settings(None, environ={})
    assert settings.source == "<defaults>"
    assert settings.listen.port == 8080
    assert settings.listen.worker_class == "gevent"
    assert settings.session.store == "file"
    assert settings.session.idle_timeout == 900
    assert settings.session.absolute_lifetime == 28800
    assert settings.cookie.secure is True
    assert settings.secret_key is None
    assert settings.headers.user == "X-Auth-Request-User"
    assert settings.headers.jwt == "X-Auth-Request-Jwt"
    assert "X-Auth-Request-Extension" in settings.headers.all_names()
    assert settings.providers.default == "local"
    assert settings.audit.destination == "stderr"
    assert settings.access_log.enabled is False
    assert settings.access_log.destination == "stdout"
    assert settings == Settings()


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, "# nothing yet\n"), environ={})
    assert settings.listen.port == 8080


def test_full_realistic_config_loads(full: tuple[Path, dict[str, str]]) -> None:
    config, environ = full
    settings = load_settings(config, environ=environ)
    assert settings.source == str(config)
    assert settings.site_name == "Site A intercom"
    assert settings.public_url == "https://sso.site-a.example"
    assert settings.data_dir == Path("/var/lib/sso-gateway")
    assert settings.listen.host == "0.0.0.0"
    assert settings.listen.port == 9000
    assert settings.listen.worker_class == "gthread"
    assert settings.cookie.name == "sso_site_a"
    assert settings.cookie.domain == ".site-a.example"
    assert settings.cookie.samesite == "Strict"
    assert settings.session.store == "redis"
    assert settings.session.idle_timeout == 600
    assert settings.session.redis_socket_timeout == 0.5
    assert settings.network.trusted_proxies == ("10.0.0.0/8", "fd00::/8", "192.0.2.7")
    assert settings.redirects.allowed_domains == ("site-a.example", "pbx.example")
    assert settings.headers.all_names() == (
        "X-Remote-User",
        "X-Remote-Email",
        "X-Remote-Groups",
        "X-Remote-Tier",
        "X-Remote-Jwt",
        "X-Remote-Extension",
    )
    assert settings.headers.extra == {"X-Remote-Extension": ("ipPhone", "telephoneNumber")}
    assert settings.jwt.audience == "site-a-upstreams"
    assert settings.jwt.lifetime == 120
    assert settings.jwt.key_file == Path("/var/lib/sso-gateway/jwt.json")
    assert settings.providers.local.users_file == Path("/etc/sso-gateway/users.yaml")
    assert settings.login.max_user_failures == 3
    assert settings.audit.destination == "/var/log/sso-gateway/audit.log"
    assert settings.access_log.enabled is True
    assert settings.access_log_destination == "/var/log/sso-gateway/access.log"
    # secrets came from {env: ...} and {file: ...} (the file's trailing newline dropped)
    assert isinstance(settings.secret_key, SecretStr)
    assert settings.secret_key.get_secret_value() == SECRET_KEY
    assert isinstance(settings.session.redis_url, SecretStr)
    assert settings.session.redis_url.get_secret_value() == REDIS_URL


def test_settings_are_frozen(full: tuple[Path, dict[str, str]]) -> None:
    config, environ = full
    settings = load_settings(config, environ=environ)
    with pytest.raises(ValidationError):
        settings.site_name = "changed"
    with pytest.raises(ValidationError):
        settings.listen.port = 1
    with pytest.raises(ValidationError):
        settings.session.idle_timeout = 1
    with pytest.raises(ValidationError):
        settings.headers.user = "X-Evil"
    assert settings.listen.port == 9000
    assert settings.site_name == "Site A intercom"


# -- problems ------------------------------------------------------------------------


def test_unknown_top_level_key_is_an_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "site_nmae: typo\n")
    assert problems(config) == [Problem(str(config), "site_nmae", "unknown key")]


def test_unknown_nested_key_is_an_error_with_its_key_path(tmp_path: Path) -> None:
    config = write_config(tmp_path, "cookie:\n  secrets: [a, b]\n")
    assert problems(config) == [Problem(str(config), "cookie.secrets", "unknown key")]


def test_unknown_deeply_nested_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, "providers:\n  local:\n    users: x.yaml\n")
    assert by_key(problems(config)) == {"providers.local.users": "unknown key"}


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "nope: 1\n"
        "listen:\n  port: 99999\n  bogus: true\n"
        "cookie:\n  secrets: x\n  samesite: None\n"
        "session:\n  idle_timeout: 5\n"
        "jwt:\n  lifetime: notanumber\n",
    )
    found = problems(config)
    assert {p.file for p in found} == {str(config)}
    keyed = by_key(found)
    assert set(keyed) == {
        "nope",
        "listen.port",
        "listen.bogus",
        "cookie.secrets",
        "cookie.samesite",
        "session.idle_timeout",
        "jwt.lifetime",
    }
    assert keyed["nope"] == keyed["listen.bogus"] == keyed["cookie.secrets"] == "unknown key"
    assert "65535" in keyed["listen.port"]
    assert "30" in keyed["session.idle_timeout"]
    # the message names file and key path of each one
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={})
    message = str(info.value)
    assert f"{config}: listen.port: " in message
    assert f"{config}: cookie.secrets: unknown key" in message
    assert len(message.splitlines()) == len(found)


def test_yaml_syntax_error_reports_the_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "site_name: ok\nlisten:\n  port: 8080: 9090\n")
    (problem,) = problems(config)
    assert problem.file == str(config)
    assert problem.key_path.startswith("line 3")
    assert "YAML syntax error" in problem.reason


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    config = write_config(tmp_path, text)
    assert problems(config) == [Problem(str(config), "", "the top level must be a mapping")]


def test_missing_config_file_is_a_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    (problem,) = problems(missing)
    assert problem.file == str(missing)
    assert "cannot read" in problem.reason


def test_wrong_type_for_a_section(tmp_path: Path) -> None:
    config = write_config(tmp_path, "listen: 8080\nsession: [a]\n")
    assert set(by_key(problems(config))) == {"listen", "session"}


# -- {env: NAME} and {file: PATH} ----------------------------------------------------


def test_env_and_file_references_resolve(tmp_path: Path) -> None:
    url_file = tmp_path / "redis-url"
    url_file.write_text(f"  {REDIS_URL}\n\n", encoding="utf-8")
    config = write_config(
        tmp_path,
        "secret_key: {env: MY_KEY}\n"
        "site_name: {env: MY_SITE}\n"
        f"session:\n  store: redis\n  redis_url: {{file: {url_file}}}\n"
        "redirects:\n  allowed_domains:\n    - {env: MY_DOMAIN}\n    - pbx.example\n",
    )
    settings = load_settings(
        config, environ={"MY_KEY": SECRET_KEY, "MY_SITE": "Site B", "MY_DOMAIN": "b.example"}
    )
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == SECRET_KEY
    assert settings.site_name == "Site B"
    assert settings.session.redis_url is not None
    assert settings.session.redis_url.get_secret_value() == REDIS_URL
    assert settings.redirects.allowed_domains == ("b.example", "pbx.example")


def test_missing_env_var_and_unreadable_file_are_problems_with_key_paths(
    tmp_path: Path,
) -> None:
    missing_file = tmp_path / "no-such-secret"
    config = write_config(
        tmp_path,
        "secret_key: {env: GW_TEST_NOT_SET}\n"
        f"session:\n  store: redis\n  redis_url: {{file: {missing_file}}}\n"
        "redirects:\n  allowed_domains: [{env: GW_TEST_ALSO_NOT_SET}]\n",
    )
    found = problems(config)
    assert {p.file for p in found} == {str(config)}
    keyed = by_key(found)
    assert set(keyed) == {"secret_key", "session.redis_url", "redirects.allowed_domains[0]"}
    assert "GW_TEST_NOT_SET" in keyed["secret_key"]
    assert "not set" in keyed["secret_key"]
    assert str(missing_file) in keyed["session.redis_url"]
    assert "cannot read" in keyed["session.redis_url"]


def test_a_mapping_with_more_than_a_reference_is_not_a_reference(tmp_path: Path) -> None:
    config = write_config(tmp_path, "secret_key: {env: MY_KEY, default: x}\n")
    (problem,) = problems(config, {"MY_KEY": "v"})
    assert problem.key_path == "secret_key"


# -- environment overrides -----------------------------------------------------------


def test_env_override_of_a_nested_value(tmp_path: Path) -> None:
    config = write_config(tmp_path, "session:\n  idle_timeout: 600\n")
    settings = load_settings(config, environ={"SSO_GATEWAY__SESSION__IDLE_TIMEOUT": "120"})
    assert settings.session.idle_timeout == 120


def test_env_overrides_without_a_file() -> None:
    settings = load_settings(
        None,
        environ={
            "SSO_GATEWAY__SITE_NAME": "Site: C",  # YAML would read a mapping: kept as text
            "SSO_GATEWAY__LISTEN__PORT": "9443",
            "SSO_GATEWAY__COOKIE__SECURE": "false",
            "SSO_GATEWAY__SESSION__REDIS_SOCKET_TIMEOUT": "2.5",
            "SSO_GATEWAY__JWT__AUDIENCE": "pbx-upstreams",
            "SSO_GATEWAY__HEADERS__USER": "X-Remote-User",
        },
    )
    assert settings.site_name == "Site: C"
    assert settings.listen.port == 9443
    assert settings.cookie.secure is False
    assert settings.session.redis_socket_timeout == 2.5
    assert settings.jwt.audience == "pbx-upstreams"
    assert settings.headers.user == "X-Remote-User"


def test_env_override_names_are_case_insensitive() -> None:
    settings = load_settings(
        None,
        environ={
            "sso_gateway__session__idle_timeout": "120",
            "Sso_Gateway__Listen__Port": "9090",
        },
    )
    assert settings.session.idle_timeout == 120
    assert settings.listen.port == 9090


def test_env_override_beats_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, "listen:\n  port: 9000\n  host: 0.0.0.0\n")
    settings = load_settings(config, environ={"SSO_GATEWAY__LISTEN__PORT": "9001"})
    assert settings.listen.port == 9001
    assert settings.listen.host == "0.0.0.0"  # the rest of the section stays


def test_secret_key_file_override(tmp_path: Path) -> None:
    key_file = tmp_path / "secret-key"
    key_file.write_text(SECRET_KEY + "\n", encoding="utf-8")
    settings = load_settings(None, environ={"SSO_GATEWAY__SECRET_KEY_FILE": str(key_file)})
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == SECRET_KEY


def test_nested_file_override(tmp_path: Path) -> None:
    url_file = tmp_path / "redis-url"
    url_file.write_text(REDIS_URL, encoding="utf-8")
    settings = load_settings(
        None,
        environ={
            "SSO_GATEWAY__SESSION__STORE": "redis",
            "SSO_GATEWAY__SESSION__REDIS_URL__FILE": str(url_file),
        },
    )
    assert settings.session.store == "redis"
    assert settings.session.redis_url is not None
    assert settings.session.redis_url.get_secret_value() == REDIS_URL


def test_file_override_of_a_missing_file_is_a_problem(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    found = problems(None, {"SSO_GATEWAY__SECRET_KEY_FILE": str(missing)})
    assert by_key(found).keys() == {"secret_key"}
    assert str(missing) in found[0].reason


@pytest.mark.parametrize(
    ("name", "attribute"),
    [
        ("SSO_GATEWAY__PROVIDERS__LOCAL__USERS_FILE", ("providers", "local", "users_file")),
        ("SSO_GATEWAY__JWT__KEY_FILE", ("jwt", "key_file")),
    ],
)
def test_env_override_of_a_setting_named_like_a_file_reference(
    tmp_path: Path, name: str, attribute: tuple[str, ...]
) -> None:
    target = tmp_path / "target"
    target.write_text("users: {}\n", encoding="utf-8")
    value: object = load_settings(None, environ={name: str(target)})
    for part in attribute:
        value = getattr(value, part)
    assert value == target


def test_env_override_of_an_unknown_key_is_a_problem() -> None:
    found = problems(None, {"SSO_GATEWAY__COOKIE__SECRETS": "x"})
    assert by_key(found) == {"cookie.secrets": "unknown key"}


def test_env_override_below_a_non_mapping_is_a_problem(tmp_path: Path) -> None:
    config = write_config(tmp_path, "site_name: plain\n")
    (problem,) = problems(config, {"SSO_GATEWAY__SITE_NAME__X": "1"})
    assert problem.file == "env SSO_GATEWAY__SITE_NAME__X"
    assert problem.key_path == "site_name.x"


def test_other_variables_are_ignored() -> None:
    settings = load_settings(
        None,
        environ={
            "SSO_GATEWAY_CONFIG": "/nowhere.yaml",
            "SSO_GATEWAY_PASSWORD": "x",
            "SSO_GATEWAY_DEMO_PORT": "1",
            "SSO_GATEWAY__": "",
            "PATH": "/usr/bin",
        },
    )
    assert settings == load_settings(None, environ={})


def test_environ_argument_replaces_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSO_GATEWAY__LISTEN__PORT", "9999")
    assert load_settings(None, environ={}).listen.port == 8080
    assert load_settings(None).listen.port == 9999  # without environ=: os.environ


# -- secrets stay secret -------------------------------------------------------------


def test_secrets_do_not_appear_in_repr_or_str(full: tuple[Path, dict[str, str]]) -> None:
    config, environ = full
    settings = load_settings(config, environ=environ)
    for text in (
        repr(settings),
        str(settings),
        repr(settings.session),
        str(settings.session),
        settings.model_dump_json(),
        str(settings.model_dump()),
    ):
        assert SECRET_KEY not in text
        assert REDIS_URL not in text
        assert "redis-password-value" not in text


def test_a_badly_typed_secret_is_not_echoed(tmp_path: Path) -> None:
    config = write_config(tmp_path, "secret_key: [hunter2-secret-in-a-list]\n")
    found = problems(config)
    assert by_key(found).keys() == {"secret_key"}
    assert "hunter2" not in str(ConfigError(found))


# -- cross checks and field checks ---------------------------------------------------


def test_redis_store_needs_a_url(tmp_path: Path) -> None:
    config = write_config(tmp_path, "session:\n  store: redis\n")
    (problem,) = problems(config)
    assert problem == Problem(
        str(config),
        "session.redis_url",
        "required when session.store is 'redis' (or give session.redis_sentinel)",
    )


SENTINEL_CONFIG = """\
session:
  store: redis
  redis_sentinel:
    master: redis-ha
    sentinels: [redis-0.redis-headless:26379, "10.0.0.7", "[fd00::7]:26380"]
    db: 3
    password: {env: REDIS_PASSWORD}
"""


def test_redis_sentinel_section(tmp_path: Path) -> None:
    secret_file = tmp_path / "sentinel-password"
    secret_file.write_text("sentinel-secret-value\n", encoding="utf-8")
    settings = load_settings(
        write_config(tmp_path, SENTINEL_CONFIG),
        environ={
            "REDIS_PASSWORD": "redis-secret-value",
            # a secret file through the environment, as the Helm chart passes it
            "SSO_GATEWAY__SESSION__REDIS_SENTINEL__SENTINEL_PASSWORD_FILE": str(secret_file),
            "SSO_GATEWAY__SESSION__REDIS_SENTINEL__SENTINEL_USERNAME": "watcher",
        },
    )
    sentinel = settings.session.redis_sentinel
    assert sentinel is not None
    assert settings.session.redis_url is None
    assert sentinel.master == "redis-ha"
    assert sentinel.db == 3
    assert sentinel.addresses() == (
        ("redis-0.redis-headless", 26379),
        ("10.0.0.7", 26379),
        ("fd00::7", 26380),
    )
    assert sentinel.password is not None
    assert sentinel.password.get_secret_value() == "redis-secret-value"
    assert sentinel.sentinel_password is not None
    assert sentinel.sentinel_password.get_secret_value() == "sentinel-secret-value"
    assert sentinel.sentinel_username == "watcher"
    for text in (repr(settings), settings.model_dump_json()):
        assert "secret-value" not in text


def test_redis_sentinel_addresses_from_the_environment() -> None:
    settings = load_settings(
        None,
        environ={
            "SSO_GATEWAY__SESSION__STORE": "redis",
            "SSO_GATEWAY__SESSION__REDIS_SENTINEL__MASTER": "mymaster",
            "SSO_GATEWAY__SESSION__REDIS_SENTINEL__SENTINELS": "[s1:26379, s2:26379]",
        },
    )
    assert settings.session.redis_sentinel is not None
    assert settings.session.redis_sentinel.sentinels == ("s1:26379", "s2:26379")


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("    master: m\n    sentinels: []\n", "session.redis_sentinel.sentinels"),
        ("    master: m\n", "session.redis_sentinel.sentinels"),
        ("    sentinels: [s:1]\n", "session.redis_sentinel.master"),
        ("    master: 'm x'\n    sentinels: [s:1]\n", "session.redis_sentinel.master"),
        ("    master: m\n    sentinels: ['s:0']\n", "session.redis_sentinel.sentinels"),
        ("    master: m\n    sentinels: ['s:99999']\n", "session.redis_sentinel.sentinels"),
        ("    master: m\n    sentinels: ['s:1/x']\n", "session.redis_sentinel.sentinels"),
        ("    master: m\n    sentinels: ['u@s:1']\n", "session.redis_sentinel.sentinels"),
        ("    master: m\n    sentinels: ['[::1']\n", "session.redis_sentinel.sentinels"),
        ("    master: m\n    sentinels: [s]\n    tls: true\n", "session.redis_sentinel.tls"),
        ("    master: m\n    sentinels: [s]\n    db: -1\n", "session.redis_sentinel.db"),
    ],
)
def test_bad_redis_sentinel_sections(tmp_path: Path, body: str, key: str) -> None:
    config = write_config(tmp_path, "session:\n  store: redis\n  redis_sentinel:\n" + body)
    found = problems(config)
    assert key in by_key(found), found


def test_redis_url_and_sentinel_are_not_both_allowed(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "session:\n  store: redis\n  redis_url: redis://r:6379/0\n"
        "  redis_sentinel: {master: m, sentinels: [s]}\n",
    )
    (problem,) = problems(config)
    assert problem.key_path == "session.redis_sentinel"
    assert "not both" in problem.reason


def test_idle_timeout_may_not_exceed_the_absolute_lifetime(tmp_path: Path) -> None:
    config = write_config(tmp_path, "session:\n  idle_timeout: 7200\n  absolute_lifetime: 3600\n")
    (problem,) = problems(config)
    assert problem.file == str(config)
    assert problem.key_path == "session.idle_timeout"
    assert "absolute_lifetime" in problem.reason


def test_cross_check_problems_are_reported_together(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "session:\n  store: redis\n  idle_timeout: 7200\n  absolute_lifetime: 3600\n"
        'cookie:\n  domain: "."\n'
        "redirects:\n  default: https://elsewhere.example/\n",
    )
    assert set(by_key(problems(config))) == {
        "session.redis_url",
        "session.idle_timeout",
        "cookie.domain",
        "redirects.default",
    }


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("headers:\n  user: X Auth User\n", "headers.user"),
        ("headers:\n  email: X_Auth_Email\n", "headers.email"),
        ("headers:\n  jwt: 'X-Jwt:'\n", "headers.jwt"),
        ("headers:\n  tier: ''\n", "headers.tier"),
        ("headers:\n  groups: X-Grüppen\n", "headers.groups"),
        ('headers:\n  extra:\n    "X-Bad Header": [department]\n', "headers.extra"),
    ],
)
def test_bad_header_names(tmp_path: Path, yaml_text: str, key: str) -> None:
    config = write_config(tmp_path, yaml_text)
    (problem,) = problems(config)
    assert problem.key_path == key
    assert "header name" in problem.reason


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "10.0.0.1/8", "not-a-network", "", "fd00::/129"])
def test_bad_trusted_proxies(tmp_path: Path, cidr: str) -> None:
    config = write_config(tmp_path, f"network:\n  trusted_proxies: ['127.0.0.1/32', '{cidr}']\n")
    (problem,) = problems(config)
    assert problem.file == str(config)
    assert problem.key_path == "network.trusted_proxies"


# -- paths ---------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "sso"
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = write_config(
        folder,
        "data_dir: var\npolicies_dir: ../policies\n"
        "providers:\n  local:\n    users_file: users.yaml\n"
        "jwt:\n  key_file: /abs/jwt.json\n",
    )
    settings = load_settings(config, environ={})
    base = folder.resolve()
    assert settings.data_dir == Path("var")  # stored as written
    assert settings.resolve_path(settings.data_dir) == base / "var"
    assert settings.resolve_path(settings.policies_dir) == base / ".." / "policies"
    assert settings.resolve_path(settings.providers.local.users_file) == base / "users.yaml"
    assert settings.jwt.key_file is not None
    assert settings.resolve_path(settings.jwt.key_file) == Path("/abs/jwt.json")
    assert settings.sessions_dir == base / "var" / "sessions"


def test_log_destinations_resolve_like_paths_except_the_standard_streams(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        "audit: {destination: logs/audit.log}\n"
        "access_log: {enabled: true, destination: logs/access.log}\n",
    )
    settings = load_settings(config, environ={})
    assert settings.audit_destination == str(tmp_path.resolve() / "logs" / "audit.log")
    assert settings.access_log_destination == str(tmp_path.resolve() / "logs" / "access.log")
    for stream in ("stdout", "stderr"):
        streams = load_settings(
            write_config(tmp_path, f"access_log: {{destination: {stream}}}\n", "s.yaml"),
            environ={},
        )
        assert streams.access_log_destination == stream


def test_the_access_log_section_is_checked(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "access_log:\n  enabled: maybe\n  destination: ''\n  format: combined\n",
    )
    found = by_key(problems(config))
    assert set(found) == {
        "access_log.enabled",
        "access_log.destination",
        "access_log.format",
    }
    assert found["access_log.format"] == "unknown key"


def test_redact_query_names_the_protocols_secrets_by_default() -> None:
    names = load_settings(None, environ={}).access_log.redact_query
    for name in ("code", "state", "SAMLRequest", "SAMLResponse", "Signature", "token"):
        assert name in names
    for kept in ("rd", "iss", "SigAlg", "error", "camera"):  # useful, and no secret
        assert kept not in names


def test_redact_query_is_a_list_of_names_and_empty_turns_it_off(tmp_path: Path) -> None:
    own = write_config(tmp_path, "access_log:\n  redact_query: [code, Camera_Key, 'x[]']\n")
    assert load_settings(own, environ={}).access_log.redact_query == ("code", "Camera_Key", "x[]")
    off = write_config(tmp_path, "access_log: {redact_query: []}\n", "off.yaml")
    assert load_settings(off, environ={}).access_log.redact_query == ()
    from_env = load_settings(
        None, environ={"SSO_GATEWAY__ACCESS_LOG__REDACT_QUERY": "[code, camera_key]"}
    )
    assert from_env.access_log.redact_query == ("code", "camera_key")


@pytest.mark.parametrize(
    "name", ["", "a&b", "a=b", "a b", "\ta", "a;b", "a+b", "%63ode", "caf\u00e9"]
)
def test_redact_query_refuses_what_cannot_be_a_parameter_name(tmp_path: Path, name: str) -> None:
    # JSON is YAML: the name as it is, escapes and all
    config = write_config(tmp_path, f"access_log:\n  redact_query: [token, {json.dumps(name)}]\n")
    found = by_key(problems(config))
    assert set(found) == {"access_log.redact_query"}
    assert "is not a query parameter name" in found["access_log.redact_query"]


def test_the_access_log_from_the_environment() -> None:
    settings = load_settings(
        None,
        environ={
            "SSO_GATEWAY__ACCESS_LOG__ENABLED": "true",
            "SSO_GATEWAY__ACCESS_LOG__DESTINATION": "/var/log/gw/access.log",
        },
    )
    assert settings.access_log.enabled is True
    assert settings.access_log_destination == "/var/log/gw/access.log"


def test_sessions_dir_can_be_set_on_its_own(tmp_path: Path) -> None:
    config = write_config(tmp_path, "data_dir: /srv/data\nsession:\n  file_dir: sessions-here\n")
    settings = load_settings(config, environ={})
    assert settings.sessions_dir == tmp_path.resolve() / "sessions-here"

    absolute = write_config(tmp_path, "session:\n  file_dir: /srv/sessions\n", "abs.yaml")
    assert load_settings(absolute, environ={}).sessions_dir == Path("/srv/sessions")


def test_defaults_keep_relative_paths_relative() -> None:
    settings = load_settings(None, environ={})
    assert settings.resolve_path(Path("var")) == Path("var")
    assert settings.sessions_dir == Path("var") / "sessions"


def test_a_relative_config_path_works_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, "data_dir: var\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings("config.yaml", environ={})
    assert settings.resolve_path(settings.data_dir) == tmp_path.resolve() / "var"


# -- loading changes nothing global --------------------------------------------------


def test_loading_changes_nothing_global(tmp_path: Path, full: tuple[Path, dict[str, str]]) -> None:
    config, environ = full
    environ = {
        **environ,
        "SSO_GATEWAY__LISTEN__PORT": "9100",
        "SSO_GATEWAY__DATA_DIR": str(tmp_path / "not-created"),
    }
    given = dict(environ)
    process_env = dict(os.environ)
    cwd = os.getcwd()
    text = config.read_text(encoding="utf-8")

    settings = load_settings(config, environ=environ)
    with pytest.raises(ConfigError):
        load_settings(config, environ={})  # the {env: ...} reference is missing here

    assert settings.listen.port == 9100
    assert dict(os.environ) == process_env
    assert environ == given
    assert os.getcwd() == cwd
    assert config.read_text(encoding="utf-8") == text
    assert not (tmp_path / "not-created").exists()
    # a second load from the same inputs gives the same settings
    assert load_settings(config, environ=environ) == settings


# -- listen settings -> gunicorn -------------------------------------------------------


def test_gunicorn_options_follow_the_listen_settings(full: tuple[Path, dict[str, str]]) -> None:
    config, environ = full
    options = gunicorn_options(load_settings(config, environ=environ))
    assert options["bind"] == "0.0.0.0:9000"
    assert options["workers"] == 4
    assert options["worker_class"] == "gthread"
    assert options["worker_connections"] == 500
    assert options["timeout"] == 45
    # gunicorn's own access log stays off: the gateway writes its own (access_log)
    assert options["accesslog"] is None
    assert options["worker_exit"] is not None  # writes the access log lines still waiting


def test_gunicorn_options_defaults_and_overrides() -> None:
    settings = load_settings(None, environ={})
    options = gunicorn_options(settings)
    assert options["bind"] == "127.0.0.1:8080"
    assert options["workers"] == 2
    assert options["worker_class"] == "gateway.workers.FairGeventWorker"
    overridden = gunicorn_options(settings, bind="0.0.0.0:80", workers=8)
    assert overridden["bind"] == "0.0.0.0:80"
    assert overridden["workers"] == 8


def test_gunicorn_bind_for_an_ipv6_host() -> None:
    settings = load_settings(None, environ={"SSO_GATEWAY__LISTEN__HOST": "'::1'"})
    assert settings.listen.host == "::1"
    assert gunicorn_options(settings)["bind"] == "[::1]:8080"


def test_env_overrides_of_list_and_mapping_settings() -> None:
    settings = load_settings(
        None,
        environ={
            "SSO_GATEWAY__NETWORK__TRUSTED_PROXIES": "[10.0.0.0/8, 127.0.0.1/32]",
            "SSO_GATEWAY__REDIRECTS__ALLOWED_DOMAINS": "[.example.com]",
            "SSO_GATEWAY__HEADERS__EXTRA": "{X-Auth-Request-Room: [room]}",
            "SSO_GATEWAY__SITE_NAME": "[not a list]",  # a text setting keeps the text
        },
    )
    assert settings.network.trusted_proxies == ("10.0.0.0/8", "127.0.0.1/32")
    assert settings.redirects.allowed_domains == (".example.com",)
    assert settings.headers.extra == {"X-Auth-Request-Room": ("room",)}
    assert settings.site_name == "[not a list]"


def test_oidc_provider_needs_its_section(tmp_path: Path) -> None:
    found = by_key(problems(write_config(tmp_path, "providers: {default: oidc}\n")))
    assert found == {"providers.oidc": "required when providers.default is 'oidc'"}


def test_oidc_secret_from_the_environment(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """\
providers:
  default: oidc
  oidc:
    issuer: https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0
    client_id: 3f1c2b9e-0d7a-4c55-9e0e-5b8d1c2a7e10
    client_secret: {env: ENTRA_SECRET}
    group_names: {6F0B2F4E-1C2D-4E5F-8A9B-0C1D2E3F4A5B: Intercom-Admins}
""",
    )
    settings = load_settings(path, {"ENTRA_SECRET": "s3cret"})
    oidc = settings.providers.oidc
    assert oidc is not None and oidc.client_secret is not None
    assert oidc.client_secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert oidc.group_names == {"6f0b2f4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b": "Intercom-Admins"}
