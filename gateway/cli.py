"""The ``sso-gateway`` command."""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.core.errors import AmbiguousPath, ConfigError, GatewayError, Problem
from gateway.core.model import Identity, RequestInfo
from gateway.core.paths import normalise_path
from gateway.core.policy import format_explanation
from gateway.settings import CONFIG_ENV, Settings, fallback_paths, load_settings

EPILOG = (
    "The config file is --config PATH or the SSO_GATEWAY_CONFIG environment variable; "
    "without either, built-in defaults are used (local users file ./users.yaml, "
    "policies in ./policies, on-disk sessions in ./var)."
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sso-gateway",
        description="Identity gateway for SIP intercom and IP-PBX web dashboards.",
        epilog=EPILOG,
    )
    parser.add_argument("--config", help="config file (default: $SSO_GATEWAY_CONFIG)")
    # --config is accepted before or after the command name
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", default=argparse.SUPPRESS, help="config file (default: $SSO_GATEWAY_CONFIG)"
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the gateway under gunicorn (listen.worker_class, default gevent)",
        description="Check the policies and users file, then run the gateway under gunicorn "
        "with the listen.* settings (default: 2 gevent workers, whose HTTP/1.1 connections "
        "are parsed by llhttp and served by the gateway itself; a keep-alive request already "
        "waiting queues behind the other connections). The gunicornc control socket is "
        "data_dir/gunicorn.ctl.",
    )
    p.add_argument("--bind", help="HOST:PORT to listen on (default: listen.host:listen.port)")
    p.add_argument("--workers", type=int, help="worker processes (default: listen.workers)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "check",
        parents=[common],
        help="validate config, policies and users file; exit 1 on any problem",
        description="Validate the config file, every policy file and the local "
        "users file. Prints every problem (file, key path, reason) and exits 1 "
        "if there is any.",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "explain",
        parents=[common],
        help="show the policy decision for a person and a request",
        description="Evaluate the policy for a made-up person and request and "
        "print the decision with its reasons. Nothing is changed.",
    )
    p.add_argument("--user", required=True, help="user name (subject)")
    p.add_argument(
        "--groups", default="", help="comma-separated groups (names, DNs, SIDs or GUIDs)"
    )
    p.add_argument("--method", default="GET", help="HTTP method (default GET)")
    p.add_argument(
        "--url",
        required=True,
        help="full URL of the request, e.g. https://intercom.example.com/admin/",
    )
    p.add_argument("--ip", default="127.0.0.1", help="client address (default 127.0.0.1)")
    p.add_argument("--mfa", action="store_true", help="the login used multi-factor authentication")
    p.add_argument("--auth-age", type=int, default=0, help="seconds since the login (default 0)")
    p.add_argument(
        "--amr", default="", help="comma-separated authentication methods (OIDC amr), e.g. pwd,mfa"
    )
    p.add_argument(
        "--acrs", default="", help="comma-separated Entra ID authentication contexts, e.g. c1"
    )
    p.add_argument(
        "--at",
        help="evaluate at this ISO-8601 time instead of now (no offset: policy timezone)",
    )
    p.add_argument("--policies", help="policy folder (default: policies_dir from the config)")
    p.set_defaults(func=cmd_explain)

    users = sub.add_parser(
        "users",
        parents=[common],
        help="manage the local users file",
        description="Manage the local users file (argon2id hashes). "
        "Passwords are read from a prompt, or from SSO_GATEWAY_PASSWORD.",
    )
    users.add_argument("--users-file", help="users file (default: providers.local.users_file)")
    usub = users.add_subparsers(title="actions", metavar="ACTION")
    u = usub.add_parser("add", parents=[common], help="add a user (password: 8+ characters)")
    u.add_argument("username")
    u.add_argument("--name", default="")
    u.add_argument("--email", default="")
    u.add_argument("--groups", default="", help="comma-separated groups")
    u.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="identity attribute, e.g. ipPhone=4711 (repeatable)",
    )
    u.set_defaults(func=cmd_users_add)
    u = usub.add_parser("passwd", parents=[common], help="set a user's password (8+ characters)")
    u.add_argument("username")
    u.set_defaults(func=cmd_users_passwd)
    u = usub.add_parser("remove", parents=[common], help="remove a user")
    u.add_argument("username")
    u.set_defaults(func=cmd_users_remove)
    u = usub.add_parser("disable", parents=[common], help="disable a user (keeps the entry)")
    u.add_argument("username")
    u.set_defaults(func=cmd_users_disable)
    u = usub.add_parser("enable", parents=[common], help="enable a disabled user")
    u.add_argument("username")
    u.set_defaults(func=cmd_users_enable)
    u = usub.add_parser("list", parents=[common], help="list users")
    u.set_defaults(func=cmd_users_list)

    keys = sub.add_parser("keys", parents=[common], help="make the JWT assertion's signing keys")
    ksub = keys.add_subparsers(title="actions", metavar="ACTION")
    k = ksub.add_parser(
        "generate",
        parents=[common],
        help="write a new private P-256 signing key (a JWK, mode 0600) to PATH; never overwrites",
    )
    k.add_argument("path", metavar="PATH")
    k.set_defaults(func=cmd_keys_generate)

    sessions = sub.add_parser(
        "sessions", parents=[common], help="list or revoke sessions in the session store"
    )
    ssub = sessions.add_subparsers(title="actions", metavar="ACTION")
    s = ssub.add_parser("list", parents=[common], help="list live sessions")
    s.add_argument("--user", help="only this user's sessions")
    s.set_defaults(func=cmd_sessions_list)
    s = ssub.add_parser(
        "revoke",
        parents=[common],
        help="revoke every session of a user, or one session by the id 'sessions list' shows",
    )
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", help="end every session of this user")
    which.add_argument(
        "--id",
        dest="session_id",
        metavar="ID",
        help="end only this session (its 12-character id from 'sessions list')",
    )
    s.set_defaults(func=cmd_sessions_revoke)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run a local demo (local users, on-disk sessions, no Redis) in front of a "
        "demo intercom dashboard",
        description="Write a demo config and users file under ./demo-data, print "
        "the address and the demo users' passwords, and serve: the gateway in "
        "reverse-proxy mode in front of a small intercom dashboard (served from this "
        "process on a loopback port) with a live WebSocket event feed. "
        "SSO_GATEWAY_DEMO_PASSWORD, when set, is every demo user's password.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("SSO_GATEWAY_DEMO_PORT", "8080")))
    p.add_argument("--dir", default="demo-data", help="where the demo keeps its files")
    p.add_argument("--policies", default="policies", help="policy folder (default ./policies)")
    p.add_argument("--no-serve", action="store_true", help="only write the files")
    p.set_defaults(func=cmd_demo)
    return parser


