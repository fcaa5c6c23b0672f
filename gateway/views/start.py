"""``/.sso/start?rd=URL[&provider=NAME][&prompt=login]``: begin a login.

nginx (or the proxy) sends a browser here after ``/.sso/auth`` answered 401.
With no session, the login starts with the default provider (or the one named,
when it is configured).  With a session that the policy still sends back to log
in for ``rd`` (a step-up route: ``max_auth_age`` or ``mfa``), the login is
started *fresh*: the identity provider is asked to authenticate the person again
(OIDC ``prompt=login``, SAML ``ForceAuthn``) instead of reusing its own session.
With a session that suffices, the browser goes straight back to ``rd``.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, request
from werkzeug.wrappers import Request

from gateway.core.errors import AmbiguousPath, StoreUnavailable, Throttled
from gateway.core.model import Outcome, RequestInfo
from gateway.core.paths import normalise_path
from gateway.services import Services
from gateway.sessions.manager import Session
from gateway.views.common import (
    checked_redirect,
    client_ip,
    load_session,
    now_dt,
    request_host,
    services,
)
from gateway.views.establish import unavailable_page
from gateway.views.respond import bad_request, page, redirect_to
from gateway.views.saml import begin as saml_begin

bp = Blueprint("start", __name__)


def configured_providers(svc: Services) -> tuple[str, ...]:
    """The providers a person can log in with here, the default first."""
    names: list[str] = [svc.settings.providers.default]
    if svc.local_users is not None and "local" not in names:
        names.append("local")
    if svc.oidc is not None and "oidc" not in names:
        names.append("oidc")
    if svc.saml is not None and "saml" not in names:
        names.append("saml")
    if svc.password_login is not None and svc.password_login.name not in names:
        names.append(svc.password_login.name)
    return tuple(names)


def needs_fresh_login(svc: Services, req: Request, session: Session, rd: str, now: float) -> bool:
    """Would ``session`` be sent back to log in for ``rd``?  (Then a redirect
    back to ``rd`` would loop: the login must be done again.)"""
    parts = urlsplit(rd or svc.settings.redirects.default)
    host = (parts.netloc or request_host(req)).lower()
    try:
        path = normalise_path(parts.path or "/")
    except AmbiguousPath:
        return False
    info = RequestInfo(host=host, path=path, method="GET", client_ip=client_ip(svc, req))
    decision = svc.policy.current.evaluate(session.identity, info, now_dt(svc, now))
    return decision.outcome is Outcome.LOGIN


def begin_login(svc: Services, req: Request, provider: str, rd: str, *, fresh: bool) -> Response:
    """Send the browser to ``provider``'s login; ``rd`` is already checked."""
    if provider == "oidc":
        from gateway.views import oidc

        return oidc.begin(svc, req, rd, fresh=fresh)
    if provider == "saml":
        return saml_begin(svc, req, rd, fresh)
    query = {"rd": rd} if rd else {}
    if fresh:
        query["prompt"] = "login"
    # local users and LDAP: the form at /.sso/login
    return redirect_to("/.sso/login" + ("?" + urlencode(query) if query else ""), code=302)


@bp.route("/.sso/start", methods=["GET"])
def start() -> Response:
    svc = services()
    now = svc.clock()
    target = checked_redirect(svc, request, request.args.get("rd", ""))
    if target is None:
        return bad_request("the redirect target is not allowed")
    provider = request.args.get("provider") or svc.settings.providers.default
    if provider not in configured_providers(svc):
        return bad_request("unknown or unconfigured login provider")
    fresh = request.args.get("prompt") == "login"
    try:
        loaded = load_session(svc, request, now)
    except StoreUnavailable as exc:
        return unavailable_page(svc, "/.sso/start", exc)
    if isinstance(loaded, Session) and not fresh:
        if not needs_fresh_login(svc, request, loaded, target, now):
            return redirect_to(target or svc.settings.redirects.default, code=303)
        fresh = True
        svc.audit.emit(
            "step_up",
            user=loaded.identity.subject,
            session=loaded.short_id,
            target=target[:200],
            client_ip=client_ip(svc, request),
        )
    if provider != "local":
        try:
            svc.throttle.started(client_ip(svc, request))
        except Throttled as exc:
            svc.audit.emit(
                "login_failed",
                provider=provider,
                reason=exc.reason,
                client_ip=client_ip(svc, request),
            )
            return page(
                "error.html",
                429,
                site_name=svc.settings.site_name,
                title="Too many sign-in attempts",
                message="Too many sign-ins were started from your address. Wait a minute.",
            )
        except StoreUnavailable as exc:
            return unavailable_page(svc, "/.sso/start", exc)
    return begin_login(svc, request, provider, target, fresh=fresh)
