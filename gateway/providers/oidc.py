"""OpenID Connect relying party (Microsoft Entra ID first): the protocol half.

Translation only: discovery, the authorization request (code flow, PKCE S256,
state and nonce chosen by the caller and kept server-side by it), the code
exchange (authlib's OAuth 2 client: ``client_secret_basic``/``_post`` or
``private_key_jwt``), ID token and logout token validation (joserfc), userinfo,
and the claims -> :class:`~gateway.core.model.Identity` mapping.  Tiers and access
are decided elsewhere.

ID token checks, all of them, in :meth:`OidcClient.validate_id_token`: signature by
a key of the provider's JWKS (fetched again once when a token names an unknown
``kid``, at most every 10 s), an algorithm on the configured list (never ``none``
or HMAC), ``iss`` (the tenant's, see below), ``aud`` holding our client id and
``azp`` naming us when present or when there are several audiences,
``exp``/``nbf``/``iat`` with the configured leeway, ``nonce``, a subject, and
for a fresh (step-up) login an ``auth_time`` after the login began.

Tenants (Entra ID): the configured issuer is either one tenant's
(``https://login.microsoftonline.com/<tid>/v2.0``) or the multi-tenant form with
the literal ``{tenantid}``.  Either way the token's ``tid`` must be on the
allow-list (``tenants``; for a one-tenant issuer its own GUID by default) and
``iss`` must be the issuer with exactly that ``tid`` filled in.

Every failure raises :class:`OidcFailed` with a short reason code for the audit
log; an unreachable provider raises :class:`ProviderUnavailable`.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from base64 import urlsafe_b64encode
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlencode

import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

from gateway.core.errors import AuthenticationFailed, ProviderUnavailable
from gateway.core.model import Identity
from gateway.settings_oidc import TENANT_PLACEHOLDER, OidcSettings

log = logging.getLogger(__name__)

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
_GUID_IN_PATH = re.compile(
    r"/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(?:/|$)"
)
_JWKS_REFETCH_INTERVAL = 10.0
_MAX_TOKEN = 16_384


class OidcFailed(AuthenticationFailed):
    """An OIDC login or logout message was refused; ``reason`` is the audit code."""


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None


@dataclass(frozen=True)
class TokenSet:
    """What a successful code exchange gave us."""

    id_token: str
    claims: dict[str, Any]
    access_token: str | None


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class OidcClient:
    """One configured OpenID provider.  Thread-safe; caches discovery and JWKS."""

    def __init__(
        self,
        settings: OidcSettings,
        *,
        resolve_path: Callable[[Path], Path] = lambda p: p,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._resolve = resolve_path
        self._lock = threading.Lock()
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._jwks: KeySet | None = None
        self._jwks_at = 0.0
        self._jwks_forced_at = -_JWKS_REFETCH_INTERVAL
        self.tls_verify: bool | str = (
            str(resolve_path(settings.ca_bundle)) if settings.ca_bundle else True
        )
        self._http = requests.Session()
        self._http.verify = self.tls_verify
        self._allowed_tenants = self._tenant_allow_list()
        self._signing_key: RSAKey | None = None
        self._key_headers: dict[str, str] = {}
        if settings.client_auth == "private_key_jwt":
            self._load_client_key()

    # -- provider metadata and keys -------------------------------------------
    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            resp = self._http.get(url, timeout=self.settings.http_timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"{what}: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise ProviderUnavailable(f"{what}: HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            raise ProviderUnavailable(f"{what}: not JSON") from None
        if not isinstance(data, dict):
            raise ProviderUnavailable(f"{what}: not a JSON object")
        return data

    def metadata(self) -> ProviderMetadata:
        now = time.monotonic()
        with self._lock:
            cached = self._metadata
            if cached is not None and now - self._metadata_at < self.settings.metadata_refresh:
                return cached
        doc = self._get_json(self.settings.discovery, "discovery")
        meta = self._parse_metadata(doc)
        with self._lock:
            self._metadata, self._metadata_at = meta, now
        return meta

    def _parse_metadata(self, doc: Mapping[str, Any]) -> ProviderMetadata:
        def url(name: str, required: bool = True) -> str | None:
            value = doc.get(name)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise ProviderUnavailable(f"discovery: {name} missing or not a URL")
            if value.startswith("http://") and not self.settings.allow_insecure_http:
                raise ProviderUnavailable(f"discovery: {name} is not https")
            return value

        issuer = doc.get("issuer")
        if not isinstance(issuer, str) or issuer != self.settings.issuer:
            # the document must be the configured provider's (OIDC Discovery 4.3)
            raise ProviderUnavailable(
                f"discovery: issuer {str(issuer)[:200]!r} is not the configured issuer"
            )
        return ProviderMetadata(
            issuer=issuer,
            authorization_endpoint=url("authorization_endpoint") or "",
            token_endpoint=url("token_endpoint") or "",
            jwks_uri=url("jwks_uri") or "",
            userinfo_endpoint=url("userinfo_endpoint", required=False),
            end_session_endpoint=url("end_session_endpoint", required=False),
        )

    def _keys(self, refresh: bool = False) -> KeySet:
        """The provider's signing keys.  ``refresh`` (a token named a key we do
        not have: the provider rolled its keys) fetches them again, at most once
        every 10 s, so forged ``kid`` values cannot make us hammer the provider."""
        now = time.monotonic()
        with self._lock:
            cached = self._jwks
            stale = now - self._jwks_at > self.settings.metadata_refresh
            if refresh:
                if now - self._jwks_forced_at < _JWKS_REFETCH_INTERVAL and cached is not None:
                    return cached
                self._jwks_forced_at = now
            elif cached is not None and not stale:
                return cached
        doc = self._get_json(self.metadata().jwks_uri, "jwks")
        try:
            keys = KeySet.import_key_set(doc)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError):
            raise ProviderUnavailable("jwks: not a usable key set") from None
        with self._lock:
            self._jwks, self._jwks_at = keys, now
        return keys

    # -- tenants ----------------------------------------------------------------
    def _tenant_allow_list(self) -> frozenset[str]:
        if self.settings.tenants:
            return frozenset(self.settings.tenants)
        match = _GUID_IN_PATH.search(self.settings.issuer)
        return frozenset([match.group(1).lower()]) if match else frozenset()

    def check_issuer(self, claims: Mapping[str, Any], what: str, *, tid_required: bool) -> None:
        """``iss`` must be the configured issuer (with the token's own tenant in
        place of ``{tenantid}``), and ``tid``, where tenants are known, on the
        allow-list.  Logout tokens may leave ``tid`` out; ID tokens may not."""
        tid = claims.get("tid")
        if self._allowed_tenants and (tid is not None or tid_required):
            if not isinstance(tid, str) or tid.lower() not in self._allowed_tenants:
                raise OidcFailed("tenant-not-allowed")
        iss = claims.get("iss")
        if not isinstance(iss, str):
            raise OidcFailed(f"{what}-issuer")
        if not self.settings.multi_tenant:
            if iss != self.settings.issuer:
                raise OidcFailed(f"{what}-issuer")
            return
        template = self.settings.issuer
        if isinstance(tid, str):
            allowed = {template.replace(TENANT_PLACEHOLDER, tid)}
        else:
            allowed = {template.replace(TENANT_PLACEHOLDER, t) for t in self._allowed_tenants}
        if iss not in allowed:
            raise OidcFailed(f"{what}-issuer")

    # -- the authorization request ---------------------------------------------
    def _session(self, redirect_uri: str | None = None) -> OAuth2Session:
        s = self.settings
        secret = s.client_secret.get_secret_value() if s.client_secret else None
        session = OAuth2Session(
            client_id=s.client_id,
            client_secret=secret,
            token_endpoint_auth_method=s.client_auth,
            scope=" ".join(s.scopes),
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
        )
        session.verify = self.tls_verify
        if s.client_auth == "private_key_jwt":
            session.register_client_auth_method(("private_key_jwt", self._private_key_jwt))
        return session

    def authorization_url(
        self,
        *,
        redirect_uri: str,
        state: str,
        nonce: str,
        code_verifier: str,
        fresh: bool,
        max_age: int | None = None,
    ) -> str:
        meta = self.metadata()
        extra: dict[str, Any] = {"nonce": nonce}
        if fresh:
            extra["prompt"] = "login"
        if max_age is not None:
            extra["max_age"] = max_age
        with self._session(redirect_uri) as session:
            url, _ = session.create_authorization_url(
                meta.authorization_endpoint, state=state, code_verifier=code_verifier, **extra
            )
        return str(url)

    # -- code exchange ------------------------------------------------------------
    def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str) -> dict[str, Any]:
        meta = self.metadata()
        with self._session(redirect_uri) as session:
            try:
                token = session.fetch_token(
                    meta.token_endpoint,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=code_verifier,
                    timeout=self.settings.http_timeout,
                    allow_redirects=False,
                )
            except OAuthError as exc:
                raise OidcFailed(f"token-error:{str(exc.error)[:60]}") from None
            except requests.RequestException as exc:
                raise ProviderUnavailable(f"token endpoint: {type(exc).__name__}") from None
            except ValueError:
                raise OidcFailed("token-response-invalid") from None
        if not isinstance(token, Mapping):
            raise OidcFailed("token-response-invalid")
        return dict(token)

    def client_credentials_token(self, scope: str) -> tuple[str, float]:
        """An app-only access token (Microsoft Graph) and its lifetime."""
        meta = self.metadata()
        with self._session() as session:
            try:
                token = session.fetch_token(
                    meta.token_endpoint,
                    grant_type="client_credentials",
                    scope=scope,
                    timeout=self.settings.http_timeout,
                    allow_redirects=False,
                )
            except OAuthError as exc:
                raise ProviderUnavailable(f"client credentials: {exc.error}") from None
            except (requests.RequestException, ValueError) as exc:
                raise ProviderUnavailable(f"client credentials: {type(exc).__name__}") from None
        access = token.get("access_token")
        if not isinstance(access, str) or not access:
            raise ProviderUnavailable("client credentials: no access token")
        lifetime = token.get("expires_in")
        return access, float(lifetime) if isinstance(lifetime, int | float) else 300.0

    def _load_client_key(self) -> None:
        s = self.settings
        assert s.private_key_file is not None
        pem = self._resolve(s.private_key_file).read_bytes()
        self._signing_key = RSAKey.import_key(pem)
        headers: dict[str, str] = {}
        if s.certificate_file is not None:
            cert = x509.load_pem_x509_certificate(self._resolve(s.certificate_file).read_bytes())
            headers["x5t#S256"] = _b64(cert.fingerprint(hashes.SHA256()))
            headers["x5t"] = _b64(cert.fingerprint(hashes.SHA1()))  # noqa: S303 - Entra wants it
        self._key_headers = headers

    def _private_key_jwt(
        self, client: Any, method: str, uri: str, headers: dict[str, str], body: str
    ) -> tuple[str, dict[str, str], str]:
        """Client authentication by a signed assertion (RFC 7523), signed by joserfc."""
        assert self._signing_key is not None
        now = int(self.clock())
        claims = {
            "iss": self.settings.client_id,
            "sub": self.settings.client_id,
            "aud": uri,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "nbf": now,
            "exp": now + 120,
        }
        header = {"alg": "RS256", "typ": "JWT", **self._key_headers}
        assertion = jwt.encode(header, claims, self._signing_key)
        extra = urlencode(
            {
                "client_id": self.settings.client_id,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            }
        )
        return uri, headers, f"{body}&{extra}" if body else extra

    # -- token validation -------------------------------------------------------
    def _decode(self, token: str, what: str) -> dict[str, Any]:
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN:
            raise OidcFailed(f"{what}-malformed")
        try:
            header = jws.extract_compact(token.encode("ascii")).protected
        except (JoseError, ValueError, UnicodeEncodeError):
            raise OidcFailed(f"{what}-malformed") from None
        alg = header.get("alg")
        if alg not in self.settings.algorithms:
            raise OidcFailed(f"{what}-alg-refused:{str(alg)[:16]}")
        keys = self._keys()
        kid = header.get("kid")
        if kid is not None and not _has_kid(keys, kid):
            keys = self._keys(refresh=True)  # key rollover at the provider
            if not _has_kid(keys, kid):
                raise OidcFailed(f"{what}-unknown-key")
        try:
            decoded = jwt.decode(token, keys, algorithms=list(self.settings.algorithms))
        except JoseError:
            raise OidcFailed(f"{what}-signature") from None
        claims = decoded.claims
        if not isinstance(claims, dict):
            raise OidcFailed(f"{what}-malformed")
        return claims

    def _check_common(self, claims: Mapping[str, Any], what: str, now: float) -> None:
        leeway = self.settings.leeway
        self.check_issuer(claims, what, tid_required=what == "id-token")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or self.settings.client_id not in audiences:
            raise OidcFailed(f"{what}-audience")
        azp = claims.get("azp")
        if (azp is not None or len(audiences) > 1) and azp != self.settings.client_id:
            raise OidcFailed(f"{what}-azp")
        iat = claims.get("iat")
        if not _number(iat):
            raise OidcFailed(f"{what}-no-iat")
        if iat > now + leeway:
            raise OidcFailed(f"{what}-issued-in-future")
        nbf = claims.get("nbf")
        if nbf is not None and (not _number(nbf) or nbf > now + leeway):
            raise OidcFailed(f"{what}-not-yet-valid")

    def validate_id_token(
        self, token: str, *, nonce: str, now: float, fresh_since: float | None = None
    ) -> dict[str, Any]:
        claims = self._decode(token, "id-token")
        self._check_common(claims, "id-token", now)
        exp = claims.get("exp")
        if not _number(exp) or exp < now - self.settings.leeway:
            raise OidcFailed("id-token-expired")
        got_nonce = claims.get("nonce")
        if not isinstance(got_nonce, str) or not secrets.compare_digest(got_nonce, nonce):
            raise OidcFailed("id-token-nonce")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise OidcFailed("id-token-no-sub")
        if fresh_since is not None:
            # a step-up login: the person must have signed in after it began.
            # Entra's v2 tokens may lack auth_time; then iat (issued after the
            # prompt=login we sent) stands in for it
            auth_time = claims.get("auth_time", claims.get("iat"))
            if not _number(auth_time) or auth_time < fresh_since - self.settings.leeway:
                raise OidcFailed("id-token-not-fresh")
        return claims

    def validate_logout_token(self, token: str, *, now: float) -> dict[str, Any]:
        """OIDC Back-Channel Logout 1.0, section 2.6."""
        claims = self._decode(token, "logout-token")
        self._check_common(claims, "logout-token", now)
        exp = claims.get("exp")
        if exp is not None and (not _number(exp) or exp < now - self.settings.leeway):
            raise OidcFailed("logout-token-expired")
        if now - claims["iat"] > 600 + self.settings.leeway:
            raise OidcFailed("logout-token-too-old")
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
            raise OidcFailed("logout-token-events")
        if "nonce" in claims:
            raise OidcFailed("logout-token-nonce")
        sid, sub = claims.get("sid"), claims.get("sub")
        if not (isinstance(sid, str) and sid) and not (isinstance(sub, str) and sub):
            raise OidcFailed("logout-token-no-sid-or-sub")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise OidcFailed("logout-token-no-jti")
        return claims

    # -- userinfo and logout ------------------------------------------------------
    def userinfo(self, access_token: str, sub: str) -> dict[str, Any]:
        endpoint = self.metadata().userinfo_endpoint
        if endpoint is None:
            raise ProviderUnavailable("userinfo: the provider has no userinfo endpoint")
        try:
            resp = self._http.get(
                endpoint,
                headers={"Authorization": f"Bearer {access_token}"},
                timeout=self.settings.http_timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"userinfo: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise OidcFailed(f"userinfo-http-{resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            raise OidcFailed("userinfo-invalid") from None
        if not isinstance(data, dict) or data.get("sub") != sub:
            raise OidcFailed("userinfo-sub-mismatch")  # OIDC Core 5.3.2
        return data

    def end_session_url(
        self, *, id_token: str | None, post_logout_redirect_uri: str, state: str
    ) -> str | None:
        if not self.settings.end_session:
            return None
        try:
            endpoint = self.metadata().end_session_endpoint
        except ProviderUnavailable:
            return None  # local logout already happened; do not strand the person
        if endpoint is None:
            return None
        query = {
            "client_id": self.settings.client_id,
            "post_logout_redirect_uri": post_logout_redirect_uri,
            "state": state,
        }
        if id_token:
            query["id_token_hint"] = id_token
        sep = "&" if "?" in endpoint else "?"
        return endpoint + sep + urlencode(query)


# -- claims -> identity ----------------------------------------------------------


def has_group_overage(claims: Mapping[str, Any], groups_claim: str) -> bool:
    """Entra leaves ``groups`` out when someone is in too many groups, and says so
    with ``_claim_names``/``_claim_sources`` (ID tokens) or ``hasgroups``."""
    if isinstance(claims.get(groups_claim), list):
        return False
    names = claims.get("_claim_names")
    if isinstance(names, dict) and groups_claim in names:
        return True
    return claims.get("hasgroups") is True


def identity_from_claims(
    settings: OidcSettings,
    claims: Mapping[str, Any],
    *,
    group_ids: Sequence[str] | None = None,
    provider: str = "oidc",
) -> Identity:
    """The person the validated claims describe.  ``group_ids`` replaces the
    token's ``groups`` (overage resolved elsewhere)."""
    c = settings.claims
    subject = claims.get(c.subject)
    if not isinstance(subject, str) or not subject:
        raise OidcFailed(f"claim-missing:{c.subject}")
    raw_groups = group_ids if group_ids is not None else _strings(claims.get(c.groups))
    ids = tuple(dict.fromkeys(g.lower() for g in raw_groups))
    # readable names come from the configured table only: display names in a
    # directory can be changed by group owners, so they never decide anything
    names = [settings.group_names.get(g, g) for g in ids]
    names.extend(_strings(claims.get(c.roles)))
    amr = tuple(_strings(claims.get("amr")))
    acrs = tuple(_strings(claims.get("acrs")))
    auth_time = claims.get("auth_time")
    attributes = {"oidc_sub": str(claims.get("sub", ""))}
    tid = claims.get("tid")
    if isinstance(tid, str):
        attributes["tid"] = tid
    username = claims.get(c.username)
    if isinstance(username, str) and username:
        attributes["preferred_username"] = username  # also how deprovisioning finds them
    email = claims.get(c.email)
    if not isinstance(email, str) or not email:
        email = username if isinstance(username, str) and "@" in username else ""
    name = claims.get(c.name)
    return Identity(
        subject=subject,
        provider=provider,
        name=name if isinstance(name, str) else "",
        email=email,
        groups=tuple(dict.fromkeys(names)),
        group_ids=ids,
        auth_time=float(auth_time) if _number(auth_time) else 0.0,
        mfa="mfa" in amr,
        amr=amr,
        acrs=acrs,
        attributes=attributes,
    )


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and 0 < len(v) <= 256][:1000]


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _has_kid(keys: KeySet, kid: Any) -> bool:
    return any(k.kid == kid for k in keys.keys)


def _b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode()
