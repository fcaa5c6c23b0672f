"""Redirect-target checks (``rd``, RelayState): same site or allow-listed, or refused.

A target is accepted when it is either

* a path on this site: it starts with exactly one ``/`` (not ``//``, not ``/\\``),
  or
* an absolute ``http``/``https`` URL of the form ``scheme://host[:port]/...``,
  without userinfo, whose host is the request's own host on the same port
  (scheme default ports are filled in), or matches an ``allowed_domains`` entry:
  ``example.com`` means exactly that host (any port), ``.example.com`` means that
  domain and every subdomain.

Hosts are compared lowercase, IDNA-encoded, with one trailing dot removed
(``good.com.`` is the same host as ``good.com`` and is accepted alike).

Refused outright, because browsers read them differently from a naive parser:
raw whitespace, control or format characters anywhere (browsers strip tabs and
newlines: ``/\\t/evil``); a backslash anywhere, raw or percent-encoded, even in
the query (browsers treat ``\\`` as ``/``); percent-encoded control characters
(``%20`` is fine); targets that still begin with ``//`` or ``/\\`` after
percent-decoding (``/%2F%2Fevil``); scheme forms other than ``scheme://``
(``https:evil``, ``https:/evil``, ``https:///evil``); any scheme but http/https
(``javascript:``, ``data:``); a ``%`` or any non-ASCII character in the target's
host (browsers and Python disagree on some IDNA mappings; browsers send hosts as
ASCII punycode anyway); and relative references that do not start with ``/``.
An empty target is refused too: the caller picks the default.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from urllib.parse import unquote

from gateway.core.errors import UnsafeRedirect

__all__ = ["is_allowed_host", "safe_redirect"]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_DEFAULT_PORTS: Mapping[str, int] = MappingProxyType({"http": 80, "https": 443})
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_DECODE_ROUNDS = 4


def safe_redirect(
    target: str,
    *,
    request_host: str,
    request_scheme: str,
    allowed_domains: Sequence[str],
) -> str:
    """Return ``target`` unchanged if it is a safe redirect, else raise :class:`UnsafeRedirect`."""
    if not target:
        raise UnsafeRedirect("empty redirect target")
    _check_characters(target)
    if target.startswith("/"):
        if target[1:2] in ("/", "\\"):
            raise UnsafeRedirect("protocol-relative redirect target")
        return target
    scheme_match = _SCHEME.match(target)
    if not scheme_match:
        raise UnsafeRedirect("redirect target is neither a site path nor an absolute URL")
    scheme = scheme_match.group(1).lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeRedirect(f"redirect scheme {scheme!r} is not http or https")
    rest = target[scheme_match.end() :]
    if not rest.startswith("//") or rest[2:3] in ("/", ""):
        raise UnsafeRedirect("absolute redirect target must be scheme://host/...")
    authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    if "@" in authority:
        raise UnsafeRedirect("redirect target carries userinfo")
    if not is_allowed_host(
        authority,
        request_host,
        allowed_domains,
        scheme=scheme,
        request_scheme=request_scheme,
    ):
        raise UnsafeRedirect("redirect host is neither this site nor allow-listed")
    return target


def _check_characters(target: str) -> None:
    """Refuse what browsers strip or reinterpret, raw and after percent-decoding."""
    for char in target:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            raise UnsafeRedirect("redirect target contains whitespace or control characters")
    text = target
    for _ in range(_MAX_DECODE_ROUNDS):
        if "\\" in text:
            raise UnsafeRedirect("redirect target contains a backslash")
        if any(unicodedata.category(char) == "Cc" for char in text):
            raise UnsafeRedirect("redirect target contains encoded control characters")
        if text.startswith(("//", "/\\")):
            raise UnsafeRedirect("redirect target decodes to a protocol-relative URL")
        decoded = unquote(text, errors="replace") if "%" in text else text
        if decoded == text:
            return
        text = decoded
    raise UnsafeRedirect("redirect target is percent-encoded too many times")


def is_allowed_host(
    host: str,
    request_host: str,
    allowed_domains: Sequence[str],
    *,
    scheme: str = "https",
    request_scheme: str = "https",
) -> bool:
    """True if ``host`` (``name``, ``name:port`` or ``[v6]:port``) is this site or allow-listed.

    Same site means the same normalised host *and* the same effective port, the
    default port coming from ``scheme`` / ``request_scheme``.  Allow-list entries
    match on the host name alone.  Anything unparsable is not allowed.
    """
    target = _split_host_port(host, scheme)
    if target is None:
        return False
    name, port = target
    own = _split_host_port(request_host, request_scheme)
    if own is not None and own == (name, port):
        return True
    for entry in allowed_domains:
        if entry.startswith("."):
            domain = _normalise_name(entry[1:])
            if domain and (name == domain or name.endswith("." + domain)):
                return True
        else:
            exact = _normalise_name(entry)
            if exact and name == exact:
                return True
    return False


def _split_host_port(authority: str, scheme: str) -> tuple[str, int] | None:
    default = _DEFAULT_PORTS.get(scheme.lower())
    if default is None or not authority.isascii() or "%" in authority or "@" in authority:
        return None
    if authority.startswith("["):
        end = authority.find("]")
        try:
            name = str(ipaddress.IPv6Address(authority[1:end])) if end > 0 else ""
        except ValueError:
            return None
        after = authority[end + 1 :]
        if not name or (after and not after.startswith(":")):
            return None
        port_text = after[1:] if after else None
    else:
        raw_name, colon, rest = authority.partition(":")
        name = _normalise_name(raw_name)
        port_text = rest if colon else None
    if not name:
        return None
    if port_text is None:
        return name, default
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def _normalise_name(raw: str) -> str:
    """Lowercase ASCII host name without one trailing dot; '' if invalid.

    A non-ASCII name is IDNA-encoded only if it survives a round trip unchanged:
    names with characters that IDNA 2003 (Python) and UTS 46 (browsers) map
    differently, such as ``ß``, are refused rather than guessed.
    """
    name = raw[:-1] if raw.endswith(".") else raw
    if not name or len(name) > 253:
        return ""
    if not name.isascii():
        try:
            encoded = name.encode("idna").decode("ascii")
            if encoded.encode("ascii").decode("idna") != name.lower():
                return ""
        except UnicodeError:
            return ""
        name = encoded
    name = name.lower()
    if all(_LABEL.fullmatch(label) for label in name.split(".")):
        return name
    return ""
