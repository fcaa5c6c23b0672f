"""After the local logout: end the person's session at the identity provider
too, when the provider they logged in with supports it (OIDC RP-initiated
logout, SAML Single Logout).  Each provider adds its branch here."""

from __future__ import annotations

from flask import Response
from werkzeug.wrappers import Request

from gateway.services import Services
from gateway.sessions.manager import Session
from gateway.views.saml import idp_logout as saml_idp_logout


def idp_logout(svc: Services, req: Request, session: Session, rd: str) -> Response | None:
    """A redirect that continues the logout at the identity provider (and comes
    back to ``rd``, already checked, or the logged-out page), or None when the
    provider has nothing to end."""
    if session.identity.provider == "oidc":
        from gateway.views.oidc import end_session

        return end_session(svc, req, session)
    if session.identity.provider == "saml":
        return saml_idp_logout(svc, session, rd)
    return None
