"""``/.sso/login`` (the sign-in form of the password providers: the local users
file or Active Directory over LDAP) and ``/.sso/logout``."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, request

from gateway.core.errors import (
    AuthenticationFailed,
    ProviderUnavailable,
    StoreUnavailable,
    Throttled,
)
from gateway.services import Services
from gateway.sessions.manager import Session
from gateway.views import csrf
from gateway.views.common import (
    checked_redirect,
    clear_session_cookie,
    client_ip,
    expire_upstream_cookies,
    load_session,
    services,
    set_session_cookie,
)
from gateway.views.establish import create_session, unavailable_page
from gateway.views.idp_logout import idp_logout
from gateway.views.respond import page, redirect_to
from gateway.views.start import needs_fresh_login

bp = Blueprint("login", __name__)

GENERIC_FAILURE = "Sign-in failed. Check your user name and password."


def _form(
    svc: Services, *, rd: str, status: int = 200, error: str | None = None, username: str = ""
) -> Response:
    return csrf.form_page(
        svc,
        "login.html",
        status,
        site_name=svc.settings.site_name,
        rd=rd,
        error=error,
        username=username,
        password_form=svc.password_login is not None,
        sso_links=_sso_links(svc, rd),
    )


def _sso_links(svc: Services, rd: str) -> list[tuple[str, str]]:
    """(label, URL) of every single sign-on provider a person may choose."""
    links = []
    if svc.oidc is not None:
        query = {"provider": "oidc", **({"rd": rd} if rd else {})}
        links.append((svc.oidc.settings.display_name, "/.sso/start?" + urlencode(query)))
    if svc.saml is not None:
        query = {"provider": "saml", **({"rd": rd} if rd else {})}
        links.append(("single sign-on (SAML)", "/.sso/start?" + urlencode(query)))
    return links


@bp.route("/.sso/login", methods=["GET"])
def login_form() -> Response:
    svc = services()
    now = svc.clock()
    rd = checked_redirect(svc, request, request.args.get("rd", ""))
    if rd is None:
        return page(
            "error.html",
            400,
            site_name=svc.settings.site_name,
            title="Redirect refused",
            message="The page you came from asked to return to an address this "
            "gateway does not serve.",
        )
    try:
        loaded = load_session(svc, request, now)
    except StoreUnavailable as exc:
        return unavailable_page(svc, "/.sso/login", exc)
    forced = request.args.get("prompt") == "login"  # sign in again / as someone else
    if (
        isinstance(loaded, Session)
        and not forced
        and not needs_fresh_login(svc, request, loaded, rd, now)
    ):
        return redirect_to(rd or svc.settings.redirects.default, code=303)
    return _form(svc, rd=rd)


@bp.route("/.sso/login", methods=["POST"])
def login_submit() -> Response:
    svc = services()
    now = svc.clock()
    ip = client_ip(svc, request)
    form_rd = request.form.get("rd", "")
    rd = checked_redirect(svc, request, form_rd)
    if rd is None:
        return page(
            "error.html",
            400,
            site_name=svc.settings.site_name,
            title="Redirect refused",
            message="The sign-in form asked to return to an address this gateway does not serve.",
        )
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    if not csrf.valid(svc, request.form.get("csrf_token")):
        svc.audit.emit("login_failed", user=username[:64], reason="csrf", client_ip=ip)
        return _form(
            svc,
            rd=rd,
            status=400,
            username=username,
            error="Your sign-in form expired. Please try again.",
        )
    provider = svc.password_login
    if provider is None:
        return _form(svc, rd=rd, status=404, error="Password sign-in is not enabled here.")
    try:
        svc.throttle.begin(username, ip)
        provider.reload()  # local users: picks up `sso-gateway users ...` changes (one stat)
        try:
            identity = provider.authenticate(username, password, now=now)
        except AuthenticationFailed:
            svc.throttle.failed(username, ip)
            raise
        svc.throttle.succeeded(username, ip)
        cookie, session = create_session(svc, request, identity, now)
    except Throttled as exc:
        svc.audit.emit(
            "login_failed",
            user=username[:64],
            provider=provider.name,
            reason=exc.reason,
            client_ip=ip,
        )
        return _form(
            svc,
            rd=rd,
            status=429,
            username=username,
            error="Too many failed sign-ins. Wait a few minutes and try again.",
        )
    except AuthenticationFailed as exc:
        svc.audit.emit(
            "login_failed",
            user=username[:64],
            provider=provider.name,
            reason=exc.reason,
            client_ip=ip,
        )
        return _form(svc, rd=rd, status=401, username=username, error=GENERIC_FAILURE)
    except ProviderUnavailable as exc:
        svc.audit.emit(
            "provider_unavailable",
            user=username[:64],
            provider=provider.name,
            detail=str(exc)[:500],
            client_ip=ip,
        )
        return _form(
            svc,
            rd=rd,
            status=503,
            username=username,
            error="Sign-in is unavailable right now. Try again in a moment.",
        )
    except StoreUnavailable as exc:
        return unavailable_page(svc, "/.sso/login", exc)
    resp: Response = redirect_to(rd or svc.settings.redirects.default, code=303)
    set_session_cookie(svc, resp, cookie, session.absolute)
    return resp


@bp.route("/.sso/logout", methods=["GET"])
def logout_form() -> Response:
    """A page with one button: sign-out is a POST with a CSRF token, so another
    site cannot sign people out by sending their browser here."""
    svc = services()
    now = svc.clock()
    rd = checked_redirect(svc, request, request.args.get("rd", "")) or ""
    try:
        loaded = load_session(svc, request, now)
    except StoreUnavailable:
        loaded = None  # the POST reports the outage
    if not isinstance(loaded, Session):
        resp = (
            redirect_to(rd, code=303)
            if rd
            else page("logged_out.html", 200, site_name=svc.settings.site_name)
        )
        clear_session_cookie(svc, resp)
        return resp
    return csrf.form_page(
        svc,
        "logout.html",
        200,
        site_name=svc.settings.site_name,
        user=loaded.identity.name or loaded.identity.subject,
        rd=rd,
    )


@bp.route("/.sso/logout", methods=["POST"])
def logout() -> Response:
    svc = services()
    now = svc.clock()
    rd = checked_redirect(svc, request, request.form.get("rd", ""))
    if not csrf.valid(svc, request.form.get("csrf_token")):
        svc.audit.emit("logout_refused", reason="csrf", client_ip=client_ip(svc, request))
        return page(
            "error.html",
            400,
            site_name=svc.settings.site_name,
            title="Sign-out not confirmed",
            message="The sign-out form expired or did not come from this gateway. "
            "Open /.sso/logout and press the button again.",
        )
    onward: Response | None = None
    try:
        loaded = load_session(svc, request, now)
        if isinstance(loaded, Session):
            svc.sessions.delete(loaded.key)
            if svc.streams is not None:  # this process at once; the others within seconds
                svc.streams.end_session(loaded.key, "logout")
            onward = idp_logout(svc, request, loaded, rd or "")
            if svc.signer is not None:
                svc.signer.forget(loaded.key)
            svc.audit.emit(
                "logout",
                user=loaded.identity.subject,
                session=loaded.short_id,
                client_ip=client_ip(svc, request),
            )
    except StoreUnavailable as exc:
        svc.audit.emit("store_unavailable", where="/.sso/logout", detail=str(exc))
        resp = page(
            "error.html",
            503,
            site_name=svc.settings.site_name,
            title="Temporarily unavailable",
            message="Sign-out could not reach the session store. Your browser's "
            "session cookie has been removed; try again in a moment.",
        )
        clear_session_cookie(svc, resp)
        return resp
    if onward is not None:
        resp = onward
    elif rd:
        resp = redirect_to(rd, code=303)
    else:
        resp = page("logged_out.html", 200, site_name=svc.settings.site_name)
    clear_session_cookie(svc, resp)
    expire_upstream_cookies(svc, resp)
    return resp
