"""The signed identity assertion (``X-Auth-Request-Jwt``) and its key set.

Signing and key handling are joserfc's (the JOSE library of the authlib
project, which authlib's own ``authlib.jose`` now defers to): ES256 on P-256.  The private key
is generated once and kept in the data directory (mode 0600) with its ``kid``
(the RFC 7638 thumbprint); the public half is published at ``/.sso/jwks.json``
so an upstream can verify instead of trusting a header.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from gateway.core.model import Identity
from gateway.files import create_secret_file

ALGORITHMS = ["ES256"]  # the only algorithm produced or accepted


class AssertionSigner:
    def __init__(
        self,
        key_file: Path,
        *,
        issuer: str,
        audience: str,
        lifetime: int,
        cache_size: int = 4096,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime
        self._key, self.kid = _load_or_create_key(key_file)
        self._header = {"alg": "ES256", "kid": self.kid, "typ": "JWT"}
        self._cache: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def jwks(self) -> dict[str, Any]:
        public: dict[str, Any] = dict(self._key.as_dict(private=False))
        public.update({"use": "sig", "alg": "ES256", "kid": self.kid})
        return {"keys": [public]}

    def sign(self, identity: Identity, tier: str | None, session_key: str, now: float) -> str:
        """A short-lived JWT for this identity.  Reused for half its lifetime per
        session and tier, so a busy dashboard does not cost one signature per call."""
        cache_key = (session_key, tier or "")
        hit = self._cache.get(cache_key)  # one get: atomic, the lock guards the updates
        if hit is not None and hit[0] > now:
            return hit[1]
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": identity.subject,
            "iat": int(now),
            "nbf": int(now) - 5,
            "exp": int(now) + self.lifetime,
            "email": identity.email,
            "name": identity.name,
            "groups": list(identity.groups),
            "tier": tier,
            "idp": identity.provider,
            "auth_time": int(identity.auth_time),
        }
        token = jwt.encode(self._header, claims, self._key, algorithms=ALGORITHMS)
        with self._lock:
            self._cache[cache_key] = (now + self.lifetime / 2, token)
            self._cache.move_to_end(cache_key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return token

    def forget(self, session_key: str) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == session_key]:
                del self._cache[key]


def _load_or_create_key(path: Path) -> tuple[ECKey, str]:
    if not path.exists():
        _create_key(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    key = ECKey.import_key(data)
    if not key.is_private or data.get("crv") != "P-256":
        raise ValueError(f"{path} does not hold a private P-256 key")
    return key, str(data.get("kid") or key.thumbprint())


def _create_key(path: Path) -> None:
    key = ECKey.generate_key("P-256", private=True)
    data = dict(key.as_dict(private=True))
    data["kid"] = key.thumbprint()
    create_secret_file(path, json.dumps(data))


def verify(
    token: str,
    jwks: dict[str, Any],
    *,
    audience: str,
    issuer: str,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify an assertion the way an upstream would (used by tests and docs)."""
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=ALGORITHMS)  # type: ignore[arg-type]
    registry = jwt.JWTClaimsRegistry(
        now=int(time.time() if now is None else now),
        leeway=5,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
    )
    registry.validate(decoded.claims)
    return dict(decoded.claims)
