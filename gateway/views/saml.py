"""SAML 2.0 endpoints: ``/.sso/saml/metadata``, ``/.sso/saml/acs``, ``/.sso/saml/slo``,
and :func:`begin` (called by ``/.sso/start``).

Login state never lives only in a cookie.  :func:`begin` stores the AuthnRequest
ID, the (checked) ``rd`` and whether the login must be fresh under a random
handle in the session store; the browser carries the handle twice: as the
RelayState and in a short-lived cookie, so the state is bound to the browser
that started the login and can be used once.  Assertion IDs go into a replay
cache in the store until their ``NotOnOrAfter`` has passed, and the IDs of the
IdP's LogoutRequests until they would be too old to be accepted.

``/.sso/saml/slo`` reads the HTTP-Redirect binding from the raw query string
(:func:`gateway.providers.saml.read_redirect_query`), so the parts the signature
covers are the parts acted on; a query that werkzeug decodes differently is
refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.wrappers import Request

from gateway.core.errors import AuthenticationFailed, StoreUnavailable
from gateway.providers.saml import (
    REDIRECT_PARAMETERS,
    RedirectMessage,
    SamlServiceProvider,
    SamlUnavailable,
    read_redirect_query,
)
from gateway.services import Services
from gateway.sessions.manager import EXPIRED_GRACE, Session
from gateway.views.common import (
    checked_redirect,
    clear_session_cookie,
    client_ip,
    cookie_value,
    services,
)
from gateway.views.establish import failed_page, finish_login, unavailable_page
from gateway.views.respond import page, redirect_to

bp = Blueprint("saml", __name__)

STATE_COOKIE_SUFFIX = "_saml"
_LOGIN = "saml:login:"
_LOGOUT = "saml:logout:"
_SEEN = "saml:seen:"
_SLO_SEEN = "saml:slo-seen:"
_NAMEID = "saml:nameid:"
ACS_MAX_BYTES = 1024 * 1024
FAILED = "Sign-in through your organisation's identity provider failed. Try again."


def _sp(svc: Services) -> SamlServiceProvider:
    if svc.saml is None:
        raise SamlUnavailable("SAML is not configured")
    return svc.saml


def _state_cookie(svc: Services) -> str:
    return svc.cookie_name + STATE_COOKIE_SUFFIX


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


def _set_state_cookie(svc: Services, resp: Response, handle: str, max_age: int) -> None:
    c = svc.settings.cookie
    # the ACS is reached by a cross-site POST from the IdP: a Lax cookie would
    # not come along, so a secure deployment sends it with SameSite=None.  Path
    # "/" because a "__Host-" cookie (the session cookie's prefix) must have it.
    resp.set_cookie(
        _state_cookie(svc),
        handle,
        max_age=max_age,
        path="/",
        domain=c.domain,
        secure=c.secure,
        httponly=True,
        samesite="None" if c.secure else "Lax",
    )


def _clear_state_cookie(svc: Services, resp: Response) -> None:
    c = svc.settings.cookie
    resp.delete_cookie(
        _state_cookie(svc),
        path="/",
        domain=c.domain,
        secure=c.secure,
        httponly=True,
        samesite="None" if c.secure else "Lax",
    )


def _unavailable(svc: Services, where: str, exc: Exception) -> Response:
    svc.audit.emit("saml_unavailable", where=where, detail=str(exc)[:200])
    return page(
        "error.html",
        503,
        site_name=svc.settings.site_name,
        title="Temporarily unavailable",
        message="Sign-in through your organisation is unavailable right now. "
        "Try again in a moment.",
    )


def begin(svc: Services, req: Request, rd: str, fresh: bool) -> Response:
    """Send the browser to the IdP with a signed AuthnRequest (``ForceAuthn``
    when ``fresh``).  ``rd`` is already checked."""
    now = svc.clock()
    try:
        sp = _sp(svc)
        handle = secrets.token_urlsafe(24)
        request_id, url = sp.login_redirect(handle, force_authn=fresh)
        lifetime = sp.settings.request_lifetime
        svc.store.put_value(
            _LOGIN + _digest(handle),
            {"id": request_id, "rd": rd, "fresh": fresh, "issued": now},
            lifetime,
        )
    except SamlUnavailable as exc:
        return _unavailable(svc, "/.sso/start", exc)
    except StoreUnavailable as exc:
        return unavailable_page(svc, "/.sso/start", exc)
    resp = redirect_to(url, code=302)
    _set_state_cookie(svc, resp, handle, lifetime)
    return resp


@bp.route("/.sso/saml/metadata", methods=["GET"])
def metadata() -> Response:
    svc = services()
    if svc.saml is None:
        return Response("SAML is not configured", 404, mimetype="text/plain")
    resp = Response(svc.saml.sp_metadata(), 200, mimetype="application/samlmetadata+xml")
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


def _refuse(svc: Services, reason: str, *, user: str = "", status: int = 401) -> Response:
    svc.audit.emit(
        "login_failed",
        provider="saml",
        user=user[:64] or None,
        reason=reason[:300],
        client_ip=client_ip(svc, request),
    )
    resp = failed_page(svc, status, FAILED)
    _clear_state_cookie(svc, resp)
    return resp


@bp.route("/.sso/saml/acs", methods=["POST"])
def acs() -> Response:
    svc = services()
    now = svc.clock()
    if svc.saml is None:
        return Response("SAML is not configured", 404, mimetype="text/plain")
    # a person in many AD groups makes a large response: allow more than the
    # app-wide 64 KiB here (and only here)
    request.max_content_length = ACS_MAX_BYTES
    saml_response = request.form.get("SAMLResponse", "")
    relay_state = request.form.get("RelayState", "")
    if not saml_response:
        return _refuse(svc, "no SAMLResponse", status=400)
    handle = cookie_value(request.environ.get("HTTP_COOKIE"), _state_cookie(svc))
    state: dict[str, Any] | None = None
    try:
        if handle:
            # used up whatever happens next: one response per started login
            state = svc.store.pop_value(_LOGIN + _digest(handle))
    except StoreUnavailable as exc:
        return unavailable_page(svc, "/.sso/saml/acs", exc)
    if state is not None and not hmac.compare_digest(
        relay_state.encode("utf-8", "replace"), (handle or "").encode()
    ):
        return _refuse(svc, "RelayState does not belong to this browser's login")
    request_id = str(state["id"]) if state is not None else None
    try:
        login = svc.saml.validate_response(saml_response, request_id=request_id, now=now)
    except AuthenticationFailed as exc:
        return _refuse(svc, exc.reason)
    except SamlUnavailable as exc:
        return _unavailable(svc, "/.sso/saml/acs", exc)
    identity = login.identity
    skew = svc.saml.settings.clock_skew
    if state is not None and state.get("fresh"):
        if login.authn_instant < float(state.get("issued", now)) - skew:
            return _refuse(
                svc, "step-up login answered with an earlier authentication", user=identity.subject
            )
    try:
        ttl = max(login.not_on_or_after - now + skew, 60.0)
        if not svc.store.add_once(_SEEN + _digest(login.issuer + "\n" + login.assertion_id), ttl):
            return _refuse(svc, "replayed assertion", user=identity.subject)
    except StoreUnavailable as exc:
        return unavailable_page(svc, "/.sso/saml/acs", exc)
    if state is not None:
        rd = checked_redirect(svc, request, str(state.get("rd", ""))) or ""
    else:
        # an allowed unsolicited response: RelayState is a target, same rules as rd
        rd = checked_redirect(svc, request, relay_state) or ""
    facts = login.logout_facts()
    try:
        svc.store.put_value(
            _NAMEID + _digest(login.name_id),
            {"subject": identity.subject},
            svc.settings.session.absolute_lifetime + EXPIRED_GRACE,
        )
    except StoreUnavailable as exc:
        return unavailable_page(svc, "/.sso/saml/acs", exc)
    resp = finish_login(
        svc,
        request,
        identity,
        rd,
        now,
        login={"saml": facts},
        where="/.sso/saml/acs",
        mfa=identity.mfa,
        unsolicited=state is None or None,
    )
    _clear_state_cookie(svc, resp)
    return resp


def idp_logout(svc: Services, session: Session, rd: str) -> Response | None:
    """After the local logout: a signed LogoutRequest to the IdP (SP-initiated
    Single Logout), or None when there is nothing to end there."""
    facts = session.login.get("saml")
    if svc.saml is None or not isinstance(facts, dict) or not facts.get("name_id"):
        return None
    handle = secrets.token_urlsafe(24)
    try:
        made = svc.saml.logout_redirect(facts, handle)
    except SamlUnavailable as exc:
        svc.audit.emit("saml_unavailable", where="/.sso/logout", detail=str(exc)[:200])
        return None
    if made is None:
        return None
    request_id, url = made
    svc.store.put_value(
        _LOGOUT + _digest(handle),
        {"id": request_id, "rd": rd},
        svc.saml.settings.request_lifetime,
    )
    return redirect_to(url, code=303)


@bp.route("/.sso/saml/slo", methods=["GET"])
def slo() -> Response:
    svc = services()
    if svc.saml is None:
        return Response("SAML is not configured", 404, mimetype="text/plain")
    try:
        message = read_redirect_query(request.query_string.decode("latin-1"))
    except AuthenticationFailed as exc:
        return _slo_refused(svc, exc.reason, "slo_request")
    # what the rest of the app would read must be what was read here
    for name in REDIRECT_PARAMETERS:
        read = [message.args[name]] if name in message.args else []
        if request.args.getlist(name) != read:
            return _slo_refused(svc, f"{name} reads differently when decoded", "slo_request")
    if message.kind == "SAMLResponse":
        return _logout_answered(svc, message)
    return _logout_requested(svc, message)


def _slo_refused(svc: Services, reason: str, kind: str) -> Response:
    svc.audit.emit(
        "saml_logout_refused", kind=kind, reason=reason[:300], client_ip=client_ip(svc, request)
    )
    return page(
        "error.html",
        400,
        site_name=svc.settings.site_name,
        title="Sign-out not completed",
        message="The sign-out message could not be verified.",
    )


def _logout_answered(svc: Services, message: RedirectMessage) -> Response:
    """The IdP's LogoutResponse to the LogoutRequest we sent at /.sso/logout."""
    assert svc.saml is not None
    relay = message.args.get("RelayState", "")
    try:
        state = svc.store.pop_value(_LOGOUT + _digest(relay)) if relay else None
    except StoreUnavailable as exc:
        return unavailable_page(svc, "/.sso/saml/slo", exc)
    if state is None:
        return _slo_refused(svc, "LogoutResponse for no logout we started", "logout_response")
    try:
        svc.saml.validate_logout_response(message, str(state["id"]))
    except AuthenticationFailed as exc:
        return _slo_refused(svc, exc.reason, "logout_response")
    except SamlUnavailable as exc:
        return _unavailable(svc, "/.sso/saml/slo", exc)
    svc.audit.emit("saml_logout_completed", client_ip=client_ip(svc, request))
    rd = checked_redirect(svc, request, str(state.get("rd", ""))) or ""
    if rd:
        resp = redirect_to(rd, code=303)
    else:
        resp = page("logged_out.html", 200, site_name=svc.settings.site_name)
    clear_session_cookie(svc, resp)
    return resp


