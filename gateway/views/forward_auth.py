"""Forward-auth: ``/.sso/auth`` (asked by nginx ``auth_request``, ingress-nginx
``auth-url`` or Traefik ForwardAuth on every request) and ``/.sso/start``."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, request

from gateway.core.errors import AmbiguousPath, StoreUnavailable, UnsafeRedirect
from gateway.core.model import Decision, Outcome
from gateway.core.redirects import safe_redirect
from gateway.sessions.manager import Session
from gateway.views.common import (
    client_ip,
    load_session,
    now_dt,
    original_request,
    public_scheme,
    request_host,
    services,
    untrusted_forward_headers,
)
from gateway.views.respond import bad_request, forward_auth_response, redirect_to, unavailable

bp = Blueprint("forward_auth", __name__)


@bp.route("/.sso/auth", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def auth() -> Response:
    svc = services()
    now = svc.clock()
    try:
        judged = original_request(svc)
    except AmbiguousPath as exc:
        svc.audit.emit(
            "denied", reason="ambiguous-request", detail=str(exc), client_ip=client_ip(svc)
        )
        return forward_auth_response(
            svc, Decision(Outcome.DENY, reasons=("ambiguous-request",)), None, None, now
        )
    if not judged.forwarded:
        spoofed = untrusted_forward_headers(svc)
        if spoofed:
            svc.audit.emit(
                "untrusted_forward_headers",
                client_ip=judged.info.client_ip,
                headers=spoofed,
                reason="original-request headers from an untrusted address were ignored",
            )
    try:
        loaded = load_session(svc, now)
        session = loaded if isinstance(loaded, Session) else None
        identity = session.identity if session is not None else None
        decision = svc.policy.current.evaluate(identity, judged.info, now_dt(svc, now))
        if session is not None and decision.allowed and not decision.passive:
            svc.sessions.touch(session, now)
    except StoreUnavailable as exc:
        svc.audit.emit("store_unavailable", where="/.sso/auth", detail=str(exc))
        return unavailable("session store unavailable")
    if decision.outcome is Outcome.DENY and identity is not None:
        svc.audit.emit(
            "denied",
            user=identity.subject,
            tier=decision.tier,
            route=decision.route,
            reasons=decision.reasons,
            host=judged.info.host,
            path=judged.info.path,
            method=judged.info.method,
            client_ip=judged.info.client_ip,
        )
    return forward_auth_response(
        svc, decision, identity, session.key if session is not None else None, now
    )


@bp.route("/.sso/start", methods=["GET"])
def start() -> Response:
    """Begin a login with the default provider, then come back to ``rd``."""
    svc = services()
    target = request.args.get("rd", "")
    if target:
        try:
            target = safe_redirect(
                target,
                request_host=request_host(),
                request_scheme=public_scheme(svc),
                allowed_domains=svc.settings.redirects.allowed_domains,
            )
        except UnsafeRedirect as exc:
            svc.audit.emit(
                "redirect_refused", target=target[:200], reason=str(exc), client_ip=client_ip(svc)
            )
            return bad_request("the redirect target is not allowed")
    query = {"rd": target} if target else {}
    # a fresh login is always possible from here; the login view decides whether
    # an existing session already suffices
    return redirect_to("/.sso/login" + ("?" + urlencode(query) if query else ""), code=302)
