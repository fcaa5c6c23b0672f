"""Redirect targets: same site or allow-listed, everything else refused."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.core.errors import UnsafeRedirect
from gateway.core.redirects import is_allowed_host, safe_redirect

HOST = "gw.example.com"
ALLOWED = (".example.org", "pbx.example.net")


def check(target: str, *, host: str = HOST, scheme: str = "https") -> str:
    return safe_redirect(target, request_host=host, request_scheme=scheme, allowed_domains=ALLOWED)


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/doors/",
        "/dashboard?x=1&rd=//evil.com",
        "/a/b#frag",
        "/a%2Fb",
        "/log/?filter=front%20door&page=2",
        "/caf%C3%A9",
        "https://gw.example.com/x",
        "https://GW.Example.COM/x?y",
        "https://gw.example.com:443/x",
        "https://gw.example.com./x",
        "https://gw.example.com",
        "HTTPS://gw.example.com/",
        "https://intercom.example.org/doors/",
        "https://a.b.example.org/",
        "https://example.org/",
        "http://pbx.example.net/",
        "https://pbx.example.net:8443/admin/",
        "https://gw.example.com#frag",
    ],
)
def test_accepted(target: str) -> None:
    assert check(target) == target


def test_same_host_is_port_aware() -> None:
    assert check("https://gw.example.com:8443/", host="gw.example.com:8443")
    assert check("http://gw.example.com/", host="gw.example.com", scheme="http")
    assert check("http://gw.example.com:80/", host="gw.example.com", scheme="http")
    for target, host, scheme in [
        ("https://gw.example.com:8443/", "gw.example.com", "https"),
        ("https://gw.example.com/", "gw.example.com:8443", "https"),
        ("http://gw.example.com/", "gw.example.com", "https"),
        ("https://gw.example.com/", "gw.example.com", "http"),
    ]:
        with pytest.raises(UnsafeRedirect):
            check(target, host=host, scheme=scheme)


def test_trailing_dot_is_the_same_host_everywhere() -> None:
    assert check("https://gw.example.com./", host="gw.example.com")
    assert check("https://gw.example.com/", host="gw.example.com.")
    assert check("https://intercom.example.org./")
    assert check("https://pbx.example.net./")
    with pytest.raises(UnsafeRedirect):
        check("https://gw.example.com../")


HOSTILE = [
    "",
    "//evil.com",
    "//evil.com/path",
    "///evil.com",
    "////evil.com",
    "/\\evil.com",
    "\\\\evil.com",
    "\\/evil.com",
    "/\\/evil.com",
    "https:evil.com",
    "https:/evil.com",
    "https:///evil.com",
    "https:\\\\evil.com",
    "https:/\\evil.com",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "javascript://gw.example.com/%0Aalert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "ftp://gw.example.com/",
    "file:///etc/passwd",
    "https://evil.com",
    "https://evil.com/gw.example.com",
    "https://gw.example.com@evil.com",
    "https://gw.example.com:443@evil.com/",
    "https://user:pass@gw.example.com/",
    "https://evil.com\\@gw.example.com",
    "https://evil.com%5C@gw.example.com",
    "http://evil.com\\@gw.example.com",
    "https://gw.example.com.evil.com/",
    "https://evilexample.org/",
    "https://example.org.evil.com/",
    "https://evil.com/.example.org",
    "https://evil.com?.example.org",
    "https://evil.com#.example.org",
    "https://xpbx.example.net/",
    "https://sub.pbx.example.net/",
    "/\t/evil.com",
    "/\n/evil.com",
    "/\r\n/evil.com",
    "\t//evil.com",
    "//evil.com\t",
    "/%2F%2Fevil.com",
    "/%2f/evil.com",
    "/%5Cevil.com",
    "/%5cevil.com",
    "%2F%2Fevil.com",
    "%2f%2fevil.com",
    "/%252F%252Fevil.com",
    "/%09/evil.com",
    "/%00",
    "/?path=C:%5Cdoors",
    "/a%0Ab",
    "/a%0D%0ALocation:%20https://evil.com",
    "/a\x00b",
    "/a\u200bb",
    "/\u2028/evil.com",
    "https://evil%2Ecom/",
    "https://%67w.example.com/",
    "https://gw.example.com%00.evil.com/",
    "https://[::1]/",
    "https://[::ffff:127.0.0.1]/",
    "https://[gw.example.com]/",
    "https://[::1/",
    "https://gw.example.com:/",
    "https://gw.example.com:0/",
    "https://gw.example.com:99999/",
    "https://gw.example.com:443x/",
    "https://gw.example.com:+443/",
    "https://gw.example.com:\u0664\u0664\u0663/",
    "https://stra\u00dfe.example.org/",
    "https://gw.example.com\uff0fevil.com/",
    "https://gw\u3002example\u3002com/",
    "https://2130706433/",
    "https://-evil.example.org/",
    "https://evil_.example.org/",
    "evil.com",
    "evil.com/path",
    "./evil",
    "../evil",
    "?next=//evil.com",
    "#//evil.com",
    "https://",
    "https:",
    "https://:443/",
]


def test_corpus_is_large() -> None:
    assert len(HOSTILE) >= 30


@pytest.mark.parametrize("target", HOSTILE)
def test_hostile_targets_refused(target: str) -> None:
    with pytest.raises(UnsafeRedirect):
        check(target)


def test_is_allowed_host() -> None:
    assert is_allowed_host("gw.example.com", HOST, ALLOWED)
    assert is_allowed_host("GW.EXAMPLE.COM:443", HOST, ALLOWED)
    assert is_allowed_host("example.org", HOST, ALLOWED)
    assert is_allowed_host("deep.sub.example.org", HOST, ALLOWED)
    assert is_allowed_host("pbx.example.net:9999", HOST, ALLOWED)
    assert not is_allowed_host("www.pbx.example.net", HOST, ALLOWED)
    assert not is_allowed_host("notexample.org", HOST, ALLOWED)
    assert not is_allowed_host("", HOST, ALLOWED)
    assert not is_allowed_host("a@b", HOST, ALLOWED)
    assert not is_allowed_host("gw.example.com:8443", HOST, ALLOWED)
    assert is_allowed_host("[::1]:8080", "[::1]:8080", ())
    assert is_allowed_host("[0:0::1]:8080", "[::1]:8080", ())
    assert not is_allowed_host("[::2]:8080", "[::1]:8080", ())


def test_idna_allow_list_entries() -> None:
    assert is_allowed_host("xn--mnchen-3ya.example", HOST, ["m\u00fcnchen.example"])
    assert is_allowed_host("xn--mnchen-3ya.example", HOST, [".M\u00dcNCHEN.example"])
    # an entry with a character IDNA 2003 and browsers map differently never matches
    assert not is_allowed_host("strasse.example", HOST, ["stra\u00dfe.example"])
    # entries are never patterns
    assert not is_allowed_host("a.example.org", HOST, ["*.example.org"])


def _browser_host(target: str) -> str | None:
    """Roughly how a browser reads a Location value: tabs/newlines dropped,
    backslashes as slashes, then the authority's host."""
    cleaned = target.replace("\t", "").replace("\n", "").replace("\r", "").strip()
    cleaned = cleaned.replace("\\", "/")
    parts = urlsplit(cleaned)
    if parts.netloc or cleaned.startswith("//"):
        return (parts.hostname or "").rstrip(".")
    return None


_PIECES = [
    "/",
    "//",
    "\\",
    "%2F",
    "%5C",
    "%2f",
    "%09",
    "\t",
    "\n",
    " ",
    "@",
    ":",
    ".",
    "#",
    "?",
    "https:",
    "http:",
    "javascript:",
    "evil.com",
    "gw.example.com",
    "example.org",
    "%40",
    "[::1]",
    "%25",
    "a",
    "443",
]


@given(st.lists(st.sampled_from(_PIECES), max_size=8).map("".join))
@example("https://gw.example.com")
@example("/%2F%2Fevil.com")
def test_accepted_targets_stay_on_allowed_hosts(target: str) -> None:
    try:
        accepted = check(target)
    except UnsafeRedirect:
        return
    assert accepted == target
    host = _browser_host(accepted)
    if host is None:
        assert accepted.startswith("/") and accepted[1:2] not in ("/", "\\")
    else:
        assert (
            host == "gw.example.com"
            or host == "example.org"
            or host.endswith((".example.org",))
            or host == "pbx.example.net"
        )


@given(st.text(max_size=50))
def test_only_unsafe_redirect_is_raised(target: str) -> None:
    try:
        check(target)
    except UnsafeRedirect:
        pass
