"""``proxy:`` settings validation and upstream selection, paths and Location rewriting."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.core.errors import ConfigError
from gateway.device_auth import DeviceCredentials
from gateway.settings import load_settings
from gateway.settings_proxy import DeviceLoginSettings, ProxySettings
from gateway.upstreams import UpstreamTable


def _load(tmp_path: Path, proxy: dict[str, Any]) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"proxy": proxy}), encoding="utf-8")
    return load_settings(path, environ={})


def _problems(tmp_path: Path, proxy: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, proxy)
    return [(p.key_path, p.reason) for p in info.value.problems]


def _upstream(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "intercom",
        "match": {"hosts": ["intercom.example"]},
        "url": "http://10.0.0.5",
    }
    base.update(overrides)
    return base


def test_defaults_mean_no_proxy() -> None:
    settings = load_settings(None, environ={})
    assert settings.proxy.upstreams == ()
    assert settings.proxy.trusted_hops == 0


def test_a_full_upstream_loads(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        {
            "trusted_hops": 1,
            "upstreams": [
                _upstream(
                    match={"hosts": ["pbx.example", "*.pbx.example"], "path_prefix": "/admin",
                           "strip_prefix": True},
                    url="http://10.0.0.6:8080/portal",
                    connect_timeout=2,
                    read_timeout=30,
                    preserve_host=True,
                    logout_cookies=["JSESSIONID", "PHPSESSID"],
                )
            ],
        },
    )  # fmt: skip
    [upstream] = settings.proxy.upstreams
    assert upstream.match.strip_prefix and upstream.preserve_host
    assert upstream.logout_cookies == ("JSESSIONID", "PHPSESSID")
    assert not upstream.legacy_http
    selected = UpstreamTable(settings.proxy).select("pbx.example", "/admin")
    assert selected is not None and not selected.pool.legacy


def test_legacy_http_reaches_the_pool(tmp_path: Path) -> None:
    settings = _load(tmp_path, {"upstreams": [_upstream(legacy_http=True)]})
    [upstream] = settings.proxy.upstreams
    assert upstream.legacy_http
    [host] = upstream.match.hosts
    selected = UpstreamTable(settings.proxy).select(host, "/")
    assert selected is not None and selected.pool.legacy


@pytest.mark.parametrize(
    ("upstream", "key", "reason"),
    [
        (_upstream(url="ftp://10.0.0.5"), "proxy.upstreams[0].url", "http:// or https://"),
        (_upstream(url="http://u:p@10.0.0.5"), "proxy.upstreams[0].url", "credentials"),
        (_upstream(url="http://10.0.0.5/?a=1"), "proxy.upstreams[0].url", "query"),
        (_upstream(url="http://10.0.0.5/a/../b"), "proxy.upstreams[0].url", "canonical"),
        (_upstream(url="http://10.0.0.5:99999"), "proxy.upstreams[0].url", "port"),
        (_upstream(match={"hosts": ["*"]}), "proxy.upstreams[0].match.hosts", "default upstream"),
        (_upstream(match={"hosts": []}), "proxy.upstreams[0].match.hosts", "at least 1"),
        (_upstream(match={"hosts": ["a b"]}), "proxy.upstreams[0].match.hosts", "host glob"),
        (
            _upstream(match={"hosts": ["a.example"], "path_prefix": "/a/../b"}),
            "proxy.upstreams[0].match.path_prefix",
            "canonical",
        ),
        (
            _upstream(match={"hosts": ["a.example"], "path_prefix": "/a;b"}),
            "proxy.upstreams[0].match.path_prefix",
            "not a clean path",
        ),
        (_upstream(ca_bundle="/etc/ssl/x.pem"), "proxy.upstreams[0]", "need an https:// url"),
        (
            _upstream(url="https://10.0.0.5", client_key="k.pem"),
            "proxy.upstreams[0]",
            "client_key needs client_cert",
        ),
        (_upstream(logout_cookies=["bad name"]), "proxy.upstreams[0].logout_cookies", "cookie"),
        (_upstream(name="no spaces"), "proxy.upstreams[0].name", "letters"),
        (_upstream(surprise=1), "proxy.upstreams[0].surprise", "unknown key"),
    ],
)
def test_bad_upstreams_are_refused_with_their_key(
    tmp_path: Path, upstream: dict[str, Any], key: str, reason: str
) -> None:
    problems = _problems(tmp_path, {"upstreams": [upstream]})
    assert any(k == key and reason in r for k, r in problems), problems


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    problems = _problems(tmp_path, {"upstreams": [_upstream(), _upstream()]})
    assert any("unique" in r for _, r in problems), problems


def test_unreadable_tls_files_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate", encoding="utf-8")
    problems = _problems(
        tmp_path,
        {
            "upstreams": [
                _upstream(url="https://10.0.0.5", ca_bundle=str(bad), client_cert=str(bad))
            ]
        },
    )
    keys = {k for k, _ in problems}
    assert {"proxy.upstreams[0].ca_bundle", "proxy.upstreams[0].client_cert"} <= keys


def test_client_certificate_and_ca_bundle_load(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=gw"],
        check=True, capture_output=True,
    )  # fmt: skip
    settings = _load(
        tmp_path,
        {
            "upstreams": [
                _upstream(
                    url="https://10.0.0.5",
                    ca_bundle=str(cert),
                    client_cert=str(cert),
                    client_key=str(key),
                )
            ]
        },
    )
    table = UpstreamTable(settings.proxy)
    pool = table.upstreams[0].pool
    assert pool.scheme == "https"
    table.close()


def _table(*upstreams: dict[str, Any]) -> UpstreamTable:
    return UpstreamTable(ProxySettings.model_validate({"upstreams": list(upstreams)}))


def test_selection_by_host_and_longest_prefix() -> None:
    table = _table(
        _upstream(name="site", match={"hosts": ["*.intercom.example", "intercom.example"]}),
        _upstream(name="pbx", match={"hosts": ["intercom.example"], "path_prefix": "/pbx/"}),
        _upstream(name="pbx-api", match={"hosts": ["intercom.example"], "path_prefix": "/pbx/api"}),
    )

    def name(host: str, path: str) -> str | None:
        found = table.select(host, path)
        return found.name if found is not None else None

    assert name("intercom.example", "/") == "site"
    assert name("INTERCOM.example.:8443", "/pbx") == "pbx"
    assert name("intercom.example", "/pbx/") == "pbx"
    assert name("intercom.example", "/pbx/api/calls") == "pbx-api"
    assert name("intercom.example", "/pbxadmin") == "site"  # never a partial segment
    assert name("door.intercom.example", "/pbx/x") == "site"
    assert name("evil.example", "/") is None
    assert name("intercom.example.evil.example", "/") is None
    assert name("xintercom.example", "/") is None


def test_upstream_paths_and_prefix_stripping() -> None:
    keep, strip = _table(
        _upstream(name="keep", match={"hosts": ["a.example"], "path_prefix": "/pbx"},
                  url="http://10.0.0.5/base/"),
        _upstream(name="strip", match={"hosts": ["b.example"], "path_prefix": "/pbx",
                                        "strip_prefix": True}, url="http://10.0.0.5"),
    ).upstreams  # fmt: skip
    assert keep.upstream_path("/pbx/a b/é") == "/base/pbx/a%20b/%C3%A9"
    assert strip.upstream_path("/pbx") == "/"
    assert strip.upstream_path("/pbx/") == "/"
    assert strip.upstream_path("/pbx/admin/") == "/admin/"


@pytest.mark.parametrize(
    ("location", "public"),
    [
        ("http://10.0.0.5:8080/base/login?x=1", "https://gw.example/pbx/login?x=1"),
        ("HTTP://10.0.0.5:8080/base", "https://gw.example/pbx/"),
        ("//10.0.0.5:8080/base/a", "https://gw.example/pbx/a"),
        ("/base/a", "/pbx/a"),
        ("/elsewhere", "/pbx/elsewhere"),
        ("http://10.0.0.5:8080/other", "http://10.0.0.5:8080/other"),  # not published
        ("https://idp.example/login", "https://idp.example/login"),
        ("http://10.0.0.5:80/base/a", "http://10.0.0.5:80/base/a"),  # another port
        ("relative/path", "relative/path"),
    ],
)
def test_location_rewriting(location: str, public: str) -> None:
    [upstream] = _table(
        _upstream(match={"hosts": ["gw.example"], "path_prefix": "/pbx", "strip_prefix": True},
                  url="http://10.0.0.5:8080/base"),
    ).upstreams  # fmt: skip
    assert upstream.public_location(location, "https://gw.example") == public


# Location values a device could send that, with its base path removed, would
# start the way a browser reads as "another host": two slashes, or anything it
# normalises into them (WHATWG URL: '\\' is '/' in http(s) URLs; tab, CR and LF are
# removed anywhere before parsing).  Each goes out as a path on the gateway.
OPEN_REDIRECT_SPELLINGS = [
    ("/base//evil.example/x", "/evil.example/x"),
    ("/base///evil.example/x", "/evil.example/x"),
    ("/base/\\evil.example/x", "/evil.example/x"),
    ("/base/\\\\evil.example/x", "/evil.example/x"),
    ("/base/\\/evil.example/x", "/evil.example/x"),
    ("/base/\t/evil.example/x", "/evil.example/x"),
    ("/base/\t\\evil.example/x", "/evil.example/x"),
    ("/base//\tevil.example/x", "/evil.example/x"),
    ("/base/\r\n/evil.example", "/evil.example"),
    ("/base//evil.example?next=/x", "/evil.example?next=/x"),
    ("/base//", "/"),
    ("/base/\\", "/"),
]


@pytest.mark.parametrize(("location", "public"), OPEN_REDIRECT_SPELLINGS)
def test_a_location_never_turns_into_another_host(location: str, public: str) -> None:
    """The base is removed and the prefix not put back: a leading run of
    slashes, backslashes, tabs and line breaks with two or more slashes in it
    becomes one '/'.  On the gateway that is the same page: the path is
    normalised with '//' collapsed, and a '\\' would be refused anyway."""
    [upstream] = _table(
        _upstream(match={"hosts": ["gw.example"], "path_prefix": "/pbx"},
                  url="http://10.0.0.5:8080/base"),
    ).upstreams  # fmt: skip
    assert upstream.public_location(location, "https://gw.example") == public
    # the same locations as absolute URLs on the device keep the public host
    absolute = upstream.public_location("http://10.0.0.5:8080" + location, "https://gw.example")
    assert absolute.startswith("https://gw.example/")


@pytest.mark.parametrize(
    ("location", "public"),
    [
        ("/base/%2F%2Fevil.example/x", "/%2F%2Fevil.example/x"),
        ("/base/%5C%5Cevil.example/x", "/%5C%5Cevil.example/x"),
        ("/base/%2f/evil.example/x", "/%2f/evil.example/x"),
        ("/base/.//evil.example/x", "/.//evil.example/x"),
        ("/base/ /evil.example/x", "/ /evil.example/x"),  # a space is no slash
        ("/base/evil.example//x", "/evil.example//x"),
        ("/base/pbx/ok", "/pbx/ok"),
    ],
)
def test_locations_browsers_read_as_paths_are_left_alone(location: str, public: str) -> None:
    """Why these are safe as they are (WHATWG URL, what browsers implement).  A
    reference that starts with '/' is read in the "relative slash" state, which
    looks at the next character only: '/' or '\\' there means an authority
    (another host) follows; anything else means a path on this host, and the
    rest is parsed in the path state, where '//' is just an empty segment.  The
    parser never percent-decodes: '%2F' and '%5C' are copied into the path as
    they are, so ``/%2F%2Fevil.example/x`` is one segment ``%2F%2Fevil.example``
    here (percent-decoding happens in the server, and the gateway refuses an
    encoded '/' or '\\' in a path with 400).  ``/.//evil.example`` has '.' as its
    second character: a path, ``//evil.example`` on this host after the dot
    segment is removed.  A space is not stripped inside a URL (only at its
    ends, and a header value has none there), tab and line breaks are: those are
    the collapsed spellings above."""
    [upstream] = _table(
        _upstream(match={"hosts": ["gw.example"], "path_prefix": "/pbx"},
                  url="http://10.0.0.5:8080/base"),
    ).upstreams  # fmt: skip
    assert upstream.public_location(location, "https://gw.example") == public


def test_a_devices_own_path_location_is_one_too() -> None:
    """Without a base path nothing is removed, but a path-absolute Location is
    still sent out as a path on the gateway (a device's ``/\\evil.example``,
    built from its own ``?next=``); a scheme-relative one (``//host/``) is a
    redirect elsewhere by the device and left alone, like ``https://host/``."""
    [upstream] = _table(_upstream(match={"hosts": ["gw.example"]})).upstreams
    assert upstream.public_location("/\\evil.example/x", "https://gw.example") == "/evil.example/x"
    assert upstream.public_location("/\t/evil.example/x", "https://gw.example") == "/evil.example/x"
    assert upstream.public_location("//idp.example/x", "https://gw.example") == "//idp.example/x"
    assert upstream.public_location("/ok", "https://gw.example") == "/ok"
    # with the prefix put back nothing can start with two slashes anyway
    [stripping] = _table(
        _upstream(match={"hosts": ["gw.example"], "path_prefix": "/pbx", "strip_prefix": True},
                  url="http://10.0.0.5:8080/base"),
    ).upstreams  # fmt: skip
    assert stripping.public_location("/base//evil.example", "https://gw.example") == (
        "/pbx//evil.example"
    )


def test_default_port_spellings_are_the_upstream() -> None:
    [upstream] = _table(_upstream(url="https://pbx.local")).upstreams
    for location in ("https://pbx.local/x", "https://PBX.local:443/x"):
        assert upstream.public_location(location, "https://gw.example") == "https://gw.example/x"


# -- device credential bridge ---------------------------------------------------


def test_device_login_settings(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n", encoding="utf-8")
    login = {"scheme": "digest", "username": "admin", "password": {"file": str(secret)}}
    settings = _load(tmp_path, {"upstreams": [_upstream(device_login=login)]})
    [upstream] = settings.proxy.upstreams
    assert upstream.device_login is not None
    assert upstream.device_login.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    for bad, reason in (
        ({**login, "scheme": "ntlm"}, "basic"),
        ({**login, "username": "ad:min"}, "':'"),
        ({**login, "password": None}, "string"),
    ):
        problems = _problems(tmp_path, {"upstreams": [_upstream(device_login=bad)]})
        assert any(reason in r for _, r in problems), problems


def _credentials(scheme: str) -> DeviceCredentials:
    return DeviceCredentials(
        DeviceLoginSettings.model_validate(
            {"scheme": scheme, "username": "admin", "password": "pw"}
        )
    )


def test_basic_credentials_are_always_sent_and_never_retried() -> None:
    basic = _credentials("basic")
    assert basic.authorization("GET", "/x") == "Basic YWRtaW46cHc="
    assert basic.learn(['Basic realm="door"']) is False


def test_digest_learns_a_challenge_and_counts_nonces() -> None:
    digest = _credentials("digest")
    assert digest.authorization("GET", "/x") is None  # nothing to answer yet
    assert digest.learn(['Basic realm="door"']) is False  # no Digest challenge in it
    challenge = 'Digest realm="door", qop="auth", algorithm=SHA-256, nonce="abc"'
    digest = _credentials("digest")
    assert digest.learn(['Basic realm="x"', challenge]) is True
    first = digest.authorization("GET", "/relays?x=1")
    second = digest.authorization("POST", "/relays")
    assert first is not None and second is not None
    assert 'uri="/relays?x=1"' in first and "nc=00000001" in first
    assert "nc=00000002" in second and 'algorithm="SHA-256"' in second
    assert digest.learn([challenge]) is False  # the same challenge again: wrong password
    assert digest.learn([challenge + ", stale=true"]) is True  # only the nonce aged
    assert digest.learn(['Digest realm="door", qop="auth", nonce="new"']) is True
    assert "nc=00000001" in (digest.authorization("GET", "/") or "")  # counted afresh


def test_digest_challenges_without_realm_or_nonce_are_ignored() -> None:
    digest = _credentials("digest")
    assert digest.learn(['Digest realm="door"', 'Digest nonce="x"', "Digest"]) is False
    assert not digest.has_challenge
