"""Turning a proven identity into a session: the last step of every login,
whatever the provider (local users, OIDC, SAML, LDAP).

The provider adapters only say *who* someone is; here the policy picks the
primary tier and the session limits, the old session (if any) is replaced by a
brand-new one (no session fixation), the login is audited and the browser is
sent on to where it was going.  With directory deprovisioning, a SAML or OIDC
person is looked up in the directory first, so the session is matched to them
by objectGUID later (:meth:`gateway.deprovision.DeprovisionWatcher.link_at_login`).
"""

from __future__ import annotations

from typing import Any

from flask import Response
from werkzeug.wrappers import Request

from gateway.core.errors import AuthenticationFailed, StoreUnavailable
from gateway.core.model import Identity
from gateway.services import Services
from gateway.sessions.manager import Session
from gateway.views.common import (
    client_ip,
    load_session,
    now_dt,
    set_session_cookie,
)
from gateway.views.respond import page, redirect_to


def unavailable_page(svc: Services, where: str, exc: Exception) -> Response:
    """503 for a login step that could not reach the session store (audited)."""
    svc.audit.emit("store_unavailable", where=where, detail=str(exc))
    return page(
        "error.html",
        503,
        site_name=svc.settings.site_name,
        title="Temporarily unavailable",
        message="Sign-in is unavailable right now. Try again in a moment.",
    )


def failed_page(svc: Services, status: int, message: str) -> Response:
    """What a person sees when a login through an identity provider failed.
    The reason goes to the audit log, never to the page."""
    return page(
        "error.html",
        status,
        site_name=svc.settings.site_name,
        title="Sign-in failed",
        message=message,
        retry="/.sso/login",
    )


def create_session(
    svc: Services,
    req: Request,
    identity: Identity,
    now: float,
    *,
    login: dict[str, Any] | None = None,
    **audit_fields: Any,
) -> tuple[str, Session]:
    """A new session for ``identity`` (the old one behind the cookie, if any, is
    deleted) and the ``login`` audit line.  Returns (cookie value, session).
    Raises StoreUnavailable, and AuthenticationFailed when the directory says
    a SAML/OIDC person is disabled (deprovisioning configured)."""
    ip = client_ip(svc, req)
    policy = svc.policy.current
    tier = policy.primary_tier(identity, ip, now_dt(svc, now))
    limits = policy.session_limits(
        identity, ip, svc.settings.session.idle_timeout, svc.settings.session.absolute_lifetime
    )
    if svc.deprovision is not None:
        # SAML/OIDC: who the person is in the directory, so deprovisioning
        # matches the session by objectGUID (a deletion ends it).  Bounded by
        # the LDAP timeouts; a directory that cannot be asked does not stop the
        # sign-in (see gateway.deprovision), one that says "disabled" does
        login, outcome = svc.deprovision.link_at_login(identity, login)
        if outcome == "disabled":
            # the identity provider has not caught up (sync lag, a session of
            # its own): the directory is the word on whether the person may work
            raise AuthenticationFailed("disabled-in-directory")
        if outcome:
            audit_fields["directory_lookup"] = outcome
    old = load_session(svc, req, now)
    if isinstance(old, Session):
        svc.sessions.delete(old.key)
        if svc.signer is not None:
            svc.signer.forget(old.key)
    cookie, session = svc.sessions.create(
        identity,
        tier=tier.name if tier is not None else None,
        idle=limits.idle,
        absolute=limits.absolute,
        client_ip=ip,
        now=now,
        login=login,
    )
    svc.audit.emit(
        "login",
        user=identity.subject,
        provider=identity.provider,
        tier=session.tier,
        groups=identity.groups,
        session=session.short_id,
        client_ip=ip,
        idle=session.idle,
        absolute=session.absolute,
        limits=limits.reasons,
        **audit_fields,
    )
    return cookie, session


def finish_login(
    svc: Services,
    req: Request,
    identity: Identity,
    rd: str,
    now: float,
    *,
    login: dict[str, Any] | None = None,
    where: str,
    **audit_fields: Any,
) -> Response:
    """Create the session and redirect (303) to ``rd`` (already checked) or the
    default page; 503 when the store is down; 403 when the directory says the
    person is disabled."""
    try:
        cookie, session = create_session(svc, req, identity, now, login=login, **audit_fields)
    except StoreUnavailable as exc:
        return unavailable_page(svc, where, exc)
    except AuthenticationFailed as exc:
        svc.audit.emit(
            "login_failed",
            provider=identity.provider,
            user=identity.subject,
            reason=exc.reason,
            client_ip=client_ip(svc, req),
        )
        return failed_page(svc, 403, "Sign-in was refused.")
    resp = redirect_to(rd or svc.settings.redirects.default, code=303)
    set_session_cookie(svc, resp, cookie, session.absolute)
    return resp
