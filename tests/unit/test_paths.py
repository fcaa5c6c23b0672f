"""Request-path canonicalisation: one reading, or a refusal."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.core.errors import AmbiguousPath
from gateway.core.paths import encode_path, normalise_path, split_query


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/admin", "/admin"),
        ("/admin/", "/admin/"),
        ("//admin//doors///3", "/admin/doors/3"),
        ("/admin//", "/admin/"),
        ("/a/./b", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/..", "/"),
        ("/./", "/"),
        ("/%61dmin/", "/admin/"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E/b", "/a/b"),
        ("/caf%C3%A9", "/caf\u00e9"),
        ("/%E3%83%89%E3%82%A2/", "/\u30c9\u30a2/"),  # katakana: no compatibility form
        ("/T%C3%BCr%C3%B6ffner", "/T\u00fcr\u00f6ffner"),
        ("/a%20b", "/a b"),
        ("/api/users:search", "/api/users:search"),
        ("/x/~user/a-b_c.d", "/x/~user/a-b_c.d"),
        ("/[v1]|a^b", "/[v1]|a^b"),
    ],
)
def test_accepted_paths(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "admin",
        "*",
        "http://host/admin",
        # encoded separators
        "/admin%2Fsecret",
        "/admin%2fsecret",
        "/admin%5Csecret",
        "/admin%5csecret",
        # literal backslash
        "/admin\\secret",
        "/\\admin",
        # NUL / control characters, raw and encoded
        "/admin\x00",
        "/admin%00",
        "/admin%0a",
        "/admin%0D%0A",
        "/admin%09",
        "/admin%7F",
        "/admin%C2%85",
        "/admin\t",
        "/admin\n",
        # double encoding
        "/%252F",
        "/%2561dmin",
        "/admin%25",
        "/%25%32%46",
        # an encoded ? or #: a server that decodes before splitting ends the path there
        "/admin%3F",
        "/admin%3f/x",
        "/api/doors/1/open%3F",
        "/admin%23",
        "/admin%23x",
        # path parameters
        "/admin;jsessionid=x",
        "/admin/..;/x",
        "/public/..;/admin",
        "/admin%3Bx",
        # malformed escapes
        "/%zz",
        "/%4",
        "/admin%",
        "/%G1",
        # above the root
        "/..",
        "/../admin",
        "/a/../..",
        "/%2e%2e",
        "/a/%2E%2E/%2e%2e/b",
        # invalid UTF-8, overlong '/' and '.'
        "/%C0%AF",
        "/%C0%AE%C0%AE/",
        "/%FF",
        "/%ED%A0%80",
        # query / fragment left in the path
        "/admin?x=1",
        "/admin#x",
        # raw non-ASCII and whitespace (never sent by a browser)
        "/caf\u00e9",
        "/a b",
        # Unicode look-alikes of separators and dots
        "/admin%EF%BC%8Fx",
        "/%E2%80%A5/admin",
        "/admin%E2%80%8B",
        "/admin%E2%80%AE",
        # compatibility characters: a server that applies NFKC reads /admin
        "/%EF%BD%81dmin/",  # fullwidth a
        "/%EF%BC%A1DMIN/",  # fullwidth A
        "/%EF%AC%81le",  # the fi ligature
        "/admin%C2%B2",  # superscript two
        # Windows trims trailing dots and spaces
        "/admin./",
        "/admin%20/",
        "/.../admin",
        "/admin.",
    ],
)
def test_refused_paths(raw: str) -> None:
    with pytest.raises(AmbiguousPath):
        normalise_path(raw)


def test_messages_are_specific() -> None:
    with pytest.raises(AmbiguousPath, match="encoded slash"):
        normalise_path("/a%2Fb")
    with pytest.raises(AmbiguousPath, match="double encoding"):
        normalise_path("/a%252Fb")
    with pytest.raises(AmbiguousPath, match="';'"):
        normalise_path("/a;b")
    with pytest.raises(AmbiguousPath, match="malformed"):
        normalise_path("/a%zz")
    with pytest.raises(AmbiguousPath, match="above the root"):
        normalise_path("/..")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/a/b?x=1&y=2", ("/a/b", "x=1&y=2")),
        ("/a/b", ("/a/b", "")),
        ("/a?", ("/a", "")),
        ("/a?b?c", ("/a", "b?c")),
        ("https://intercom.example.com/doors/?x=1", ("/doors/", "x=1")),
        ("https://intercom.example.com", ("/", "")),
        ("https://intercom.example.com?x", ("/", "x")),
        ("/a#frag", ("/a#frag", "")),
    ],
)
def test_split_query(uri: str, expected: tuple[str, str]) -> None:
    assert split_query(uri) == expected


def test_encode_path_round_trips() -> None:
    for path in ("/", "/admin/", "/caf\u00e9/a b", "/x:y@z/!$&'()*+,="):
        assert normalise_path(encode_path(path)) == path


_TOKENS = [
    "/",
    "//",
    ".",
    "..",
    "a",
    "B",
    "-",
    "~",
    ":",
    "@",
    "%2F",
    "%2f",
    "%5C",
    "%2e",
    "%2E",
    "%25",
    "%41",
    "%C3%A9",
    "%E2%80%8B",
    "%EF%BC%8F",
    "%00",
    "%0a",
    "%",
    "%z",
    ";",
    "\\",
    " ",
    "?",
    "#",
    "\u00e9",
    "%20",
    "%3B",
    "%3F",
    "...",
    "%C0%AF",
]
_raw_paths = st.lists(st.sampled_from(_TOKENS), max_size=12).map("".join)


def _checked(raw: str) -> str | None:
    try:
        return normalise_path(raw)
    except AmbiguousPath:
        return None


@given(st.one_of(_raw_paths, _raw_paths.map(lambda s: "/" + s), st.text(max_size=40)))
@example("/a/..%2F..")
@example("/%2e%2e/%2e%2e/etc")
@example("/admin/.%2e/x")
def test_normaliser_properties(raw: str) -> None:
    out = _checked(raw)
    if out is None:
        return
    assert out.startswith("/")
    for bad in ("//", "/./", "/../", "\\", "%", ";", "\x00"):
        assert bad not in out
    assert not out.endswith(("/.", "/.."))
    # idempotent once re-encoded for the wire
    assert normalise_path(encode_path(out)) == out


@given(st.text(max_size=60))
def test_normaliser_only_ever_raises_ambiguous_path(raw: str) -> None:
    _checked(raw)


def test_the_cache_holds_canonical_forms_only_and_stays_bounded() -> None:
    from gateway.core import paths

    cache = paths._normalised
    cache.cache_clear()
    assert normalise_path("/a//b/./c") == "/a/b/c"
    assert normalise_path("/a//b/./c") == "/a/b/c"  # from the cache now
    assert (cache.cache_info().hits, cache.cache_info().currsize) == (1, 1)
    for _ in range(2):  # a refusal is computed every time, never cached
        with pytest.raises(AmbiguousPath):
            normalise_path("/a/%2e%2e/%2fadmin")
    assert (cache.cache_info().hits, cache.cache_info().currsize) == (1, 1)
    long = "/" + "x" * 300
    assert normalise_path(long) == long  # not worth a slot: never looked up
    assert cache.cache_info().misses == 3 and cache.cache_info().currsize == 1
    for i in range(paths._CACHE_ENTRIES + 10):
        normalise_path(f"/p{i}")
    assert cache.cache_info().currsize == cache.cache_info().maxsize == paths._CACHE_ENTRIES


def test_encoded_paths_are_remembered_within_the_same_bounds() -> None:
    from gateway.core import paths

    cache = paths._encoded
    cache.cache_clear()
    assert encode_path("/a b/ä") == "/a%20b/%C3%A4"
    assert encode_path("/a b/ä") == "/a%20b/%C3%A4"  # from the cache now
    assert (cache.cache_info().hits, cache.cache_info().currsize) == (1, 1)
    long = "/" + "y" * 300
    assert encode_path(long) == long and cache.cache_info().currsize == 1
    for i in range(paths._CACHE_ENTRIES + 10):
        encode_path(f"/e {i}")
    assert cache.cache_info().currsize == cache.cache_info().maxsize == paths._CACHE_ENTRIES


@pytest.mark.parametrize(
    "raw",
    [
        "/admin/../doors/",
        "/admin/%2e%2e/doors/",
        "/admin/%2E%2E/doors/",
        "/admin/.%2e/doors/",
        "/admin/%2e./doors/",
        "/admin//../doors/",
        "/doors/./",
        "/doors/%2e/",
        "/doors/..",
        "/./",
        "/..",
    ],
)
def test_dot_segments_are_refused_when_asked_never_resolved(raw: str) -> None:
    """Forward auth: the upstream gets the raw path, and may resolve a dot
    segment differently (or not at all)."""
    with pytest.raises(AmbiguousPath, match="segment"):
        normalise_path(raw, refuse_dot_segments=True)
    with pytest.raises(AmbiguousPath, match="segment"):
        normalise_path("/" + "x" * 300 + raw, refuse_dot_segments=True)  # past the cache too


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/admin/", "/admin/"),
        ("//admin//doors", "/admin/doors"),
        ("/%61dmin/", "/admin/"),
        ("/door.log", "/door.log"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a/..b/c", "/a/..b/c"),
    ],
)
def test_refusing_dot_segments_leaves_every_other_path_alone(raw: str, canonical: str) -> None:
    assert normalise_path(raw, refuse_dot_segments=True) == canonical
    assert normalise_path(raw) == canonical


def test_the_two_readings_are_cached_apart() -> None:
    """A path cached as resolved must never answer for the strict reading."""
    assert normalise_path("/admin/../doors/") == "/doors/"
    with pytest.raises(AmbiguousPath):
        normalise_path("/admin/../doors/", refuse_dot_segments=True)
    assert normalise_path("/admin/../doors/") == "/doors/"
