"""OpenID Connect login: the browser side of :mod:`gateway.providers.oidc`.

* :func:`begin` (called by ``/.sso/start``) keeps ``state``, ``nonce``, the PKCE
  verifier, the checked ``rd`` and the redirect URI in the session store under a
  hash of ``state``, bound to this browser by a random handle in a short-lived
  cookie, then redirects to the provider.
* ``/.sso/oidc/callback`` takes that record out of the store exactly once (a
  replayed or forged ``state`` finds nothing), checks the browser handle, trades
  the code, validates the ID token, resolves group overage, and creates the
  session.
* ``/.sso/oidc/backchannel-logout`` (OIDC Back-Channel Logout 1.0) revokes the
  sessions a valid logout token names, at once, on every gateway process.
* :func:`end_session` continues a local logout at the provider (RP-initiated
  logout).

Every refusal is one ``login_failed`` (or ``backchannel_logout_refused``) audit
line with a reason code; the person sees a generic page.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.wrappers import Request

from gateway.core.errors import AuthenticationFailed, ProviderUnavailable, StoreUnavailable
from gateway.providers.groups import GroupQuery
from gateway.providers.oidc import OidcClient, OidcFailed, has_group_overage, identity_from_claims
from gateway.providers.oidc import new_secret as _secret
from gateway.services import Services
from gateway.sessions.manager import EXPIRED_GRACE, Session
from gateway.settings_oidc import OidcSettings
from gateway.views.common import (
    client_ip,
    public_scheme,
    request_host,
    services,
    set_session_cookie,
)
from gateway.views.establish import create_session, failed_page, unavailable_page
from gateway.views.respond import json_answer, page, redirect_to

bp = Blueprint("oidc", __name__)

CALLBACK_PATH = "/.sso/oidc/callback"
BACKCHANNEL_PATH = "/.sso/oidc/backchannel-logout"
_HANDLE = re.compile(r"[A-Za-z0-9_-]{43}\Z")
_JTI_TTL = 3600


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "replace")).hexdigest()


def _state_key(state: str) -> str:
    return "oidc:state:" + _digest(state)


def _sid_key(iss: str, sid: str) -> str:
    return "oidc:sid:" + _digest(iss, sid)


def _sub_key(iss: str, sub: str) -> str:
    return "oidc:sub:" + _digest(iss, sub)


def _handle_cookie(svc: Services) -> str:
    return svc.cookie_name + "_login"


def _client(svc: Services) -> OidcClient:
    if svc.oidc is None:
        raise LookupError("OIDC is not configured")
    return svc.oidc


def _own_url(svc: Services, req: Request, path: str) -> str:
    return f"{public_scheme(svc, req)}://{request_host(req)}{path}"


# -- begin ------------------------------------------------------------------------


def begin(svc: Services, req: Request, rd: str, *, fresh: bool) -> Response:
    """Redirect to the provider's authorization endpoint; ``rd`` is already checked."""
    oidc = _client(svc)
    settings = oidc.settings
    now = svc.clock()
    handle = req.cookies.get(_handle_cookie(svc), "")
    if not _HANDLE.match(handle):
        handle = _secret()
    state, nonce, verifier = _secret(), _secret(), _secret() + _secret()
    redirect_uri = settings.redirect_uri or _own_url(svc, req, CALLBACK_PATH)
    try:
        url = oidc.authorization_url(
            redirect_uri=redirect_uri,
            state=state,
            nonce=nonce,
            code_verifier=verifier,
            fresh=fresh,
            max_age=0 if fresh else None,
        )
        svc.store.put_value(
            _state_key(state),
            {
                "rd": rd,
                "nonce": nonce,
                "verifier": verifier,
                "browser": _digest(handle),
                "redirect_uri": redirect_uri,
                "started": now,
                "fresh": fresh,
            },
            settings.login_timeout,
        )
    except ProviderUnavailable as exc:
        return _provider_down(svc, req, exc)
    except StoreUnavailable as exc:
        return unavailable_page(svc, "/.sso/start", exc)
    resp = redirect_to(url, code=302)
    c = svc.settings.cookie
    resp.set_cookie(
        _handle_cookie(svc),
        handle,
        max_age=settings.login_timeout,
        path="/",
        domain=c.domain,
        secure=c.secure,
        httponly=True,
        samesite="Lax",  # must come back on the provider's top-level redirect
    )
    return resp


def _provider_down(svc: Services, req: Request, exc: Exception) -> Response:
    svc.audit.emit(
        "idp_unavailable", provider="oidc", detail=str(exc)[:300], client_ip=client_ip(svc, req)
    )
    return page(
        "error.html",
        503,
        site_name=svc.settings.site_name,
        title="Sign-in unavailable",
        message="The sign-in service cannot be reached right now. Try again in a moment.",
        retry="/.sso/login",
    )


# -- callback ---------------------------------------------------------------------


