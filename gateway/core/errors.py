"""The gateway's exception tree.

GatewayError
 +-- ConfigError            settings or policy files are invalid; carries every Problem
 +-- AmbiguousPath          a request path that could be read two ways; refused, not guessed
 +-- UnsafeRedirect         a redirect target that is neither same-site nor allow-listed
 +-- StoreUnavailable       the session store cannot be reached; callers fail closed (503)
 +-- ProviderUnavailable    an identity provider, directory or Microsoft Graph cannot be
 |                          reached or answered something unusable; fails closed (503)
 +-- AuthenticationFailed   a login attempt failed; ``reason`` is for the audit log only
      +-- Throttled         too many failed attempts for this user or client address
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration or policy file."""

    file: str
    key_path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key_path}" if self.key_path else self.file
        return f"{where}: {self.reason}"


def key_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """A validation location as written in messages: ``routes[3].allow[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid configuration")


class AmbiguousPath(GatewayError):
    """The path could mean different things to the gateway and the upstream."""


class UnsafeRedirect(GatewayError):
    """A redirect target that is not same-site and not on the allow-list."""


class StoreUnavailable(GatewayError):
    """The session store could not be reached or answered garbage."""


class ProviderUnavailable(GatewayError):
    """An identity provider, directory or group source could not be reached or
    answered something unusable (not a refusal of the person: that is
    AuthenticationFailed); callers fail closed."""


class AuthenticationFailed(GatewayError):
    """A login attempt failed.  ``reason`` goes to the audit log, never to the person."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Throttled(AuthenticationFailed):
    """Too many failures for the user or the client address."""