# -- helpers -------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    path = args.config or os.environ.get(CONFIG_ENV)
    return load_settings(path)


def _users_file(args: argparse.Namespace) -> Path:
    if args.users_file:
        return Path(args.users_file)
    settings = _settings(args)
    return settings.resolve_path(settings.providers.local.users_file)


def _read_password(confirm: bool = True) -> str:
    env = os.environ.get("SSO_GATEWAY_PASSWORD")
    if env is not None:
        return env
    first = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != first:
        raise GatewayError("the passwords do not match")
    return first


# -- commands ------------------------------------------------------------------


def _preflight(settings: Settings, workers: int | None = None) -> None:
    """Refuse to start (one clear message per problem) rather than let every
    gunicorn worker die on the same broken policy or users file."""
    from gateway.policy_loader import validate_policies
    from gateway.providers.local import validate_users_file

    problems = validate_policies(settings.resolve_path(settings.policies_dir))
    if settings.session.store == "memory" and (workers or settings.listen.workers) > 1:
        # each worker would keep its own sessions, login states and replay caches
        # (a SAML assertion or an OIDC nonce used once per worker, not once)
        problems.append(
            Problem(
                settings.source,
                "session.store",
                "'memory' lives in one process: serve it with one worker (listen.workers: 1 "
                "or --workers 1), or use 'file' or 'redis'",
            )
        )
    if settings.providers.default == "local":
        problems += validate_users_file(settings.resolve_path(settings.providers.local.users_file))
    problems += _saml_problems(settings)
    problems += _jwt_problems(settings)
    if problems:
        raise ConfigError(problems)
    for warning in _proxy_overlap_warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)