def _refuse(svc: Services, req: Request, reason: str, status: int = 401, **fields: Any) -> Response:
    svc.audit.emit(
        "login_failed", provider="oidc", reason=reason, client_ip=client_ip(svc, req), **fields
    )
    message = (
        "Sign-in could not be completed. Start again from the page you wanted to open."
        if status == 400
        else "Sign-in was refused."
    )
    return failed_page(svc, status, message)


@bp.route(CALLBACK_PATH, methods=["GET"])
def callback() -> Response:
    svc = services()
    if svc.oidc is None:
        return page(
            "error.html",
            404,
            site_name=svc.settings.site_name,
            title="Not found",
            message="OpenID Connect sign-in is not enabled here.",
        )
    oidc = svc.oidc
    args = request.args
    state = args.get("state", "")
    if not state or len(state) > 256:
        return _refuse(svc, request, "state-missing", 400)
    try:
        record = svc.store.pop_value(_state_key(state))
    except StoreUnavailable as exc:
        return unavailable_page(svc, CALLBACK_PATH, exc)
    if record is None:
        return _refuse(svc, request, "state-unknown-or-replayed", 400)
    handle = request.cookies.get(_handle_cookie(svc), "")
    if not hmac.compare_digest(_digest(handle), str(record.get("browser", ""))):
        return _refuse(svc, request, "state-other-browser", 400)
    if "error" in args:
        return _refuse(svc, request, f"idp-error:{args.get('error', '')[:60]}")
    code = args.get("code", "")
    if not code or len(code) > 2048:
        return _refuse(svc, request, "code-missing", 400)
    try:
        return _complete(svc, request, oidc, record, code)
    except OidcFailed as exc:
        return _refuse(svc, request, exc.reason)
    except AuthenticationFailed as exc:
        return _refuse(svc, request, exc.reason)
    except ProviderUnavailable as exc:
        return _provider_down(svc, request, exc)
    except StoreUnavailable as exc:
        return unavailable_page(svc, CALLBACK_PATH, exc)


def _complete(
    svc: Services, req: Request, oidc: OidcClient, record: dict[str, Any], code: str
) -> Response:
    settings = oidc.settings
    now = svc.clock()
    tokens = oidc.exchange_code(
        code, redirect_uri=str(record["redirect_uri"]), code_verifier=str(record["verifier"])
    )
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str):
        raise OidcFailed("no-id-token")
    claims = oidc.validate_id_token(
        id_token,
        nonce=str(record["nonce"]),
        now=now,
        fresh_since=float(record["started"]) if record.get("fresh") else None,
    )
    iss_param = req.args.get("iss")
    if iss_param is not None and iss_param != claims["iss"]:
        raise OidcFailed("issuer-parameter-mismatch")  # RFC 9207 mix-up defence
    if not svc.store.add_once(
        "oidc:nonce:" + _digest(str(record["nonce"])), settings.login_timeout
    ):
        raise OidcFailed("nonce-replayed")
    merged = dict(claims)
    access_token = tokens.get("access_token")
    if settings.userinfo:
        if not isinstance(access_token, str):
            raise OidcFailed("no-access-token")
        info = oidc.userinfo(access_token, str(claims["sub"]))
        merged = {**info, **claims}  # the signed token wins on every claim it has
    group_ids: tuple[str, ...] | None = None
    resolver_name = None
    if has_group_overage(merged, settings.claims.groups):
        group_ids, resolver_name = _resolve_overage(svc, settings, merged)
    identity = identity_from_claims(settings, merged, group_ids=group_ids)
    if identity.auth_time == 0.0 and record.get("fresh"):
        # no auth_time, but this was a step-up login (prompt=login, max_age=0) and
        # validate_id_token saw the token issued after it began: signed in now.
        # Any other login without auth_time may be a provider session hours old
        # answered silently: its time stays unknown (0), so a max_auth_age route
        # asks for a step-up instead of taking it for a fresh sign-in
        identity = replace(identity, auth_time=now)
    iss, sub, sid = str(claims["iss"]), str(claims["sub"]), claims.get("sid")
    login = {"iss": iss, "sub": sub, "id_token": id_token}
    if isinstance(sid, str) and sid:
        login["sid"] = sid
    extra: dict[str, Any] = {"tenant": claims.get("tid"), "amr": list(identity.amr)}
    if resolver_name:
        extra["groups_from"] = resolver_name
    cookie, session = create_session(svc, req, identity, now, login=login, **extra)
    ttl = session.absolute + EXPIRED_GRACE
    if "sid" in login:
        _index_add(svc, _sid_key(iss, login["sid"]), session.key, identity.subject, ttl)
    _index_add(svc, _sub_key(iss, sub), session.key, identity.subject, ttl)
    rd = str(record.get("rd") or "")
    resp = redirect_to(rd or svc.settings.redirects.default, code=303)
    set_session_cookie(svc, resp, cookie, session.absolute)
    return resp


