"""The parts one gateway instance is made of, built by ``create_app`` and read by
the views through :func:`current`.  Nothing here builds anything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.access_log import AccessLog
from gateway.assertion import AssertionSigner
from gateway.audit import AuditLimiter, AuditLog
from gateway.core.network import Networks, TrustedProxies
from gateway.identity_headers import IdentityHeaderCache
from gateway.metrics import Metrics
from gateway.policy_holder import PolicyHolder
from gateway.providers.groups import GroupResolver
from gateway.providers.local import LocalUsersProvider
from gateway.providers.oidc import OidcClient
from gateway.providers.password import PasswordProvider
from gateway.providers.saml import SamlServiceProvider
from gateway.sessions.manager import SessionManager
from gateway.sessions.store import SessionStore
from gateway.settings import Settings
from gateway.throttle import LoginThrottle

if TYPE_CHECKING:  # ldap3 is imported only where a directory is configured
    from gateway.deprovision import DeprovisionWatcher
    from gateway.providers.ldap_groups import DirectoryGroupResolver
    from gateway.streams import StreamRegistry
    from gateway.upstreams import UpstreamTable


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
    # OpenID Connect (Entra ID), when configured
    oidc: OidcClient | None = None
    # group sources for identities whose login did not carry their groups
    # ("graph", "directory"), by name
    group_resolvers: dict[str, GroupResolver] = field(default_factory=dict)
    # Prometheus metrics (/.sso/metrics), unless metrics.enabled is off
    metrics: Metrics | None = None
    metrics_networks: Networks = ()
    # the SAML service provider, when providers.saml is configured
    saml: SamlServiceProvider | None = None
    # the provider behind the /.sso/login form (local users or LDAP), if any
    password_login: PasswordProvider | None = None
    # Active Directory over LDAP: nested groups for any provider, deprovisioning
    directory: DirectoryGroupResolver | None = None
    deprovision: DeprovisionWatcher | None = None
    # reverse-proxy mode: the upstreams, when proxy.upstreams is configured
    upstreams: UpstreamTable | None = None
    # open WebSockets and live streams per session (reverse-proxy mode)
    streams: StreamRegistry | None = None
    # one line per request, when access_log.enabled (written by the server, see
    # gateway.workers, or by the app's outermost middleware)
    access_log: AccessLog | None = None
