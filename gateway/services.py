"""The parts one gateway instance is made of, built by ``create_app`` and read by
the views through :func:`current`.  Nothing here builds anything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.assertion import AssertionSigner
from gateway.audit import AuditLimiter, AuditLog
from gateway.core.network import TrustedProxies
from gateway.identity_headers import IdentityHeaderCache
from gateway.policy_holder import PolicyHolder
from gateway.providers.local import LocalUsersProvider
from gateway.providers.password import PasswordProvider
from gateway.sessions.manager import SessionManager
from gateway.sessions.store import SessionStore
from gateway.settings import Settings
from gateway.throttle import LoginThrottle

if TYPE_CHECKING:  # ldap3 is imported only where a directory is configured
    from gateway.deprovision import DeprovisionWatcher
    from gateway.providers.ldap_groups import DirectoryGroupResolver


@dataclass
class Services:
    settings: Settings
    store: SessionStore
    sessions: SessionManager
    policy: PolicyHolder
    audit: AuditLog
    signer: AssertionSigner | None
    local_users: LocalUsersProvider | None
    throttle: LoginThrottle
    trusted_proxies: TrustedProxies
    clock: Callable[[], float]
    cookie_name: str
    csrf_cookie_name: str
    secret_key: str
    # lower-cased names of every identity header (inbound copies are dropped)
    identity_header_names: frozenset[str]
    # rate limit for audit events outsiders can trigger at will
    audit_limiter: AuditLimiter
    # identity headers per (session, tier, JWT), rebuilt when the JWT is renewed
    header_cache: IdentityHeaderCache
    # the provider behind the /.sso/login form (local users or LDAP), if any
    password_login: PasswordProvider | None = None
    # Active Directory over LDAP: nested groups for any provider, deprovisioning
    directory: DirectoryGroupResolver | None = None
    deprovision: DeprovisionWatcher | None = None