def _proxy_overlap_warnings(settings: Settings) -> list[str]:
    """Networks the policy decides by that share addresses with
    ``network.trusted_proxies``: a client inside both may claim, through
    X-Forwarded-For, any address of the policy's network (the walk from the
    right skips trusted addresses and ends at the client's own words)."""
    from gateway.core.network import overlaps, parse_networks
    from gateway.policy_loader import load_policies

    try:
        policy = load_policies(settings.resolve_path(settings.policies_dir))
    except ConfigError:
        return []  # reported as problems already
    trusted = parse_networks(settings.network.trusted_proxies)
    warnings = []
    for where, networks in policy.networks_in_use():
        for proxy, net in overlaps(trusted, networks):
            warnings.append(
                f"network.trusted_proxies entry {proxy} overlaps {net} of {where}: a client "
                f"in {proxy} may claim an address of {net} through X-Forwarded-For; list "
                "only the proxies' own addresses"
            )
    return warnings


def _jwt_problems(settings: Settings) -> list[Problem]:
    if not settings.jwt.enabled:
        return []
    from gateway.assertion import key_file_problems

    signing = settings.jwt_key_path
    published = [settings.resolve_path(p) for p in settings.jwt.published_key_files]
    return [
        Problem(
            settings.source,
            "jwt.key_file" if index is None else f"jwt.published_key_files[{index}]",
            reason,
        )
        for index, reason in key_file_problems(signing, published)
    ]


def _saml_problems(settings: Settings) -> list[Problem]:
    if settings.providers.saml is None or settings.public_url is None:
        return []
    from gateway.providers.saml import check_files

    return check_files(
        settings.providers.saml, settings.public_url, settings.resolve_path, settings.source
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.serve import run

    settings = _settings(args)
    _preflight(settings, args.workers)
    config_path = args.config or os.environ.get(CONFIG_ENV)
    run(settings, config_path, bind=args.bind, workers=args.workers)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.policy_loader import validate_policies
    from gateway.providers.local import validate_users_file

    problems: list[Problem] = []
    config_path = args.config or os.environ.get(CONFIG_ENV)
    source = config_path or "<defaults>"
    try:
        settings = _settings(args)
        policies_dir = settings.resolve_path(settings.policies_dir)
        users_file: Path | None = None
        if settings.providers.default == "local":
            users_file = settings.resolve_path(settings.providers.local.users_file)
        problems.extend(_saml_problems(settings))
        problems.extend(_jwt_problems(settings))
    except ConfigError as exc:
        problems.extend(exc.problems)
        # still look at the policies and users file the broken config names
        policies_dir, users_file = fallback_paths(config_path)
    problems.extend(validate_policies(policies_dir))
    if users_file is not None:
        problems.extend(validate_users_file(users_file))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    for warning in _proxy_overlap_warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"ok: {source} and its policies are valid")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.policy_loader import load_policies

    if args.policies:
        policy_dir = Path(args.policies)
    else:
        policy_dir = _settings(args).resolve_path(_settings(args).policies_dir)
    policy = load_policies(policy_dir)
    when = datetime.fromisoformat(args.at) if args.at else datetime.now(tz=UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=policy.timezone)
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        print("error: --url must be an absolute http(s) URL", file=sys.stderr)
        return 2
    try:
        path = normalise_path(parts.path or "/")
    except AmbiguousPath as exc:
        print(f"decision: DENY (ambiguous path: {exc})")
        return 0
    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    identity = Identity(
        subject=args.user,
        provider="explain",
        groups=groups,
        group_ids=groups,  # as identifiers too: a SID, GUID or DN given here is one
        auth_time=when.timestamp() - args.auth_age,
        mfa=args.mfa,
        amr=tuple(a.strip() for a in args.amr.split(",") if a.strip()),
        acrs=tuple(a.strip() for a in args.acrs.split(",") if a.strip()),
    )
    info = RequestInfo(
        host=(parts.hostname or "").lower(),
        path=path,
        method=args.method.upper(),
        client_ip=args.ip,
        scheme=parts.scheme,
    )
    decision = policy.evaluate(identity, info, when)
    print(format_explanation(decision, identity, info))
    return 0


