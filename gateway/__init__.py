"""intercom-sso-gateway: company identity in front of intercom and PBX dashboards.

:func:`create_app` is the only place where concrete parts are wired together.
``gunicorn 'gateway:create_app()'`` reads the config named by ``SSO_GATEWAY_CONFIG``
(or runs on defaults when it is unset).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real imports happen inside create_app, after gunicorn's
    # gevent worker has monkey-patched the process (importing redis/ssl earlier
    # in the arbiter makes gevent warn and can break TLS)
    from flask import Flask
    from pydantic import SecretStr

    from gateway.audit import AuditLog
    from gateway.core.policy import PolicySet
    from gateway.providers.ldap import LdapDirectory
    from gateway.sessions.store import SessionStore
    from gateway.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger("gateway")


def create_app(
    settings: Settings | None = None,
    *,
    store: SessionStore | None = None,
    policy: PolicySet | None = None,
    audit: AuditLog | None = None,
    clock: Callable[[], float] | None = None,
) -> Flask:
    """Build a gateway.  Every argument can be injected (tests); what is not
    given is built from ``settings``."""
    from flask import Flask

    from gateway.access_log import AccessLog, AccessLogMiddleware
    from gateway.assertion import AssertionSigner
    from gateway.audit import AuditLimiter, AuditLog
    from gateway.core.network import TrustedProxies, parse_networks
    from gateway.identity_headers import IdentityHeaderCache
    from gateway.offload import Offloader
    from gateway.policy_holder import PolicyHolder
    from gateway.providers.local import LocalUsersProvider
    from gateway.services import Services
    from gateway.sessions.manager import SessionManager
    from gateway.settings import CONFIG_ENV, load_settings
    from gateway.throttle import LoginThrottle

    if settings is None:
        path = os.environ.get(CONFIG_ENV)
        settings = load_settings(path)
    clock = clock or time.time
    audit = audit or AuditLog(settings.audit_destination)
    data_dir = settings.resolve_path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    secret_key = _secret_key(settings, data_dir)
    store = store or _build_store(settings)
    policy_dir = settings.resolve_path(settings.policies_dir)
    holder = PolicyHolder(policy_dir, audit, clock=clock, initial=policy)

    local_users = None
    if settings.providers.default == "local":
        local_users = LocalUsersProvider(
            settings.resolve_path(settings.providers.local.users_file),
            run=Offloader(limit=2),  # argon2 off the event loop, two at a time
        )

    oidc = None
    group_resolvers: dict[str, Any] = {}
    if settings.providers.oidc is not None:
        from gateway.providers.groups import GraphGroupResolver
        from gateway.providers.oidc import OidcClient

        oidc = OidcClient(settings.providers.oidc, resolve_path=settings.resolve_path, clock=clock)
        if settings.providers.oidc.group_overage == "graph":
            group_resolvers["graph"] = GraphGroupResolver(
                settings.providers.oidc.graph,
                oidc.client_credentials_token,
                verify=oidc.tls_verify,
            )

    metrics = None
    if settings.metrics.enabled:
        from gateway.metrics import Metrics

        # live ones only: the store keeps expired records a while (EXPIRED_GRACE)
        metrics = Metrics(active_sessions=lambda: len(services.sessions.list(now=clock())))
        audit.add_listener(metrics.on_audit)
    ldap = _build_ldap(settings, audit) if settings.providers.ldap is not None else None

    signer = None
    if settings.jwt.enabled:
        signer = AssertionSigner(
            settings.jwt_key_path,
            issuer=settings.jwt.issuer or settings.public_url or "intercom-sso-gateway",
            audience=settings.jwt.audience,
            lifetime=settings.jwt.lifetime,
            published_key_files=[
                settings.resolve_path(path) for path in settings.jwt.published_key_files
            ],
        )

    if not settings.cookie.secure:
        log.warning(
            "cookie.secure is off: session cookies will be sent over plain HTTP. "
            "Use this only for local development."
        )
        audit.emit("insecure_cookie_enabled", reason="cookie.secure is false")

    saml = None
    if settings.providers.saml is not None:
        from gateway.providers.saml import SamlServiceProvider

        assert settings.public_url is not None  # checked by settings
        saml = SamlServiceProvider(
            settings.providers.saml,
            public_url=settings.public_url,
            resolve_path=settings.resolve_path,
            emit=audit.emit,
        )

    cookie_prefix = ""
    if settings.cookie.secure:
        cookie_prefix = "__Host-" if settings.cookie.domain is None else "__Secure-"

    services = Services(
        settings=settings,
        store=store,
        sessions=SessionManager(
            store,
            secret_key,
            touch_interval=settings.session.touch_interval,
            cache_seconds=settings.session.cache_seconds,
        ),
        policy=holder,
        audit=audit,
        signer=signer,
        local_users=local_users,
        throttle=LoginThrottle(
            store,
            max_user_failures=settings.login.max_user_failures,
            max_client_failures=settings.login.max_client_failures,
            window=settings.login.failure_window,
            max_starts_per_minute=settings.login.max_starts_per_minute,
        ),
        trusted_proxies=TrustedProxies(parse_networks(list(settings.network.trusted_proxies))),
        clock=clock,
        cookie_name=cookie_prefix + settings.cookie.name,
        csrf_cookie_name=cookie_prefix + settings.cookie.name + "_csrf",
        secret_key=secret_key,
        identity_header_names=frozenset(n.lower() for n in settings.headers.all_names()),
        audit_limiter=AuditLimiter(interval=60.0),
        header_cache=IdentityHeaderCache(settings.headers),
        oidc=oidc,
        group_resolvers=group_resolvers,
        metrics=metrics,
        metrics_networks=parse_networks(list(settings.metrics.allowed_networks)),
        saml=saml,
        password_login=local_users,
        access_log=(
            AccessLog(
                settings.access_log_destination, redact_query=settings.access_log.redact_query
            )
            if settings.access_log.enabled
            else None
        ),
    )

    if ldap is not None:  # Active Directory: the form's provider, groups, deprovisioning
        from gateway.deprovision import DeprovisionWatcher
        from gateway.providers.ldap import LdapPasswordProvider
        from gateway.providers.ldap_groups import DirectoryGroupResolver

        services.directory = DirectoryGroupResolver(ldap)
        services.group_resolvers["directory"] = services.directory  # OIDC group overage
        if settings.providers.default == "ldap":
            services.password_login = LdapPasswordProvider(ldap)
        assert settings.providers.ldap is not None
        if settings.providers.ldap.deprovision.enabled:
            services.deprovision = DeprovisionWatcher(
                ldap,
                services.sessions,
                store,
                audit,
                holder,
                clock=clock,
                forget=signer.forget if signer is not None else None,
            )

    app = Flask(__name__, template_folder="templates", static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=64 * 1024)
    app.extensions["gateway"] = services

    from gateway.views import register
    from gateway.views.forward_auth import ForwardAuthApp

    register(app)
    inner: Any = app.wsgi_app
    if settings.proxy.upstreams:  # reverse-proxy mode: all but /.sso/ goes upstream
        from gateway.sessions.manager import InvalidationFeed
        from gateway.streams import StreamRegistry
        from gateway.upstreams import UpstreamTable
        from gateway.views.proxy import ProxyApp

        services.upstreams = UpstreamTable(settings.proxy, settings.resolve_path)
        services.streams = StreamRegistry(
            services.sessions,
            audit,
            clock,
            feed=store if isinstance(store, InvalidationFeed) else None,
        )
        inner = ProxyApp(
            inner,
            app,
            services,
            services.upstreams,
            services.streams,
            websockets=settings.listen.worker_class == "gevent",
        )
    # outermost first: inbound identity headers are dropped before anything else,
    # then /.sso/auth is answered without Flask's per-request machinery
    app.wsgi_app = StripIdentityHeaders(  # type: ignore[method-assign]
        ForwardAuthApp(inner, services), services.identity_header_names
    )
    if services.access_log is not None:
        # the gevent worker's own server side writes the access log itself (it is
        # handed services.access_log, see gateway.workers) and this stands aside;
        # under gunicorn's handler (TLS in gunicorn, sync, gthread) this writes it
        app.wsgi_app = AccessLogMiddleware(app.wsgi_app, services.access_log)  # type: ignore[method-assign]
    return app


class StripIdentityHeaders:
    """WSGI middleware: inbound headers named like an identity header never reach
    any view or upstream.  WSGI folds case and maps both '-' and '_' to '_', so
    one environ key covers every spelling a client can send."""

    def __init__(self, app: Any, names: frozenset[str]) -> None:
        self.app = app
        self.keys = frozenset("HTTP_" + n.upper().replace("-", "_") for n in names)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        for key in self.keys:
            environ.pop(key, None)
        return self.app(environ, start_response)


def _build_ldap(settings: Settings, audit: AuditLog) -> LdapDirectory:
    from gateway.providers.ldap import LdapDirectory

    cfg = settings.providers.ldap
    assert cfg is not None
    if cfg.transport == "plain":
        audit.emit("insecure_ldap_enabled", reason="providers.ldap.transport is plain")
    ca = settings.resolve_path(cfg.ca_bundle) if cfg.ca_bundle is not None else None
    return LdapDirectory(cfg, ca_bundle=str(ca) if ca is not None else None)


def _build_store(settings: Settings) -> SessionStore:
    from gateway.sessions.file_store import FileStore
    from gateway.sessions.memory_store import MemoryStore
    from gateway.sessions.redis_store import RedisStore

    session = settings.session
    if session.store == "redis":
        sentinel = session.redis_sentinel
        if sentinel is not None:
            return RedisStore.from_sentinel(
                sentinel.master,
                sentinel.addresses(),
                db=sentinel.db,
                username=sentinel.username,
                password=_secret(sentinel.password),
                sentinel_username=sentinel.sentinel_username,
                sentinel_password=_secret(sentinel.sentinel_password),
                socket_timeout=session.redis_socket_timeout,
            )
        assert session.redis_url is not None  # checked by settings
        return RedisStore(
            session.redis_url.get_secret_value(),
            socket_timeout=session.redis_socket_timeout,
        )
    if settings.session.store == "memory":
        return MemoryStore()
    return FileStore(settings.sessions_dir)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _secret_key(settings: Settings, data_dir: Path) -> str:
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    from gateway.files import create_secret_file

    path = data_dir / "secret-key"
    create_secret_file(path, secrets.token_urlsafe(48))
    return path.read_text(encoding="utf-8").strip()
