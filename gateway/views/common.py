"""Helpers shared by the views: the request being judged, the session behind the
cookie, and cookie writing.  Translation only: decisions are made in the core."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from flask import Response, current_app
from werkzeug.wrappers import Request

from gateway.core.errors import AmbiguousPath, UnsafeRedirect
from gateway.core.model import RequestInfo
from gateway.core.paths import normalise_path
from gateway.core.policy import normalise_host
from gateway.core.redirects import safe_redirect
from gateway.services import Services
from gateway.sessions.manager import Expired, Session

_METHOD = re.compile(r"[A-Z]{1,16}\Z")
_ORIGINAL_URL = re.compile(
    r"(?P<scheme>[Hh][Tt][Tt][Pp][Ss]?)://"
    r"(?P<host>[A-Za-z0-9.\-]{1,253}(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?)"
    r"(?P<uri>/[^#\s]*)\Z"
)
_HOST = re.compile(r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?\Z|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?\Z")

FORWARD_HEADERS = (
    "X-Original-URL",
    "X-Original-Method",
    "X-Forwarded-Method",
    "X-Forwarded-Host",
    "X-Forwarded-Uri",
    "X-Forwarded-Proto",
    "X-Forwarded-For",
)


def services() -> Services:
    svc: Services = current_app.extensions["gateway"]
    return svc


def remote_addr(req: Request) -> str:
    return req.remote_addr or ""


def from_trusted_proxy(svc: Services, req: Request) -> bool:
    return remote_addr(req) in svc.trusted_proxies


def client_ip(svc: Services, req: Request) -> str:
    return svc.trusted_proxies.client_address(
        remote_addr(req), req.environ.get("HTTP_X_FORWARDED_FOR")
    )


def request_host(req: Request) -> str:
    return (req.host or "").lower()


def public_scheme(svc: Services, req: Request) -> str:
    """The scheme the browser used: X-Forwarded-Proto from a trusted proxy (TLS is
    usually terminated in front of the gateway), else this request's own.  Its
    last entry: the one the nearest proxy (the trusted peer) wrote; a proxy that
    appends leaves the client's own value in front (the reverse proxy reads the
    same entry, gateway.views.proxy.ProxyApp._forwarded)."""
    if from_trusted_proxy(svc, req):
        proto = req.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
        if proto in ("http", "https"):
            return proto
    return req.scheme


@dataclass(frozen=True)
class Judged:
    """The request to judge, plus whether it came from the proxy's headers."""

    info: RequestInfo
    forwarded: bool


def original_request(svc: Services, req: Request) -> Judged:
    """The original request a forward-auth call asks about.

    The ``X-Original-*`` / ``X-Forwarded-*`` headers are believed only from a
    trusted proxy address; from anyone else the request is judged as itself.
    Raises AmbiguousPath when the path or method cannot be read unambiguously.
    """
    ip = client_ip(svc, req)
    headers = req.headers
    if from_trusted_proxy(svc, req):
        original_url = req.environ.get("HTTP_X_ORIGINAL_URL")
        if original_url:
            # Strict: scheme://host[:port] followed by the path and nothing else.
            # A generic URL parser would let a Host of "good.example?" move the
            # real path into the query, and the policy would judge "/".
            match = _ORIGINAL_URL.match(original_url)
            if match is None:
                raise AmbiguousPath("X-Original-URL is not scheme://host/path")
            scheme, host, raw_uri = match.group("scheme", "host", "uri")
            environ = req.environ
            method = (
                environ.get("HTTP_X_ORIGINAL_METHOD")
                or environ.get("HTTP_X_FORWARDED_METHOD")
                or "GET"
            )
            raw = raw_uri.split("?", 1)[0]
            _check_pinned_host(req, host)
            return Judged(_info(host, raw, method, ip, scheme.lower()), True)
        uri = headers.get("X-Forwarded-Uri")
        fhost = headers.get("X-Forwarded-Host")
        if uri or fhost:
            if not (fhost or "").strip():
                # Traefik always names the host; without it the request would be
                # judged as if it were for the gateway's own host name
                raise AmbiguousPath("X-Forwarded-Uri without X-Forwarded-Host")
            if "," in (fhost or ""):
                # several hosts (repeated, or a list a proxy passed on): which one
                # the request is for cannot be told, so no host's routes judge it
                raise AmbiguousPath("X-Forwarded-Host names more than one host")
            uri = uri or "/"
            raw = uri.split("?", 1)[0]  # a '#' left in is refused by normalise_path
            # the nearest proxy's word: the last entry, as public_scheme reads it
            scheme = (headers.get("X-Forwarded-Proto") or req.scheme).split(",")[-1].strip()
            method = headers.get("X-Forwarded-Method") or "GET"
            host = (fhost or "").strip()
            _check_pinned_host(req, host)
            return Judged(_info(host, raw, method, ip, scheme), True)
    environ = req.environ
    raw_uri = (
        environ.get("RAW_URI")
        or environ.get("REQUEST_URI")
        or environ.get("SCRIPT_NAME", "") + _quote(environ.get("PATH_INFO", "/"))
    )
    raw = raw_uri.split("?", 1)[0]
    return Judged(_info(req.host, raw, req.method, ip, req.scheme), False)


