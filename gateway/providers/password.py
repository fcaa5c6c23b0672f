"""What the ``/.sso/login`` form needs from a provider that checks a user name
and a password (the local users file, an Active Directory over LDAP)."""

from __future__ import annotations

from typing import Protocol

from gateway.core.model import Identity


class PasswordProvider(Protocol):
    name: str  # "local", "ldap": the provider named in audit lines

    def reload(self) -> bool:
        """Pick up changed configuration (cheap; called before every attempt)."""

    def authenticate(self, username: str, password: str, *, now: float) -> Identity:
        """The person's identity, or raise ``AuthenticationFailed(reason)``
        (reason for the audit log only) or ``ProviderUnavailable``."""
