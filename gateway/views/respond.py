"""The one place where a :class:`Decision` becomes an HTTP answer.

* ALLOW / PUBLIC -> 202 (forward-auth) with identity headers when there is one;
* LOGIN          -> 401: "log in" (the ingress sends the browser to /.sso/start);
* DENY           -> 403: never a redirect, so never a loop;
* ERROR          -> 503: the gateway could not decide, and fails closed.
"""

from __future__ import annotations

import json
import secrets

from flask import Response, render_template

from gateway.core.model import Decision, Identity, Outcome
from gateway.services import Services
from gateway.views.identity_headers import identity_headers

_JSON = "application/json"


def _json(status: int, body: dict[str, object]) -> Response:
    resp = Response(json.dumps(body), status=status, mimetype=_JSON)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def forward_auth_response(
    svc: Services,
    decision: Decision,
    identity: Identity | None,
    session_key: str | None,
    now: float,
) -> Response:
    if decision.outcome is Outcome.ALLOW and identity is not None:
        resp = Response(status=202)
        jwt = None
        if svc.signer is not None and session_key is not None:
            jwt = svc.signer.sign(identity, decision.tier, session_key, now)
        for name, value in identity_headers(svc.settings.headers, identity, decision.tier, jwt):
            resp.headers[name] = value
        resp.headers["Cache-Control"] = "no-store"
        return resp
    if decision.outcome is Outcome.PUBLIC:
        resp = Response(status=202)
        resp.headers["Cache-Control"] = "no-store"
        return resp
    if decision.outcome is Outcome.LOGIN:
        body: dict[str, object] = {"error": "login_required"}
        if decision.step_up:
            body["error"] = "fresh_login_required"
        resp = _json(401, body)
        return resp
    if decision.outcome is Outcome.DENY:
        return _json(403, {"error": "forbidden", "required_tiers": list(decision.required_tiers)})
    return unavailable()


def unavailable(message: str = "the gateway cannot decide right now") -> Response:
    return _json(503, {"error": "unavailable", "message": message})


def bad_request(message: str) -> Response:
    return _json(400, {"error": "bad_request", "message": message})


def page(template: str, status: int, **context: object) -> Response:
    nonce = secrets.token_urlsafe(16)
    html = render_template(template, csp_nonce=nonce, **context)
    resp = Response(html, status=status, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def json_answer(status: int, body: dict[str, object]) -> Response:
    return _json(status, body)


def redirect_to(location: str, code: int = 303) -> Response:
    """A redirect to a location that has already been checked (same-site or allow-listed)."""
    resp = Response(status=code)
    resp.headers["Location"] = location
    resp.headers["Cache-Control"] = "no-store"
    return resp
