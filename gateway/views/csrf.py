"""CSRF tokens for the gateway's own forms (double submit, signed by itsdangerous).

A random nonce lives in an HttpOnly cookie; the form carries the same nonce
signed and time-stamped with the app secret.  A POST is accepted only when both
are present, the signature holds, the token is fresh and the nonces match.
"""

from __future__ import annotations

import hmac
import secrets

from flask import Response, request
from itsdangerous import BadData, URLSafeTimedSerializer

from gateway.services import Services
from gateway.views.respond import page

MAX_AGE = 1800


def _serializer(svc: Services) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(svc.secret_key, salt="sso-gateway-csrf")


def issue(svc: Services) -> tuple[str, str]:
    """(nonce for the cookie, token for the form); reuses the cookie's nonce."""
    nonce = request.cookies.get(svc.csrf_cookie_name)
    if not nonce or len(nonce) != 43:
        nonce = secrets.token_urlsafe(32)
    return nonce, _serializer(svc).dumps(nonce)


def set_cookie(svc: Services, response: Response, nonce: str) -> None:
    c = svc.settings.cookie
    response.set_cookie(
        svc.csrf_cookie_name,
        nonce,
        max_age=MAX_AGE,
        path="/",
        domain=c.domain,
        secure=c.secure,
        httponly=True,
        samesite="Strict" if c.samesite == "Strict" else "Lax",
    )


def valid(svc: Services, token: str | None) -> bool:
    nonce = request.cookies.get(svc.csrf_cookie_name)
    if not token or not nonce:
        return False
    try:
        signed = _serializer(svc).loads(token, max_age=MAX_AGE)
    except BadData:
        return False
    return isinstance(signed, str) and hmac.compare_digest(signed, nonce)


def form_page(svc: Services, template: str, status: int, **context: object) -> Response:
    """A page holding a form: rendered with a fresh ``csrf_token`` and the
    matching nonce cookie set."""
    nonce, token = issue(svc)
    resp = page(template, status, csrf_token=token, **context)
    set_cookie(svc, resp, nonce)
    return resp
