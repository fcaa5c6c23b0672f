"""Networks, membership and the client address behind trusted proxies."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.network import client_address, ip_in, overlaps, parse_address, parse_networks

TRUSTED = parse_networks(["10.0.0.0/8", "fd00::/8"])


def test_parse_networks() -> None:
    nets = parse_networks(["10.20.30.0/24", "2001:db8::/32", "192.0.2.7", " 172.16.0.0/12 "])
    assert nets == (
        ip_network("10.20.30.0/24"),
        ip_network("2001:db8::/32"),
        ip_network("192.0.2.7/32"),
        ip_network("172.16.0.0/12"),
    )
    assert parse_networks([]) == ()


@pytest.mark.parametrize(
    "bad", ["10.20.30.5/24", "10.0.0.0/33", "300.1.1.1", "intercom", "", "  ", "10.0.0.0/8/8"]
)
def test_parse_networks_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="network"):
        parse_networks(["10.0.0.0/8", bad])


def test_ip_in() -> None:
    assert ip_in("10.1.2.3", TRUSTED)
    assert ip_in("fd12::1", TRUSTED)
    assert ip_in("[fd12::1]", TRUSTED)
    assert ip_in("::ffff:10.1.2.3", TRUSTED)
    assert not ip_in("11.1.2.3", TRUSTED)
    assert not ip_in("::ffff:11.1.2.3", TRUSTED)
    assert not ip_in("", TRUSTED)
    assert not ip_in("garbage", TRUSTED)
    assert not ip_in("10.1.2.3:80", TRUSTED)
    assert not ip_in("fd00::1%eth0", TRUSTED)
    assert not ip_in("010.1.2.3", TRUSTED)
    assert not ip_in("10.1.2.3", ())
    mapped_net = parse_networks(["::ffff:192.0.2.0/120"])
    assert ip_in("192.0.2.9", mapped_net)


def test_parse_address() -> None:
    assert str(parse_address(" [2001:db8::1] ")) == "2001:db8::1"
    assert parse_address("unknown") is None
    assert parse_address("fe80::1%25eth0") is None


@pytest.mark.parametrize(
    ("remote", "xff", "expected"),
    [
        # the peer is not a trusted proxy: its own address, whatever it claims
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),
        ("203.0.113.9", None, "203.0.113.9"),
        # a trusted proxy without a header
        ("10.0.0.2", None, "10.0.0.2"),
        ("10.0.0.2", "", "10.0.0.2"),
        # one proxy
        ("10.0.0.2", "198.51.100.7", "198.51.100.7"),
        # a chain: the rightmost untrusted address wins, spoofed left entries ignored
        ("10.0.0.2", "1.1.1.1, 198.51.100.7, 10.0.0.9", "198.51.100.7"),
        ("10.0.0.2", "1.1.1.1,198.51.100.7,10.0.0.9,10.0.0.3", "198.51.100.7"),
        # everything trusted: the leftmost trusted hop
        ("10.0.0.2", "10.0.0.5, 10.0.0.9", "10.0.0.5"),
        # malformed entries stop the walk at the last trusted hop
        ("10.0.0.2", "198.51.100.7, unknown", "10.0.0.2"),
        ("10.0.0.2", "198.51.100.7, 10.0.0.9, <script>", "10.0.0.2"),
        ("10.0.0.2", "198.51.100.7, garbage, 10.0.0.9", "10.0.0.9"),
        ("10.0.0.2", "198.51.100.7,,10.0.0.9", "10.0.0.9"),
        ("10.0.0.2", "198.51.100.7:4431", "10.0.0.2"),
        ("10.0.0.2", "198.51.100.7, fe80::1%eth0", "10.0.0.2"),
        # IPv6 and canonical forms
        ("fd00::2", "2001:DB8::0:1", "2001:db8::1"),
        ("10.0.0.2", "[2001:db8::1]", "2001:db8::1"),
        ("::ffff:10.0.0.2", "198.51.100.7", "198.51.100.7"),
    ],
)
def test_client_address(remote: str, xff: str | None, expected: str) -> None:
    assert client_address(remote, xff, TRUSTED) == expected


@given(st.text(max_size=80))
def test_client_address_never_returns_garbage(xff: str) -> None:
    out = client_address("10.0.0.2", xff, TRUSTED)
    assert parse_address(out) is not None


def test_trusted_proxies_object_answers_like_the_functions() -> None:
    from gateway.core.network import TrustedProxies, client_address, ip_in, parse_networks

    nets = parse_networks(["127.0.0.1/32", "10.0.0.0/8", "::1/128"])
    trusted = TrustedProxies(nets, cache_size=4)
    cases = [
        ("127.0.0.1", "203.0.113.5"),
        ("127.0.0.1", "203.0.113.5, 10.1.1.1"),
        ("198.51.100.7", "10.20.30.7"),
        ("::ffff:127.0.0.1", "203.0.113.9"),
        ("127.0.0.1", "unknown"),
        ("127.0.0.1", None),
        ("", "1.2.3.4"),
        ("127.0.0.1", "x" * 600),
    ]
    for _ in range(3):  # repeated, so answers also come from the (small) caches
        for remote, xff in cases:
            assert (remote in trusted) == ip_in(remote, nets)
            assert trusted.client_address(remote, xff) == client_address(remote, xff, nets)


def test_cookie_value_matches_werkzeugs_parser() -> None:
    from werkzeug.http import parse_cookie

    from gateway.views.common import cookie_value

    headers = [
        "__Host-sso_gw=abc.def",
        "a=1; __Host-sso_gw=abc.def; b=2",
        "__Host-sso_gw=first; __Host-sso_gw=second",
        'x=1;__Host-sso_gw="quoted"',
        "x__Host-sso_gw=no; y=1",
        "__Host-sso_gw_csrf=nope",
        "__Host-sso_gw",
        "",
        " __Host-sso_gw = spaced ; z=1",
    ]
    for header in headers:
        expected = parse_cookie(header).get("__Host-sso_gw")
        assert cookie_value(header, "__Host-sso_gw") == expected, header
    assert cookie_value(None, "__Host-sso_gw") is None


def test_overlapping_networks_are_found_in_both_address_families() -> None:
    trusted = parse_networks(["10.0.0.0/8", "::1/128", "fd00::/8"])
    policy = parse_networks(["10.20.30.0/24", "192.168.0.0/16", "::ffff:10.1.0.0/112"])
    assert [(str(a), str(b)) for a, b in overlaps(trusted, policy)] == [
        ("10.0.0.0/8", "10.20.30.0/24"),
        ("10.0.0.0/8", "::ffff:a01:0/112"),
    ]
    assert overlaps(parse_networks(["127.0.0.1/32"]), policy) == []
