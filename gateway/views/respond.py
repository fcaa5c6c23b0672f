"""The one place where a :class:`Decision` becomes an HTTP answer.

* ALLOW / PUBLIC -> 202 (forward-auth) with identity headers when there is one;
* LOGIN          -> 401: "log in" (the ingress sends the browser to /.sso/start);
* DENY           -> 403: never a redirect, so never a loop;
* ERROR          -> 503: the gateway could not decide, and fails closed.

Forward-auth answers (:func:`forward_auth_answer`) are plain WSGI; the pages
and JSON of the other endpoints are Flask responses (:func:`page` and friends).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from flask import Response, render_template

from gateway.core.model import Decision, Identity, Outcome
from gateway.services import Services

_JSON = "application/json"


def _json(status: int, body: dict[str, object]) -> Response:
    resp = Response(json.dumps(body), status=status, mimetype=_JSON)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@dataclass(frozen=True)
class Answer:
    """A forward-auth answer, written straight to WSGI (this path runs on every
    request of every dashboard, so it skips Flask's response machinery)."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    # for metrics: the decision's outcome and route
    outcome: str = "error"
    route: str | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(self.status, self.headers)
        return [self.body]


def _json_answer(
    status: str, body: dict[str, object], outcome: str = "error", route: str | None = None
) -> Answer:
    data = json.dumps(body).encode()
    return Answer(
        status,
        [
            ("Content-Type", _JSON),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ],
        data,
        outcome,
        route,
    )


def identity_headers(
    svc: Services, identity: Identity, tier: str | None, session_key: str, now: float
) -> list[tuple[str, str]]:
    """The identity headers and the signed assertion for an allowed request
    (a fresh list: callers may append to it)."""
    jwt = svc.signer.sign(identity, tier, session_key, now) if svc.signer is not None else None
    return svc.header_cache.headers(identity, tier, jwt, session_key)


def forward_auth_answer(
    svc: Services,
    decision: Decision,
    identity: Identity | None,
    session_key: str | None,
    now: float,
) -> Answer:
    if decision.outcome is Outcome.ALLOW and identity is not None and session_key is not None:
        headers = identity_headers(svc, identity, decision.tier, session_key, now)
        headers.append(("Cache-Control", "no-store"))
        headers.append(("Content-Length", "0"))
        return Answer("202 Accepted", headers, b"", "allow", decision.route)
    route = decision.route
    if decision.outcome is Outcome.PUBLIC:
        return Answer(
            "202 Accepted",
            [("Cache-Control", "no-store"), ("Content-Length", "0")],
            b"",
            "public",
            route,
        )
    if decision.outcome is Outcome.LOGIN:
        error = "fresh_login_required" if decision.step_up else "login_required"
        return _json_answer("401 Unauthorized", {"error": error}, "login", route)
    if decision.outcome is Outcome.DENY:
        return _json_answer(
            "403 Forbidden",
            {"error": "forbidden", "required_tiers": list(decision.required_tiers)},
            "deny",
            route,
        )
    return unavailable_answer()


def unavailable_answer(message: str = "the gateway cannot decide right now") -> Answer:
    return _json_answer("503 Service Unavailable", {"error": "unavailable", "message": message})


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
