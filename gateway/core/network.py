"""IP networks: parsing, membership, and the client address behind trusted proxies.

Only proxies listed as trusted may speak for a client through
``X-Forwarded-For``; the list is walked from the right (the hop nearest to us)
and the first address that is not a trusted proxy is the client.  A malformed
entry stops the walk: the answer is then the last trusted hop, never a string
an attacker wrote.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

__all__ = [
    "Network",
    "Networks",
    "client_address",
    "ip_in",
    "overlaps",
    "parse_address",
    "parse_networks",
]

Network = IPv4Network | IPv6Network
Networks = tuple[Network, ...]


def parse_networks(values: Iterable[str]) -> Networks:
    """Parse CIDR strings (``10.0.0.0/8``, ``fd00::/8``, or a single address).

    Raises :class:`ValueError` naming the first bad entry; host bits set
    (``10.0.0.1/8``) count as a mistake.
    """
    out: list[Network] = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"not a network: {value!r}")
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"not a valid network {value!r}: {exc}") from exc
    return tuple(out)


def overlaps(a: Networks, b: Networks) -> list[tuple[Network, Network]]:
    """Pairs of networks of ``a`` and ``b`` that share addresses (IPv4 networks
    are also compared with their IPv4-mapped IPv6 form)."""
    pairs: list[tuple[Network, Network]] = []
    for x in a:
        for y in b:
            if _as_v6(x).overlaps(_as_v6(y)):
                pairs.append((x, y))
    return pairs


def _as_v6(net: Network) -> IPv6Network:
    if isinstance(net, IPv6Network):
        return net
    return IPv6Network(f"::ffff:{net.network_address}/{96 + net.prefixlen}")


def parse_address(value: str) -> IPv4Address | IPv6Address | None:
    """The address in ``value`` (``[v6]`` brackets allowed), or None if it is not one.

    IPv6 zone identifiers (``fe80::1%eth0``) are refused: their text is free-form.
    """
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _variants(addr: IPv4Address | IPv6Address) -> tuple[IPv4Address | IPv6Address, ...]:
    """The address and its IPv4 / IPv4-mapped IPv6 twin, so either form matches."""
    if isinstance(addr, IPv6Address):
        mapped = addr.ipv4_mapped
        return (addr,) if mapped is None else (addr, mapped)
    return (addr, IPv6Address(f"::ffff:{addr}"))


def ip_in(addr: str, nets: Networks) -> bool:
    """True if ``addr`` lies in any of ``nets``; a malformed address is in none."""
    parsed = parse_address(addr) if addr else None
    if parsed is None:
        return False
    candidates = _variants(parsed)
    return any(candidate in net for net in nets for candidate in candidates)


def client_address(remote_addr: str, forwarded_for: str | None, trusted: Networks) -> str:
    """The client's address as far as trusted proxies tell.

    ``remote_addr`` is the TCP peer.  If it is not a trusted proxy it is the
    answer.  Otherwise ``forwarded_for`` is walked right to left, skipping
    trusted addresses; the first untrusted valid address wins.  A malformed entry
    (``unknown``, ``1.2.3.4:80``, an empty item) ends the walk and the last
    trusted hop walked is returned.
    """
    if not ip_in(remote_addr, trusted) or not forwarded_for:
        return remote_addr
    last = remote_addr
    for entry in reversed(forwarded_for.split(",")):
        parsed = parse_address(entry)
        if parsed is None:
            return last
        text = str(parsed)
        if not ip_in(text, trusted):
            return text
        last = text
    return last


class TrustedProxies:
    """The trusted-proxy networks, with the two questions asked on every request
    answered from per-instance LRU caches (the same few proxy addresses ask every
    time), as :class:`gateway.core.policy.PolicySet` caches its tier lookups."""

    def __init__(self, nets: Networks, *, cache_size: int = 4096) -> None:
        self.nets = nets
        self._contains = functools.lru_cache(maxsize=cache_size)(lambda addr: ip_in(addr, nets))
        self._client = functools.lru_cache(maxsize=cache_size)(
            lambda remote, forwarded: client_address(remote, forwarded, nets)
        )

    def __contains__(self, addr: str) -> bool:
        return bool(self._contains(addr))

    def client_address(self, remote_addr: str, forwarded_for: str | None) -> str:
        if forwarded_for is not None and len(forwarded_for) > 512:  # not worth a slot
            return client_address(remote_addr, forwarded_for, self.nets)
        return str(self._client(remote_addr, forwarded_for))