def _logout_requested(svc: Services, message: RedirectMessage) -> Response:
    """IdP-initiated Single Logout: end the matching sessions, answer signed.
    Each LogoutRequest works once (its issuer and ID are remembered for as
    long as its ``IssueInstant`` would let it be accepted)."""
    assert svc.saml is not None
    now = svc.clock()
    try:
        facts = svc.saml.read_logout_request(message, now)
    except AuthenticationFailed as exc:
        return _slo_refused(svc, exc.reason, "logout_request")
    except SamlUnavailable as exc:
        return _unavailable(svc, "/.sso/saml/slo", exc)
    revoked: list[str] = []
    user = ""
    try:
        ttl = max(facts.accepted_until - now, 60.0)
        if not svc.store.add_once(_SLO_SEEN + _digest(facts.issuer + "\n" + facts.request_id), ttl):
            return _slo_refused(svc, "replayed logout request", "logout_request")
        mapped = svc.store.pop_value(_NAMEID + _digest(facts.name_id))
        if mapped is not None:
            user = str(mapped.get("subject", ""))
            kept = False
            for key in svc.store.user_sessions(user):
                record = svc.store.get_session(key) or {}
                login = record.get("login") if isinstance(record.get("login"), dict) else {}
                saml = login.get("saml") if isinstance(login, dict) else None
                if not isinstance(saml, dict) or saml.get("name_id") != facts.name_id:
                    continue
                if facts.session_indexes and saml.get("session_index") not in facts.session_indexes:
                    kept = True
                    continue
                if svc.sessions.delete(key):
                    revoked.append(key[:12])
                    if svc.signer is not None:
                        svc.signer.forget(key)
            if kept:  # other sessions of the same person at the IdP stay mapped
                svc.store.put_value(
                    _NAMEID + _digest(facts.name_id),
                    mapped,
                    svc.settings.session.absolute_lifetime + EXPIRED_GRACE,
                )
    except StoreUnavailable as exc:
        return unavailable_page(svc, "/.sso/saml/slo", exc)
    svc.audit.emit(
        "logout",
        user=user or None,
        provider="saml",
        via="idp",
        sessions=revoked,
        client_ip=client_ip(svc, request),
    )
    resp = redirect_to(facts.response_url, code=302)
    clear_session_cookie(svc, resp)
    return resp
