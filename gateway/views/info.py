"""``/.sso/userinfo``, ``/.sso/session``, ``/.sso/jwks.json``, ``/.sso/metrics``,
``/.sso/healthz`` and ``/.sso/readyz``."""

from __future__ import annotations

import hmac
import logging
from urllib.parse import urlencode

from flask import Blueprint, Response, request

from gateway.core.errors import StoreUnavailable
from gateway.core.network import ip_in
from gateway.metrics import CONTENT_TYPE
from gateway.sessions.manager import Session
from gateway.views import csrf
from gateway.views.common import load_session, services, wants_json
from gateway.views.respond import json_answer, redirect_to, unavailable

bp = Blueprint("info", __name__)
log = logging.getLogger(__name__)


@bp.route("/.sso/userinfo", methods=["GET"])
def userinfo() -> Response:
    svc = services()
    now = svc.clock()
    try:
        loaded = load_session(svc, request, now)
        if isinstance(loaded, Session):
            svc.sessions.touch(loaded, now)  # opening this page is activity
    except StoreUnavailable as exc:
        svc.audit.emit("store_unavailable", where="/.sso/userinfo", detail=str(exc))
        return unavailable("session store unavailable")
    if not isinstance(loaded, Session):
        if wants_json(request):
            return json_answer(401, {"error": "login_required"})
        return redirect_to("/.sso/login?" + urlencode({"rd": "/.sso/userinfo"}), code=302)
    ident = loaded.identity
    body: dict[str, object] = {
        "user": ident.subject,
        "name": ident.name,
        "email": ident.email,
        "provider": ident.provider,
        "tier": loaded.tier,
        "groups": list(ident.groups),
        "mfa": ident.mfa,
        "auth_time": int(ident.auth_time) or None,  # null: the provider did not say
        "idle_remaining": int(loaded.idle_remaining(now)),
        "absolute_remaining": int(loaded.absolute_remaining(now)),
        "attributes": dict(ident.attributes),
    }
    if wants_json(request):
        return json_answer(200, body)
    return csrf.form_page(  # the page's sign-out button is a form
        svc,
        "userinfo.html",
        200,
        site_name=svc.settings.site_name,
        info=body,
        warn_before=svc.settings.session.warn_before,
    )


@bp.route("/.sso/session", methods=["GET"])
def session_state() -> Response:
    """Remaining idle and absolute seconds, without extending either."""
    svc = services()
    now = svc.clock()
    try:
        loaded = load_session(svc, request, now)
    except StoreUnavailable as exc:
        svc.audit.emit("store_unavailable", where="/.sso/session", detail=str(exc))
        return unavailable("session store unavailable")
    if not isinstance(loaded, Session):
        return json_answer(401, {"authenticated": False})
    remaining = int(loaded.remaining(now))
    return json_answer(
        200,
        {
            "authenticated": True,
            "user": loaded.identity.subject,
            "idle_remaining": int(loaded.idle_remaining(now)),
            "absolute_remaining": int(loaded.absolute_remaining(now)),
            "expires_in": remaining,
            "warn": remaining <= svc.settings.session.warn_before,
        },
    )


@bp.route("/.sso/jwks.json", methods=["GET"])
def jwks() -> Response:
    svc = services()
    keys = svc.signer.jwks() if svc.signer is not None else {"keys": []}
    resp = json_answer(200, keys)
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_ORIGINAL_URL", "HTTP_X_REAL_IP")


@bp.route("/.sso/metrics", methods=["GET"])
def metrics() -> Response:
    """Prometheus exposition, for scrapers only: direct requests (no proxy
    headers: through an ingress it is refused) from ``metrics.allowed_networks``,
    with the bearer token when one is configured."""
    svc = services()
    if svc.metrics is None:
        return json_answer(404, {"error": "not_found"})
    settings = svc.settings.metrics
    addr = request.remote_addr or ""
    proxied = any(h in request.environ for h in _PROXY_HEADERS)
    allowed = not proxied and ip_in(addr, svc.metrics_networks)
    if allowed and settings.token is not None:
        given = request.headers.get("Authorization", "")
        expected = "Bearer " + settings.token.get_secret_value()
        allowed = hmac.compare_digest(given.encode(), expected.encode())
    if not allowed:
        if svc.audit_limiter.allow(("metrics", addr), svc.clock()):
            svc.audit.emit(
                "metrics_refused",
                client_ip=addr,
                reason="proxied" if proxied else "not allowed",
                note="reported at most once a minute per address",
            )
        return json_answer(403, {"error": "forbidden"})
    resp = Response(svc.metrics.render(), status=200, mimetype=None)
    resp.headers["Content-Type"] = CONTENT_TYPE
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.route("/.sso/healthz", methods=["GET"])
def healthz() -> Response:
    return json_answer(200, {"status": "ok"})


@bp.route("/.sso/readyz", methods=["GET"])
def readyz() -> Response:
    svc = services()
    checks: dict[str, object] = {}
    ok = True
    try:
        svc.store.ping()
        checks["store"] = "ok"
    except StoreUnavailable as exc:
        # the detail (a Redis address, a data folder) goes to the log, not to
        # whoever may ask this unauthenticated endpoint on any host
        log.warning("readiness: the session store is unavailable: %s", exc)
        checks["store"] = "unavailable"
        ok = False
    policy_error = svc.policy.last_error
    checks["policy"] = "ok" if policy_error is None else "last reload failed; previous in force"
    return json_answer(200 if ok else 503, {"status": "ok" if ok else "unavailable", **checks})