def _resolve_overage(
    svc: Services, settings: OidcSettings, claims: dict[str, Any]
) -> tuple[tuple[str, ...], str]:
    """The person's groups from the configured resolver (Graph or the
    directory), for a token that said it had too many to carry."""
    how = settings.group_overage
    if how == "refuse":
        raise OidcFailed("group-overage-refused")
    resolver = svc.group_resolvers.get(how)
    if resolver is None:
        raise OidcFailed(f"group-overage-no-{how}-resolver")
    who = GroupQuery(
        object_id=_str(claims.get(settings.claims.subject)) or _str(claims.get("oid")),
        username=_str(claims.get(settings.claims.username)),
        email=_str(claims.get(settings.claims.email)),
    )
    return resolver.group_ids(who), resolver.name


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _index_add(svc: Services, key: str, session_key: str, user: str, ttl: float) -> None:
    """Remember which sessions a provider session (sid) or subject (sub) has, for
    back-channel logout.  Read-modify-write; a lost race loses one index entry,
    whose session then ends by its own limits."""
    entry = svc.store.pop_value(key) or {}
    keys = [k for k in entry.get("keys", []) if isinstance(k, str)][-19:]
    keys.append(session_key)
    svc.store.put_value(key, {"keys": keys, "user": user}, ttl)


# -- back-channel logout -------------------------------------------------------------


def _no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.route(BACKCHANNEL_PATH, methods=["POST"])
def backchannel_logout() -> Response:
    svc = services()
    ip = client_ip(svc, request)
    if svc.oidc is None or not svc.oidc.settings.backchannel_logout:
        return _no_store(json_answer(404, {"error": "not_found"}))
    oidc = svc.oidc
    token = request.form.get("logout_token", "")

    def refuse(reason: str) -> Response:
        svc.audit.emit("backchannel_logout_refused", provider="oidc", reason=reason, client_ip=ip)
        return _no_store(json_answer(400, {"error": "invalid_request"}))

    if not token:
        return refuse("logout-token-missing")
    try:
        claims = oidc.validate_logout_token(token, now=svc.clock())
    except OidcFailed as exc:
        return refuse(exc.reason)
    except ProviderUnavailable as exc:
        svc.audit.emit("idp_unavailable", provider="oidc", detail=str(exc)[:300], client_ip=ip)
        return _no_store(json_answer(503, {"error": "temporarily_unavailable"}))
    iss, sid, sub = str(claims["iss"]), claims.get("sid"), claims.get("sub")
    try:
        if not svc.store.add_once("oidc:jti:" + _digest(iss, str(claims["jti"])), _JTI_TTL):
            return refuse("logout-token-replayed")
        revoked = _revoke(svc, iss, sid, sub)
    except StoreUnavailable as exc:
        svc.audit.emit("store_unavailable", where=BACKCHANNEL_PATH, detail=str(exc))
        return _no_store(json_answer(503, {"error": "temporarily_unavailable"}))
    svc.audit.emit(
        "backchannel_logout",
        provider="oidc",
        user=revoked[0] if revoked[0] else None,
        sessions=[k[:12] for k in revoked[1]],
        by="sid" if isinstance(sid, str) and sid else "sub",
        client_ip=ip,
    )
    return _no_store(Response(status=200))


def _revoke(svc: Services, iss: str, sid: Any, sub: Any) -> tuple[str, list[str]]:
    """Delete the sessions the logout token names: those of the provider session
    ``sid`` when given (and of ``sub`` too, when both match), else every session
    of ``sub`` from this issuer.  Returns (user, session keys removed)."""
    if isinstance(sid, str) and sid:
        entry = svc.store.pop_value(_sid_key(iss, sid))
    else:
        entry = svc.store.pop_value(_sub_key(iss, str(sub)))
    if entry is None:
        return "", []
    removed: list[str] = []
    for key in entry.get("keys", []):
        if not isinstance(key, str):
            continue
        session = svc.sessions.load(key, svc.clock())
        if not isinstance(session, Session):
            continue
        facts = session.login
        if facts.get("iss") != iss or (isinstance(sub, str) and facts.get("sub") != sub):
            continue  # the index never reaches another issuer's or person's session
        if svc.sessions.delete(key):
            removed.append(key)
            if svc.signer is not None:
                svc.signer.forget(key)
    return str(entry.get("user", "")), removed


# -- RP-initiated logout ---------------------------------------------------------------


def end_session(svc: Services, req: Request, session: Session) -> Response | None:
    """After the local logout: a redirect that ends the provider's session too."""
    if svc.oidc is None or session.identity.provider != "oidc":
        return None
    settings = svc.oidc.settings
    post_logout = settings.post_logout_redirect_uri or _own_url(svc, req, "/.sso/logout")
    url = svc.oidc.end_session_url(
        id_token=session.login.get("id_token"),
        post_logout_redirect_uri=post_logout,
        state=_secret(),
    )
    if url is None:
        return None
    svc.audit.emit("idp_logout", provider="oidc", user=session.identity.subject)
    return redirect_to(url, code=303)