def cmd_users_add(args: argparse.Namespace) -> int:
    from gateway.providers.local import add_user

    attrs: dict[str, str] = {}
    for item in args.attr:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GatewayError(f"--attr expects KEY=VALUE, got {item!r}")
        attrs[key] = value
    path = _users_file(args)
    add_user(
        path,
        args.username,
        _read_password(),
        name=args.name,
        email=args.email,
        groups=[g.strip() for g in args.groups.split(",") if g.strip()],
        attributes=attrs,
    )
    print(f"added {args.username} to {path}")
    return 0


def cmd_users_passwd(args: argparse.Namespace) -> int:
    from gateway.providers.local import set_password

    path = _users_file(args)
    set_password(path, args.username, _read_password())
    print(f"password of {args.username} changed in {path}")
    return 0


def cmd_users_remove(args: argparse.Namespace) -> int:
    from gateway.providers.local import remove_user

    path = _users_file(args)
    remove_user(path, args.username)
    print(f"removed {args.username} from {path}")
    return 0


def cmd_users_disable(args: argparse.Namespace) -> int:
    from gateway.providers.local import set_disabled

    set_disabled(_users_file(args), args.username, True)
    print(f"disabled {args.username}")
    return 0


def cmd_users_enable(args: argparse.Namespace) -> int:
    from gateway.providers.local import set_disabled

    set_disabled(_users_file(args), args.username, False)
    print(f"enabled {args.username}")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    from gateway.providers.local import list_users

    for user in list_users(_users_file(args)):
        state = " (disabled)" if user.disabled else ""
        print(f"{user.username}\t{user.name}\t{user.email}\t{','.join(user.groups)}{state}")
    return 0


def _open_sessions(args: argparse.Namespace) -> Any:
    from gateway import _build_store, _secret_key
    from gateway.sessions.manager import SessionManager

    settings = _settings(args)
    data_dir = settings.resolve_path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # as create_app does
    store = _build_store(settings)
    return SessionManager(store, _secret_key(settings, data_dir))


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from gateway.assertion import generate_key_file

    path = Path(args.path)
    if path.exists() or path.is_symlink():
        print(f"sso-gateway: {path} exists; a key file is never overwritten", file=sys.stderr)
        return 1
    try:
        kid = generate_key_file(path)
    except OSError as exc:
        print(f"sso-gateway: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote a P-256 signing key to {path} (kid {kid})")
    return 0


def cmd_sessions_list(args: argparse.Namespace) -> int:
    manager = _open_sessions(args)
    now = time.time()
    rows = manager.list(args.user)
    for s in rows:
        print(
            f"{s.short_id}\t{s.identity.subject}\t{s.tier or '-'}\t{s.identity.provider}\t"
            f"{s.client_ip}\tidle {int(s.idle_remaining(now))}s\t"
            f"absolute {int(s.absolute_remaining(now))}s"
        )
    print(f"{len(rows)} session(s)", file=sys.stderr)
    return 0


