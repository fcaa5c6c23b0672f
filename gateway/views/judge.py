"""The decision every protected request gets, on both per-request paths
(``/.sso/auth`` and the reverse proxy), so that they follow one rule: the
session behind the cookie, the policy's decision on the request, the idle timer
extended only by a request the session itself was allowed (neither passive nor
public routes count), and one ``denied`` audit line for a valid session refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.wrappers import Request

from gateway.core.model import Decision, Identity, Outcome, RequestInfo
from gateway.services import Services
from gateway.sessions.manager import Session
from gateway.views.common import load_session, now_dt


@dataclass(frozen=True)
class Verdict:
    session: Session | None
    decision: Decision

    @property
    def identity(self) -> Identity | None:
        return self.session.identity if self.session is not None else None

    @property
    def allowed_session(self) -> Session | None:
        """The session, when the decision lets it through (identity headers go out)."""
        return self.session if self.decision.outcome is Outcome.ALLOW else None


def judge(svc: Services, req: Request, info: RequestInfo, now: float) -> Verdict:
    """Raises StoreUnavailable (callers fail closed)."""
    loaded = load_session(svc, req, now)
    session = loaded if isinstance(loaded, Session) else None
    identity = session.identity if session is not None else None
    decision = svc.policy.current.evaluate(identity, info, now_dt(svc, now))
    if session is not None and decision.outcome is Outcome.ALLOW and not decision.passive:
        svc.sessions.touch(session, now)
    verdict = Verdict(session, decision)
    if decision.outcome is Outcome.DENY and identity is not None:
        svc.audit.emit(
            "denied",
            user=identity.subject,
            tier=decision.tier,
            route=decision.route,
            reasons=decision.reasons,
            host=info.host,
            path=info.path,
            method=info.method,
            client_ip=info.client_ip,
        )
    return verdict