def _check_pinned_host(req: Request, host: str) -> None:
    """``/.sso/auth?host=NAME`` (set by the proxy in its auth URL, e.g. ingress-nginx
    ``auth-url: http://gateway/.sso/auth?host=$host``) names the host whose server
    block asks.  The original request's host must be that one (case and port
    and one trailing dot ignored, as the policy compares hosts), or the request is
    refused as ambiguous: ingress-nginx builds
    X-Original-URL from the client's Host header, which an absolute-form request
    line (``GET https://a.example/admin/`` with ``Host: b.example``) can make
    differ from the host nginx routed by, and b.example's routes must never judge
    a request for a.example."""
    if not req.environ.get("QUERY_STRING"):
        return  # the usual auth subrequest: no query to parse
    pinned = req.args.getlist("host")
    if not pinned:
        return
    if len(pinned) != 1 or not _HOST.match(pinned[0].strip()):
        raise AmbiguousPath("the auth URL's host parameter is not one host name")
    if normalise_host(pinned[0]) != normalise_host(host):
        raise AmbiguousPath("the original URL names another host than the one the proxy routed")


def untrusted_forward_headers(svc: Services, req: Request) -> list[str]:
    """Names of original-request headers sent by an address we do not trust."""
    if from_trusted_proxy(svc, req):
        return []
    return [h for h in FORWARD_HEADERS[:-1] if h in req.headers]


def _quote(path_info: str) -> str:
    """Re-encode a decoded WSGI PATH_INFO (latin-1 carried UTF-8 bytes)."""
    return quote(path_info.encode("latin-1").decode("utf-8", "replace"), safe="/;=@:+$,!*'()&~")


def _info(host: str, raw_path: str, method: str, ip: str, scheme: str) -> RequestInfo:
    method = method.strip().upper()
    if not _METHOD.match(method):
        raise AmbiguousPath("the original method is not a valid HTTP method")
    host = host.strip().lower()
    if not _HOST.match(host):
        raise AmbiguousPath("the original host is not a valid host name")
    if scheme not in ("http", "https"):
        scheme = "https"
    # the proxy in front passes the raw path on: a dot segment is refused, never
    # resolved (the upstream might resolve it otherwise, or not at all)
    path = normalise_path(raw_path, refuse_dot_segments=True)
    return RequestInfo(host=host, path=path, method=method, client_ip=ip, scheme=scheme)


def checked_redirect(svc: Services, req: Request, target: str) -> str | None:
    """``target`` if it is a redirect this gateway may follow (same site or on
    ``redirects.allowed_domains``); '' when none was given; None when refused
    (and audited)."""
    if not target:
        return ""
    try:
        return safe_redirect(
            target,
            request_host=request_host(req),
            request_scheme=public_scheme(svc, req),
            allowed_domains=svc.settings.redirects.allowed_domains,
        )
    except UnsafeRedirect as exc:
        svc.audit.emit(
            "redirect_refused",
            target=target[:200],
            reason=str(exc),
            client_ip=client_ip(svc, req),
        )
        return None


def now_dt(svc: Services, now: float) -> datetime:
    return datetime.fromtimestamp(now, tz=UTC)


def cookie_value(header: str | None, name: str) -> str | None:
    """The first cookie called ``name`` in a Cookie header (what werkzeug's parser
    would give, without parsing every other cookie on every forward-auth call).
    Quoted values are unquoted; the gateway's own values are never quoted."""
    if not header or name not in header:
        return None
    for part in header.split(";"):
        key, _, value = part.partition("=")
        if key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def load_session(svc: Services, req: Request, now: float) -> Session | Expired | None:
    """The session behind the cookie.  A tampered cookie counts as none (and is
    audited); store failures raise StoreUnavailable."""
    cookie = cookie_value(req.environ.get("HTTP_COOKIE"), svc.cookie_name)
    if cookie is None:
        return None
    key = svc.sessions.key_from_cookie(cookie)
    if key is None:
        svc.audit.emit(
            "invalid_cookie", client_ip=client_ip(svc, req), reason="bad signature or format"
        )
        return None
    result = svc.sessions.load(key, now)
    if isinstance(result, Expired):
        svc.audit.emit("session_expired", user=result.user, session=result.key[:12], why=result.why)
        if svc.signer is not None:
            svc.signer.forget(result.key)
    return result


def set_session_cookie(svc: Services, response: Response, value: str, max_age: int) -> None:
    c = svc.settings.cookie
    response.set_cookie(
        svc.cookie_name,
        value,
        max_age=max_age,
        path="/",
        domain=c.domain,
        secure=c.secure,
        httponly=True,
        samesite=c.samesite,
    )


def clear_session_cookie(svc: Services, response: Response) -> None:
    c = svc.settings.cookie
    response.delete_cookie(
        svc.cookie_name,
        path="/",
        domain=c.domain,
        secure=c.secure,
        httponly=True,
        samesite=c.samesite,
    )


def expire_upstream_cookies(svc: Services, response: Response) -> None:
    """Expire every cookie listed in ``proxy.upstreams[].logout_cookies`` (on
    ``/`` and, for an upstream under a path prefix, on that prefix too): the
    dashboards' own sessions end with the gateway's."""
    secure = svc.settings.cookie.secure
    for upstream in svc.settings.proxy.upstreams:
        prefix = upstream.match.path_prefix.rstrip("/")
        for path in ("/", prefix) if prefix else ("/",):
            for name in upstream.logout_cookies:
                response.delete_cookie(name, path=path, secure=secure, httponly=True)


def wants_json(req: Request) -> bool:
    if req.headers.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return True
    best = req.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"
