"""The identity headers an upstream receives (on the forward-auth 2xx answer, or
on the proxied request)."""

from __future__ import annotations

import re
import threading

from gateway.core.model import Identity
from gateway.settings import HeaderSettings

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def header_value(value: str) -> str:
    """A header-safe rendering: control characters removed, UTF-8 on the wire
    (WSGI carries header values as latin-1 strings)."""
    cleaned = _CONTROL.sub("", value)
    return cleaned.encode("utf-8").decode("latin-1")


def identity_headers(
    cfg: HeaderSettings, identity: Identity, tier: str | None, jwt: str | None
) -> list[tuple[str, str]]:
    groups = ",".join(g.replace(",", "%2C") for g in identity.groups)
    out = [
        (cfg.user, header_value(identity.subject)),
        (cfg.email, header_value(identity.email)),
        (cfg.groups, header_value(groups)),
        (cfg.tier, header_value(tier or "")),
    ]
    if jwt:
        out.append((cfg.jwt, jwt))
    for name, attributes in cfg.extra.items():
        for attribute in attributes:
            value = identity.attributes.get(attribute)
            if value:
                out.append((name, header_value(value)))
                break
    return out


class IdentityHeaderCache:
    """The identity headers of a session, built once per (session, tier, JWT):
    ``/.sso/auth`` answers the same person many times a second."""

    def __init__(self, cfg: HeaderSettings, *, max_entries: int = 4096) -> None:
        self._cfg = cfg
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: dict[
            tuple[str, str | None, str | None], tuple[Identity, list[tuple[str, str]]]
        ] = {}

    def headers(
        self, identity: Identity, tier: str | None, jwt: str | None, session_key: str
    ) -> list[tuple[str, str]]:
        """A fresh list (the caller may append to it)."""
        key = (session_key, tier, jwt)
        hit = self._entries.get(key)  # one get: atomic, the lock guards the updates
        if hit is not None and hit[0] is identity:
            return list(hit[1])
        built = identity_headers(self._cfg, identity, tier, jwt)
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = (identity, built)
        return list(built)
