"""The signed identity assertion (``X-Auth-Request-Jwt``) and its key set.

Signing and key handling are joserfc's (the JOSE library of the authlib
project, which authlib's own ``authlib.jose`` now defers to): ES256 on P-256.  The private key
is generated once and kept in the data directory (mode 0600) with its ``kid``
(the RFC 7638 thumbprint); the public half is published at ``/.sso/jwks.json``
so an upstream can verify instead of trusting a header.

Rotation: further keys (``jwt.published_key_files``) are published beside the
signing key but never sign - the next key, so upstreams know it before the
gateway signs with it, and the previous one, so assertions it signed still
verify until they expire.  Only public halves ever leave the gateway.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
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
        published_key_files: Sequence[Path] = (),
        cache_size: int = 4096,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime
        self._key, self.kid = _load_or_create_key(key_file)
        self._header = {"alg": "ES256", "kid": self.kid, "typ": "JWT"}
        self._published = [_public_jwk(self._key, self.kid)]
        for path in published_key_files:
            key, kid = load_key(path)
            if kid in (k["kid"] for k in self._published):
                raise KeyFileError(f"{path}: key id {kid} is already published")
            self._published.append(_public_jwk(key, kid))
        self._cache: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def jwks(self) -> dict[str, Any]:
        """The public key set: the signing key first, then the published ones."""
        return {"keys": [dict(k) for k in self._published]}

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
        }
        if identity.auth_time:  # 0: the provider did not say when (see views.oidc)
            claims["auth_time"] = int(identity.auth_time)
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


class KeyFileError(ValueError):
    """A key file that cannot be used (unreadable, not a P-256 JWK, a clash)."""


def _load_or_create_key(path: Path) -> tuple[ECKey, str]:
    if not path.exists():
        generate_key_file(path)
    key, kid = load_key(path)
    if not key.is_private:
        raise KeyFileError(f"{path}: holds a public key only; the signing key must be private")
    return key, kid


def load_key(path: Path) -> tuple[ECKey, str]:
    """A P-256 JWK (private or public) and its ``kid`` (the file's, else the
    RFC 7638 thumbprint) from a JSON file; KeyFileError says what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyFileError(f"{path}: not a JSON Web Key (JSON)") from None
    if not isinstance(data, dict) or data.get("kty") != "EC" or data.get("crv") != "P-256":
        raise KeyFileError(f"{path}: not a P-256 (EC) JSON Web Key")
    kid = data.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid.strip()):
        raise KeyFileError(f"{path}: its kid is not a non-empty string")
    try:
        key = ECKey.import_key(data)
    except (ValueError, TypeError, JoseError):  # a bad point, bad base64, a missing member
        raise KeyFileError(f"{path}: not a valid P-256 key") from None
    return key, kid or key.thumbprint()


def generate_key_file(path: Path) -> str:
    """Write a new private P-256 JWK with its ``kid`` to ``path`` (mode 0600;
    an existing file is kept, as when several workers start at once); return
    the kid of the key the file holds."""
    key = ECKey.generate_key("P-256", private=True)
    data = dict(key.as_dict(private=True))
    data["kid"] = key.thumbprint()
    create_secret_file(path, json.dumps(data))
    return load_key(path)[1]


def key_file_problems(signing: Path, published: Sequence[Path]) -> list[tuple[int | None, str]]:
    """What would stop :class:`AssertionSigner` from starting with these files,
    as (index in ``published`` or None for the signing key, reason).  A missing
    signing key is no problem: it is generated on first start."""
    problems: list[tuple[int | None, str]] = []
    kids: set[str] = set()
    if signing.exists():
        try:
            key, kid = load_key(signing)
        except KeyFileError as exc:
            problems.append((None, str(exc)))
        else:
            kids.add(kid)
            if not key.is_private:
                problems.append((None, f"{signing}: holds a public key only"))
    for index, path in enumerate(published):
        try:
            _, kid = load_key(path)
        except KeyFileError as exc:
            problems.append((index, str(exc)))
            continue
        if kid in kids:
            problems.append((index, f"{path}: key id {kid} is already published"))
        kids.add(kid)
    return problems


def _public_jwk(key: ECKey, kid: str) -> dict[str, Any]:
    public: dict[str, Any] = dict(key.as_dict(private=False))
    public.pop("d", None)  # never the private part, whatever the library did
    public.update({"use": "sig", "alg": "ES256", "kid": kid})
    return public


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
