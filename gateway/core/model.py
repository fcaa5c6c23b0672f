"""Protocol-neutral values shared by every layer.

Nothing here knows about Flask, HTTP libraries or identity protocols.  Provider
adapters produce an :class:`Identity`; the policy engine turns an identity and a
:class:`RequestInfo` into a :class:`Decision`; the views turn a decision into an
HTTP answer in exactly one place.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Identity:
    """Who a person is, as told by one identity provider.

    ``groups`` holds human-readable group names (they go into headers and audit
    lines); ``group_ids`` holds every other identifier the provider knows for the
    same groups (distinguished names, SIDs, object GUIDs).  Policies may match on
    either.  ``attributes`` carries optional directory attributes (``ipPhone``,
    ``telephoneNumber``, ``department`` ...) for the extra identity headers.
    """

    subject: str
    provider: str
    name: str = ""
    email: str = ""
    groups: tuple[str, ...] = ()
    group_ids: tuple[str, ...] = ()
    auth_time: float = 0.0
    mfa: bool = False
    amr: tuple[str, ...] = ()
    acrs: tuple[str, ...] = ()  # Entra ID authentication contexts satisfied (c1, c2 ...)
    attributes: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "provider": self.provider,
            "name": self.name,
            "email": self.email,
            "groups": list(self.groups),
            "group_ids": list(self.group_ids),
            "auth_time": self.auth_time,
            "mfa": self.mfa,
            "amr": list(self.amr),
            "acrs": list(self.acrs),
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Identity:
        attrs = data.get("attributes") or {}
        return cls(
            subject=str(data["subject"]),
            provider=str(data["provider"]),
            name=str(data.get("name", "")),
            email=str(data.get("email", "")),
            groups=tuple(str(g) for g in data.get("groups", ())),
            group_ids=tuple(str(g) for g in data.get("group_ids", ())),
            auth_time=float(data.get("auth_time", 0.0)),
            mfa=bool(data.get("mfa", False)),
            amr=tuple(str(a) for a in data.get("amr", ())),
            acrs=tuple(str(a) for a in data.get("acrs", ())),
            attributes={str(k): str(v) for k, v in dict(attrs).items()},
        )


@dataclass(frozen=True)
class RequestInfo:
    """The request being judged: the original one, not the forward-auth subrequest.

    ``path`` is already normalised (see :mod:`gateway.core.paths`); ``client_ip``
    is the address of the person's machine as far as trusted proxies tell.
    """

    host: str
    path: str
    method: str
    client_ip: str
    scheme: str = "https"


class Outcome(enum.Enum):
    """What a decision amounts to."""

    ALLOW = "allow"  # 2xx, identity headers
    PUBLIC = "public"  # 2xx, no identity needed (route marked public)
    LOGIN = "login"  # 401: no valid session, or a fresh login is required
    DENY = "deny"  # 403: valid session, policy says no
    ERROR = "error"  # 5xx: the gateway could not decide; fail closed


@dataclass(frozen=True)
class Decision:
    """The answer of the policy engine, carrying why.

    ``reasons`` are short machine-readable codes with detail (for example
    ``"route:intercom-admin"``, ``"tier-denied:contractor window"``).  They go to
    the audit log; they are never shown to an unauthenticated client.
    """

    outcome: Outcome
    route: str | None = None
    tier: str | None = None
    reasons: tuple[str, ...] = ()
    passive: bool = False
    step_up: bool = False
    required_tiers: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.outcome in (Outcome.ALLOW, Outcome.PUBLIC)
