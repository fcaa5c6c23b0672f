"""The device credential bridge: the gateway answers an upstream's HTTP Basic or
Digest challenge with the device's one local admin account, after it has
authorised the person, so operators never learn the device password.

Digest (RFC 7616 / 2617) is computed by ``requests``' :class:`HTTPDigestAuth`;
nothing here hashes by hand.  One challenge per upstream is remembered and its
nonce count shared by every request of the process, so requests after the first
carry a valid ``Authorization`` from the start (as a browser does) and bodies
need no replay.  ``requests`` keeps its Digest state per thread (per greenlet
under gevent); it is set from the shared state, under a lock, for every header.
"""

from __future__ import annotations

import re
import threading
from base64 import b64encode
from collections.abc import Iterable
from typing import Any

from requests.auth import HTTPDigestAuth
from requests.utils import parse_dict_header

from gateway.settings_proxy import DeviceLoginSettings

__all__ = ["DeviceCredentials"]

_DIGEST = re.compile(r"\s*digest\s+", re.IGNORECASE)


class DeviceCredentials:
    def __init__(self, cfg: DeviceLoginSettings) -> None:
        self.scheme = cfg.scheme
        password = cfg.password.get_secret_value()
        self._basic = "Basic " + b64encode(f"{cfg.username}:{password}".encode()).decode("ascii")
        self._digest = HTTPDigestAuth(cfg.username, password)
        self._lock = threading.Lock()
        self._challenge: dict[str, str] | None = None
        self._last_nonce = ""
        self._nonce_count = 0

    @property
    def has_challenge(self) -> bool:
        return self._challenge is not None

    def authorization(self, method: str, target: str) -> str | None:
        """The ``Authorization`` value for ``method target`` (the request target
        as sent: path and query), or None when a Digest upstream has not yet
        sent a challenge."""
        if self.scheme == "basic":
            return self._basic
        with self._lock:
            if self._challenge is None:
                return None
            auth: Any = self._digest  # the stubs do not list its per-thread state
            auth.init_per_thread_state()
            state = auth._thread_local
            state.chal = dict(self._challenge)
            state.last_nonce = self._last_nonce
            state.nonce_count = self._nonce_count
            header: str | None = auth.build_digest_header(method, target)
            self._last_nonce = state.last_nonce
            self._nonce_count = state.nonce_count
        return header

    def learn(self, www_authenticate: Iterable[str]) -> bool:
        """Remember the Digest challenge of a ``401``.  True when it is a new one
        (a retry with it may succeed); False for Basic upstreams, or when the
        challenge is the one that was just refused (wrong password)."""
        if self.scheme != "digest":
            return False
        for value in www_authenticate:
            if not _DIGEST.match(value):
                continue
            challenge = {k.lower(): v for k, v in _parse(_DIGEST.sub("", value, count=1)).items()}
            if not challenge.get("realm") or not challenge.get("nonce"):
                continue
            with self._lock:
                stale = str(challenge.get("stale", "")).lower() == "true"
                new = self._challenge is None or challenge["nonce"] != self._challenge["nonce"]
                self._challenge = {k: v for k, v in challenge.items() if v is not None}
                if new:
                    self._nonce_count = 0
                return new or stale
        return False


def _parse(text: str) -> dict[str, str | None]:
    """``realm="x", nonce="y", qop="auth"`` -> dict (requests' parser)."""
    parse: Any = parse_dict_header  # untyped in the stubs
    parsed: dict[str, str | None] = parse(text)
    return parsed