def cmd_sessions_revoke(args: argparse.Namespace) -> int:
    from gateway.audit import AuditLog

    manager = _open_sessions(args)
    settings = _settings(args)
    audit = AuditLog(settings.audit_destination)
    if args.session_id is not None:
        try:
            session = manager.revoke_short_id(args.session_id)
        except ValueError as exc:
            print(f"sso-gateway: {exc}", file=sys.stderr)
            return 2
        if session is None:
            print(f"sso-gateway: no session has the id {args.session_id}", file=sys.stderr)
            return 1
        audit.emit(
            "sessions_revoked",
            user=session.identity.subject,
            count=1,
            sessions=[session.short_id],
            by="cli",
        )
        print(f"revoked session {session.short_id} of {session.identity.subject}")
        return 0
    removed = manager.revoke_user(args.user)
    audit.emit(
        "sessions_revoked",
        user=args.user,
        count=len(removed),
        sessions=[k[:12] for k in removed],
        by="cli",
    )
    print(f"revoked {len(removed)} session(s) of {args.user}")
    return 0


DEMO_USERS = (
    (
        "alice",
        "Alice Operator",
        ["Intercom-Operators", "UC-Users"],
        {"ipPhone": "4711", "department": "Security"},
    ),
    ("bob", "Bob Admin", ["Intercom-Admins", "UC-Admins"], {"ipPhone": "4712", "department": "IT"}),
    (
        "carol",
        "Carol Supervisor",
        ["UC-Supervisors", "UC-Users"],
        {"telephoneNumber": "+49 30 1234-4713", "department": "Reception"},
    ),
    ("dave", "Dave Contractor", ["Contractors"], {"department": "Facility contractor"}),
)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.providers.local import add_user

    base = Path(args.dir).resolve()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    policies = Path(args.policies).resolve()
    if not policies.is_dir():
        raise GatewayError(f"policy folder {policies} not found (run from the repository root)")
    users_file = base / "users.yaml"
    users_file.unlink(missing_ok=True)
    fixed = os.environ.get("SSO_GATEWAY_DEMO_PASSWORD")
    credentials: list[tuple[str, str, str]] = []
    for username, name, group_list, attrs in DEMO_USERS:
        password = fixed or secrets.token_urlsafe(9)
        add_user(
            users_file,
            username,
            password,
            name=name,
            email=f"{username}@example.test",
            groups=group_list,
            attributes=attrs,
        )
        credentials.append((username, password, ", ".join(group_list)))
    from gateway.demo_upstream import DemoUpstream

    dashboard = DemoUpstream()  # served from this process; gunicorn's workers proxy to it
    config = base / "config.yaml"
    config.write_text(
        "# written by `sso-gateway demo`; plain HTTP on loopback only\n"
        "site_name: Demo Intercom Site\n"
        f"data_dir: {base / 'var'}\n"
        f"policies_dir: {policies}\n"
        "cookie:\n  secure: false   # plain-http demo only; never in production\n"
        "session:\n  store: file\n  idle_timeout: 600\n  absolute_lifetime: 3600\n"
        f"providers:\n  default: local\n  local:\n    users_file: {users_file}\n"
        f"listen:\n  host: {args.host}\n  port: {args.port}\n  workers: 2\n"
        "proxy:   # everything outside /.sso/ goes to the demo intercom dashboard\n"
        "  upstreams:\n"
        "    - name: demo-dashboard\n"
        "      match: {hosts: [127.0.0.1, localhost]}\n"
        f"      url: {dashboard.url}\n",
        encoding="utf-8",
    )
    settings = load_settings(config)
    print(f"Demo gateway: http://{args.host}:{args.port}/.sso/login")
    print(f"Demo intercom dashboard through the gateway: http://{args.host}:{args.port}/")
    print("Demo users (user / password / groups):")
    for username, password, groups in credentials:
        print(f"  {username:6} {password:14} {groups}")
    sys.stdout.flush()
    if args.no_serve:
        dashboard.stop()
        return 0
    from gateway.serve import run

    dashboard.start()
    try:
        run(settings, str(config), bind=None, workers=None)
    finally:
        dashboard.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
