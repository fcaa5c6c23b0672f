"""Forward-auth: ``/.sso/auth``, asked by nginx ``auth_request``, ingress-nginx
``auth-url`` or Traefik ForwardAuth on every request.

``/.sso/auth`` runs before every request of every dashboard, so it is served by
:class:`ForwardAuthApp`, a plain WSGI callable placed in front of Flask: same
translation as a Flask view (werkzeug request in, answer out), without Flask's
per-request context, URL routing and response machinery.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from werkzeug.wrappers import Request

from gateway import access_log
from gateway.core.errors import AmbiguousPath, StoreUnavailable
from gateway.core.model import Decision, Outcome
from gateway.services import Services
from gateway.views.common import (
    client_ip,
    original_request,
    untrusted_forward_headers,
)
from gateway.views.judge import judge
from gateway.views.respond import (
    Answer,
    forward_auth_answer,
    unavailable_answer,
)

log = logging.getLogger(__name__)

AUTH_PATH = "/.sso/auth"


def check(svc: Services, req: Request) -> Answer:
    """Judge the original request behind a forward-auth call."""
    now = svc.clock()
    try:
        judged = original_request(svc, req)
    except AmbiguousPath as exc:
        svc.audit.emit(
            "denied", reason="ambiguous-request", detail=str(exc), client_ip=client_ip(svc, req)
        )
        return forward_auth_answer(
            svc, Decision(Outcome.DENY, reasons=("ambiguous-request",)), None, None, now
        )
    if not judged.forwarded:
        spoofed = untrusted_forward_headers(svc, req)
        if spoofed and svc.audit_limiter.allow(("untrusted", judged.info.client_ip), now):
            svc.audit.emit(
                "untrusted_forward_headers",
                client_ip=judged.info.client_ip,
                headers=spoofed,
                reason="original-request headers from an untrusted address were ignored",
                note="reported at most once a minute per address",
            )
    try:
        verdict = judge(svc, req, judged.info, now)
    except StoreUnavailable as exc:
        svc.audit.emit("store_unavailable", where=AUTH_PATH, detail=str(exc))
        return unavailable_answer("session store unavailable")
    session = verdict.session
    access_log.note(req.environ, verdict.identity, verdict.decision.tier, judged.info.client_ip)
    return forward_auth_answer(
        svc, verdict.decision, verdict.identity, session.key if session is not None else None, now
    )


class ForwardAuthApp:
    """WSGI middleware: ``/.sso/auth`` is answered here, everything else by Flask."""

    def __init__(self, flask_wsgi: Any, svc: Services) -> None:
        self.flask_wsgi = flask_wsgi
        self.svc = svc

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != AUTH_PATH:
            return self.flask_wsgi(environ, start_response)
        started = time.perf_counter()
        try:
            answer = check(self.svc, Request(environ))
        except Exception:
            log.exception("forward-auth check failed")
            self.svc.audit.emit("error", where=AUTH_PATH, reason="internal error; failed closed")
            answer = unavailable_answer()
        if self.svc.metrics is not None:
            self.svc.metrics.decision(answer.outcome, answer.route, time.perf_counter() - started)
        return answer(environ, start_response)
