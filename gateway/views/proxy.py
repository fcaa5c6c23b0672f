"""Reverse-proxy mode: every request outside ``/.sso/`` is judged and, when
allowed, streamed to the upstream its host and path select.

:class:`ProxyApp` is a plain WSGI layer in front of Flask (like
:class:`gateway.views.forward_auth.ForwardAuthApp`).  In order:

1. the raw path is normalised (:func:`gateway.core.paths.normalise_path`); an
   ambiguous path is refused with 400, a path into ``/.sso/`` spelled another way
   (``//.sso/``) too;
2. the upstream is selected by host and canonical path; none: 404;
3. session and policy decide on that canonical path: no session -> 302 to
   ``/.sso/start`` for a browser navigation (GET/HEAD), 401 JSON for everything
   else; denied -> 403 page naming the tiers that would do (``TRACE``/``TRACK``
   are refused with 405 before this, for everyone: the echo would carry the
   device credentials);
4. the request goes upstream with exactly ``encode_path`` of the canonical path
   (minus a stripped prefix), identity headers and the signed assertion added,
   hop-by-hop and forwarding headers replaced, the gateway's cookies removed;
   request and response bodies are streamed, never held whole in memory;
5. the answer goes back minus hop-by-hop headers and the gateway's cookies, with
   ``Location`` made public and, unless the route is public, marked ``private``
   for shared caches;
6. upstream failures become 502/504 pages; state-changing requests are audited.
"""

from __future__ import annotations

import functools
import http
import logging
import re
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flask import Flask
from werkzeug.wrappers import Request

from gateway import access_log
from gateway.core.errors import AmbiguousPath, StoreUnavailable
from gateway.core.model import Decision, Identity, Outcome, RequestInfo
from gateway.core.paths import normalise_path
from gateway.device_auth import DeviceCredentials
from gateway.http_server import SERVER_SOFTWARE
from gateway.services import Services
from gateway.streams import StreamHandle, StreamRegistry
from gateway.upstream_client import InvalidRequest, UpstreamError, UpstreamResponse
from gateway.upstreams import Upstream, UpstreamTable
from gateway.views.common import client_ip, public_scheme, wants_json
from gateway.views.judge import judge
from gateway.views.respond import identity_headers, json_answer, page
from gateway.websocket_frames import SESSION_ENDED, FrameBoundary, close_frame

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # measured: 64 KiB moved ~1.0 GB/s on loopback, 256 KiB ~1.45 GB/s
# request bodies up to this size are held so that a Digest challenge can be
# answered by sending them again; larger ones stream once, after an anonymous
# probe has earned a fresh challenge (see device_auth, ProxyApp._learn_challenge)
REPLAY_LIMIT = 1024 * 1024
# how much of a refused WebSocket handshake's answer is passed back
_REFUSAL_LIMIT = 1024 * 1024
SSO_PREFIX = "/.sso/"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# methods whose answer is the request itself (TRACE, and IIS's TRACK): headers the
# gateway adds (the device credentials, the signed assertion) would reach the
# browser.  Refused for every upstream, never forwarded.
ECHOING_METHODS = frozenset({"TRACE", "TRACK"})
# what a 405 for them names in Allow (the gateway cannot know what a device serves)
_ALLOWED_METHODS = "GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"

# RFC 9110 7.6.1 plus the non-standard ones still seen in the wild
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Inbound headers by which a client could tell the upstream another client
# address, scheme, host, port or URL than the real ones: frameworks and device web
# UIs honour many of them (IP allow-lists, "is this HTTPS?", links built from them).
# Only a proxy may set them, and the one in front of the upstream is the gateway: it
# writes X-Forwarded-For/-Proto/-Host itself (``ProxyApp._forwarded`` reads what
# the ``proxy.trusted_hops`` proxies in front said, from the environ, not from
# here).  Matched in any case and with '_' for '-' (``_inbound_name``).
CLIENT_HINT_HEADERS = frozenset(
    {
        # client address
        "forwarded",
        "forwarded-for",
        "x-forwarded",
        "x-real-ip",
        "x-client-ip",
        "client-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "x-proxyuser-ip",
        "proxy-client-ip",
        "wl-proxy-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-remote-ip",
        "x-remote-addr",
        "x-originating-ip",
        # scheme
        "x-url-scheme",
        "x-scheme",
        "front-end-https",
        "x-arr-ssl",
        # host and URL
        "x-host",
        "x-http-host-override",
        "x-rewrite-url",
        # a TLS client certificate a front proxy verified (the gateway verifies
        # none: a client must never bring its own)
        "ssl-client-cert",
        "x-ssl-client-cert",
        "x-ssl-client-verify",
        "x-ssl-client-dn",
        "x-ssl-client-s-dn",
        "x-ssl-client-i-dn",
        "x-client-cert",
        "x-client-verify",
        "x-client-dn",
        "x-arr-clientcert",
    }
)
# ... and every inbound header whose name starts with one of these (X-Forwarded-Ssl,
# -Scheme, -Port, -Path, -Uri, -Prefix, -Server, X-Original-URI, -URL, -Host, ...)
CLIENT_HINT_PREFIXES = ("x-forwarded-", "x-original-")
# inbound headers never passed on (besides the identity headers, those the client's
# Connection header names, and the CLIENT_HINT_PREFIXES): hop-by-hop, those the
# gateway writes itself, the client hints, and method overrides some frameworks
# honour, which would let the upstream act with another method than the one judged
_NOT_FORWARDED = (
    HOP_BY_HOP
    | CLIENT_HINT_HEADERS
    | {"host", "expect", "x-http-method-override", "x-http-method", "x-method-override"}
)
# upstream answer headers never passed on: those the gateway's server writes
# itself, and those by which an answer would steer a web server in front of the
# gateway (nginx follows X-Accel-Redirect to any location of its own, internal
# ones such as its /.sso/auth subrequest included; Apache and lighttpd follow
# X-Sendfile to a file of theirs): a device's answer is data, never an order to
# the front proxy
_FRONT_PROXY_ORDERS = frozenset(
    {
        "x-accel-redirect",
        "x-accel-buffering",
        "x-accel-charset",
        "x-accel-limit-rate",
        "x-sendfile",
        "x-lighttpd-send-file",
        "x-lighttpd-sendfile",
    }
)
_NOT_RETURNED = HOP_BY_HOP | _FRONT_PROXY_ORDERS | {"date", "server"}
# Caching in front of the gateway.  An answer the person's session decided is
# marked ``private`` (RFC 9111 5.2.2.7): a shared cache (a corporate proxy, a CDN,
# a caching ingress) must not serve it to anyone else, who would then never be
# judged.  Of the upstream's Cache-Control these go (5.2.2): ``public`` and
# ``s-maxage`` (let a shared cache store it), ``proxy-revalidate`` (for shared
# caches only) and ``private`` (a qualified ``private="Set-Cookie"`` leaves the
# rest shareable; a bare one is added back); ``max-age``, ``no-cache``,
# ``no-store``, ``must-revalidate``, ``immutable``, ... stay for the browser.
_SHARED_CACHE_DIRECTIVES = frozenset({"public", "s-maxage", "proxy-revalidate", "private"})
# answer headers by which a cache in front would store an answer whatever its
# Cache-Control says: dropped from a person's answers
_SHARED_CACHE_HEADERS = frozenset(
    {
        "cdn-cache-control",  # RFC 9213
        "cloudflare-cdn-cache-control",
        "surrogate-control",  # Fastly, Varnish, Akamai
        "edge-control",  # Akamai
        "x-accel-expires",  # nginx (proxy_cache): before Cache-Control
    }
)
_CACHE_HEADERS = _SHARED_CACHE_HEADERS | {"cache-control"}
# one Cache-Control directive: up to a ',' outside a quoted string
_DIRECTIVE = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*"?)+')
_HOST = re.compile(r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?\Z|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?\Z")
_QUERY = re.compile(r"[!-~]*\Z")  # printable ASCII, no space (browsers encode the rest)
_DIGITS = re.compile(r"[0-9]{1,19}\Z")
_COOKIE_SEPARATOR = re.compile(r"[;,]")


@dataclass(frozen=True)
class _Forwarded:
    """What the upstream is told about the hops in front of it."""

    chain: tuple[str, ...]  # X-Forwarded-For
    proto: str
    host: str


@dataclass(frozen=True)
class _Call:
    """One allowed (or public) request on its way upstream."""

    environ: dict[str, Any]
    start_response: Any
    req: Request
    upstream: Upstream
    info: RequestInfo
    query: str
    decision: Decision
    identity: Identity | None
    identity_headers: list[tuple[str, str]]
    owner: tuple[str, str] | None  # (session key, user): ending the session cuts this
    forwarded: _Forwarded


class ProxyApp:
    """WSGI middleware: ``/.sso/...`` goes to Flask, everything else upstream."""

    def __init__(
        self,
        flask_wsgi: Any,
        app: Flask,
        svc: Services,
        table: UpstreamTable,
        streams: StreamRegistry,
        *,
        websockets: bool,
    ) -> None:
        self.flask_wsgi = flask_wsgi
        self.app = app
        self.svc = svc
        self.table = table
        self.streams = streams
        # WebSockets need the raw connection and a greenlet per direction:
        # only under gunicorn's gevent worker
        self.websockets = websockets
        base = svc.settings.cookie.name
        # (the prefixes in any case: RFC 6265bis reads them case-insensitively)
        self._own_cookie = re.compile(
            r"(?i:__Host-|__Secure-)?" + re.escape(base) + r"(?:_[A-Za-z0-9_]*)?\Z"
        )

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path_info: str = environ.get("PATH_INFO") or "/"
        if path_info.startswith(SSO_PREFIX) or path_info == SSO_PREFIX[:-1]:
            return self.flask_wsgi(environ, start_response)  # type: ignore[no-any-return]
        started = time.perf_counter()
        try:
            answer = self._proxy(environ, start_response)
            if self.svc.metrics is not None and not _is_upgrade(environ):
                # until the upstream's status and headers (bodies stream afterwards)
                self.svc.metrics.observe("proxy", time.perf_counter() - started)
            return answer
        except Exception:
            log.exception("proxying failed")
            self.svc.audit.emit("error", where="proxy", reason="internal error; failed closed")
            return self._page(
                environ,
                start_response,
                503,
                "Temporarily unavailable",
                "The gateway cannot decide right now. Try again in a moment.",
            )

    # -- answers -------------------------------------------------------------------
    def _page(
        self,
        environ: dict[str, Any],
        start_response: Any,
        status: int,
        title: str,
        message: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Iterable[bytes]:
        req = Request(environ)
        with self.app.app_context():
            if wants_json(req) or _is_upgrade(environ):
                resp = json_answer(
                    status, {"error": _ERRORS.get(status, "error"), "message": message}
                )
            else:
                resp = page(
                    "error.html",
                    status,
                    site_name=self.svc.settings.site_name,
                    title=title,
                    message=message,
                )
        for name, value in headers:
            resp.headers[name] = value
        return resp(environ, start_response)

    def _login(
        self, environ: dict[str, Any], start_response: Any, req: Request, decision: Decision
    ) -> Iterable[bytes]:
        navigation = req.method in ("GET", "HEAD") and not _is_upgrade(environ)
        if not navigation or wants_json(req):
            error = "fresh_login_required" if decision.step_up else "login_required"
            with self.app.app_context():
                resp = json_answer(401, {"error": error})
            return resp(environ, start_response)
        # what /.sso/start checks rd against: this request's host and public scheme
        target = f"{public_scheme(self.svc, req)}://{req.host}{_raw_uri(environ)}"
        location = "/.sso/start?rd=" + quote(target, safe="")
        if decision.step_up:
            location += "&prompt=login"
        start_response(
            "302 Found",
            [("Location", location), ("Cache-Control", "no-store"), ("Content-Length", "0")],
        )
        return [b""]

    def _denied(
        self, environ: dict[str, Any], start_response: Any, req: Request, decision: Decision
    ) -> Iterable[bytes]:
        tiers = list(decision.required_tiers)
        with self.app.app_context():
            if wants_json(req) or _is_upgrade(environ):
                resp = json_answer(403, {"error": "forbidden", "required_tiers": tiers})
            else:
                needed = ", ".join(tiers) if tiers else "none that you hold"
                resp = page(
                    "error.html",
                    403,
                    site_name=self.svc.settings.site_name,
                    title="Access denied",
                    message=f"This page needs the tier: {needed}. Ask your administrator "
                    "if you should have it.",
                )
        return resp(environ, start_response)

    # -- the request ---------------------------------------------------------------
    def _proxy(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        svc = self.svc
        req = Request(environ)
        ip = client_ip(svc, req)
        raw_uri = _raw_uri(environ)
        raw_path, _, query = raw_uri.partition("?")
        host = req.host or ""
        try:
            if not _HOST.match(host):
                raise AmbiguousPath("the Host header is not a host name")
            if not _QUERY.match(query):
                raise AmbiguousPath("the query string has raw spaces or non-ASCII characters")
            path = normalise_path(raw_path)
            if path.startswith(SSO_PREFIX) or path == SSO_PREFIX[:-1]:
                raise AmbiguousPath("a path into /.sso/ spelled another way")
        except AmbiguousPath as exc:
            svc.audit.emit("denied", reason="ambiguous-request", detail=str(exc), client_ip=ip)
            return self._page(
                environ,
                start_response,
                400,
                "Bad request",
                "The address of this request cannot be read unambiguously.",
            )
        upstream = self.table.select(host, path)
        if upstream is None:
            if svc.audit_limiter.allow(("no-upstream", ip), svc.clock()):
                svc.audit.emit(
                    "proxy_no_upstream",
                    host=host[:253],
                    path=path[:200],
                    client_ip=ip,
                    note="reported at most once a minute per address",
                )
            return self._page(
                environ,
                start_response,
                404,
                "Not found",
                "This gateway does not serve that address.",
            )
        if req.method in ECHOING_METHODS:  # (werkzeug's method is upper-cased)
            # before the session, the policy or the upstream: nobody gets an echo
            svc.audit.emit(
                "denied",
                reason="method-not-allowed",
                method=req.method,
                upstream=upstream.name,
                host=host[:253],
                path=path[:200],
                client_ip=ip,
            )
            return self._page(
                environ,
                start_response,
                405,
                "Method not allowed",
                f"This gateway does not pass {req.method} requests on.",
                headers=[("Allow", _ALLOWED_METHODS)],
            )
        forwarded = self._forwarded(environ, req)
        info = RequestInfo(
            host=host.lower(), path=path, method=req.method, client_ip=ip, scheme=forwarded.proto
        )
        now = svc.clock()
        try:
            verdict = judge(svc, req, info, now)
        except StoreUnavailable as exc:
            svc.audit.emit("store_unavailable", where="proxy", detail=str(exc))
            return self._page(
                environ,
                start_response,
                503,
                "Temporarily unavailable",
                "The session store cannot be reached. Try again in a moment.",
            )
        decision = verdict.decision
        access_log.note(environ, verdict.identity, decision.tier, ip, upstream.name)
        if decision.outcome is Outcome.LOGIN:
            return self._login(environ, start_response, req, decision)
        if decision.outcome is Outcome.DENY:
            return self._denied(environ, start_response, req, decision)
        if decision.outcome is Outcome.ERROR:
            return self._page(
                environ,
                start_response,
                503,
                "Temporarily unavailable",
                "The gateway cannot decide right now.",
            )
        allowed = verdict.allowed_session
        call = _Call(
            environ=environ,
            start_response=start_response,
            req=req,
            upstream=upstream,
            info=info,
            query=query,
            decision=decision,
            identity=verdict.identity,
            identity_headers=(
                identity_headers(svc, allowed.identity, decision.tier, allowed.key, now)
                if allowed is not None
                else []
            ),
            owner=(allowed.key, allowed.identity.subject) if allowed is not None else None,
            forwarded=forwarded,
        )
        if _is_upgrade(environ):
            return self._websocket(call)
        return self._forward(call)

    def _forward(self, call: _Call) -> Iterable[bytes]:
        svc = self.svc
        environ, start_response, req = call.environ, call.start_response, call.req
        upstream, info, query, owner = call.upstream, call.info, call.query, call.owner
        identity, decision = call.identity, call.decision
        headers = self._request_headers(call)
        body: Iterable[bytes] | bytes | None
        body, length = _request_body(environ)
        if length is not None:
            headers.append(("Content-Length", str(length)))
        path = upstream.upstream_path(info.path)
        url = path + ("?" + query if query else "")
        state_changing = info.method not in SAFE_METHODS
        audit_fields: dict[str, Any] = {
            "user": identity.subject if identity is not None else None,
            "tier": decision.tier,
            "upstream": upstream.name,
            "method": info.method,
            "path": info.path,
            "client_ip": info.client_ip,
        }
        bridge = upstream.credentials if owner is not None else None
        if upstream.credentials is not None:  # the device's login is the gateway's
            headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
        if bridge is not None:
            if bridge.scheme == "digest" and length is not None and length <= REPLAY_LIMIT:
                body = b"".join(body) if body is not None else None  # small: may be resent
        replayable = body is None or isinstance(body, bytes)
        challenged = False
        try:
            if bridge is not None and bridge.scheme == "digest" and not replayable:
                # a body that cannot be sent twice goes with a challenge issued just
                # now, earned by an anonymous probe that cannot act (_learn_challenge)
                challenged = self._learn_challenge(upstream, bridge, path, _upstream_host(call))
            for attempt in (1, 2):
                sent = headers
                if bridge is not None:
                    authorization = bridge.authorization(info.method, url)
                    if authorization is not None:
                        sent = [*headers, ("Authorization", authorization)]
                resp = upstream.pool.request(
                    info.method, url, sent, body, chunked=body is not None and length is None
                )
                if bridge is None or resp.status != 401:
                    break
                retry = bridge.learn(resp.getlist("WWW-Authenticate"))
                resp.drain()
                resp.release()
                if attempt == 1 and retry and replayable:
                    continue
                # a streamed body went with the challenge its probe earned: a 401 now
                # is a refusal; without one (the probe was not challenged) the new
                # challenge is remembered and the next try carries it
                unsent = attempt == 1 and retry and not challenged
                svc.audit.emit(
                    "device_login_failed",
                    **audit_fields,
                    scheme=bridge.scheme,
                    reason="challenged, body too large to resend" if unsent else "refused",
                )
                if state_changing:
                    svc.audit.emit("proxy_action", **audit_fields, status=502)
                return self._page(
                    environ,
                    start_response,
                    502,
                    "Device sign-in failed",
                    f"The {upstream.name} device did not accept the gateway's credentials."
                    + (" Try again." if unsent else ""),
                )
        except (OSError, InvalidRequest) as exc:
            # UpstreamError says what failed; other OSErrors are the client's body
            timeout = isinstance(exc, TimeoutError)
            status = 504 if timeout else 502
            svc.audit.emit(
                "upstream_error",
                **audit_fields,
                status=status,
                reason=_failure_kind(exc),
                detail=str(exc)[:300],
            )
            if state_changing:
                svc.audit.emit("proxy_action", **audit_fields, status=status)
            title = "Upstream timed out" if timeout else "Upstream unavailable"
            message = (
                f"The {upstream.name} service did not answer in time."
                if timeout
                else f"The {upstream.name} service could not be reached."
            )
            return self._page(environ, start_response, status, title, message)
        if state_changing:
            svc.audit.emit("proxy_action", **audit_fields, status=resp.status)
        public_origin = f"{info.scheme}://{req.host}"
        out = self._answer_headers(
            resp.headers, upstream, public_origin, personal=_personal(decision), status=resp.status
        )
        start_response(f"{resp.status} {_reason(resp.status)}", out)
        return _Relay(resp, svc, audit_fields, self.streams, owner, upstream.name)

    # -- WebSockets ------------------------------------------------------------------
    def _websocket(self, call: _Call) -> Iterable[bytes]:
        """Relay an authorised WebSocket upgrade: the handshake goes upstream on a
        connection of its own; after its ``101`` the bytes are copied both ways
        unchanged (the endpoints do the framing) until either side closes, the
        upstream is silent for ``read_timeout``, or the session ends."""
        svc = self.svc
        environ, start_response, req = call.environ, call.start_response, call.req
        upstream, info, query, owner = call.upstream, call.info, call.query, call.owner
        identity, decision = call.identity, call.decision
        client = environ.get("gunicorn.socket")
        if not self.websockets or client is None:
            return self._page(
                environ,
                start_response,
                501,
                "Not supported",
                "WebSockets need the gevent worker (listen.worker_class).",
            )
        if req.method != "GET" or environ.get("HTTP_UPGRADE", "").strip().lower() != "websocket":
            svc.audit.emit(
                "denied",
                reason="ambiguous-request",
                detail="an upgrade that is not a WebSocket GET",
                client_ip=info.client_ip,
            )
            return self._page(
                environ,
                start_response,
                400,
                "Bad request",
                "Only WebSocket upgrades (GET, Upgrade: websocket) are relayed.",
            )
        fields: dict[str, Any] = {
            "user": identity.subject if identity is not None else None,
            "tier": decision.tier,
            "upstream": upstream.name,
            "path": info.path,
            "client_ip": info.client_ip,
        }
        origin = environ.get("HTTP_ORIGIN")
        # the public host: what a trusted front proxy says (X-Forwarded-Host, with
        # proxy.trusted_hops), else this request's own Host
        if origin is not None and not _same_origin(origin, call.forwarded.host):
            # a page on another site opening a WebSocket with the person's cookie
            # (cross-site WebSocket hijacking): browsers always send Origin
            svc.audit.emit(
                "denied",
                **fields,
                method="GET",
                reason="websocket-cross-origin",
                origin=origin[:200],
            )
            with self.app.app_context():
                resp = json_answer(403, {"error": "forbidden", "message": "cross-origin WebSocket"})
            return resp(environ, start_response)
        headers = self._request_headers(call)
        headers += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
        path = upstream.upstream_path(info.path)
        target = path + ("?" + query if query else "")
        bridge = upstream.credentials if owner is not None else None
        if upstream.credentials is not None:  # the device's login is the gateway's
            headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
        if bridge is not None:
            if bridge.scheme == "digest" and not bridge.has_challenge:
                # the handshake cannot be sent twice: a device not heard from yet
                # is asked for its challenge first
                self._learn_challenge(upstream, bridge, path, _upstream_host(call))
            authorization = bridge.authorization("GET", target)
            if authorization is not None:
                headers.append(("Authorization", authorization))
        try:
            answer = upstream.pool.upgrade(target, headers)
        except (OSError, InvalidRequest) as exc:
            timeout = isinstance(exc, TimeoutError)
            status = 504 if timeout else 502
            kind = _failure_kind(exc)
            svc.audit.emit(
                "upstream_error",
                **fields,
                method="GET",
                status=status,
                reason=kind,
                detail=str(exc)[:300],
            )
            return self._page(
                environ,
                start_response,
                status,
                "Upstream unavailable",
                f"The {upstream.name} service could not be reached."
                if kind == "connect"
                else f"The {upstream.name} service did not answer the WebSocket request.",
            )
        public_origin = f"{info.scheme}://{req.host}"
        out = self._answer_headers(
            answer.headers,
            upstream,
            public_origin,
            personal=_personal(decision) and answer.status != 101,
            status=answer.status,
            keep_upgrade=True,
        )
        if answer.status != 101:
            # the upstream said no (e.g. 401 from the device, 404): pass its answer on
            # (its first MiB)
            pieces: list[bytes] = []
            size = 0
            try:
                while size < _REFUSAL_LIMIT and (data := answer.read1(_REFUSAL_LIMIT - size)):
                    pieces.append(data)
                    size += len(data)
            except OSError:
                pieces = []
            finally:
                answer.close()
            body = b"".join(pieces)
            out = [
                (k, v)
                for k, v in out
                if k.lower() not in ("upgrade", "connection", "content-length")
            ]
            out.append(("Content-Length", str(len(body))))
            start_response(f"{answer.status} {_reason(answer.status)}", out)
            return [body]
        # the upstream's first frames may have arrived with its head
        sock, early = answer.detach()
        status_line = "HTTP/1.1 101 Switching Protocols\r\n"
        client_head = status_line + "".join(f"{k}: {v}\r\n" for k, v in out) + "\r\n"
        svc.audit.emit("websocket_opened", **fields)
        handle: StreamHandle | None = None
        down = _Direction(client, masked=False)  # upstream -> browser
        up = _Direction(sock, masked=True)  # browser -> upstream (the gateway as client)

        def cut() -> None:
            for s in (sock, client):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        def session_ended() -> None:
            # a close frame each way where none is under way, then the cut
            for direction in (down, up):
                direction.say_goodbye()
            cut()

        if owner is not None:
            handle = self.streams.open(
                owner[0], owner[1], "websocket", upstream.name, session_ended
            )
        try:
            client.sendall(client_head.encode("latin-1") + early)
            down.frames.feed(early)
            _relay_both_ways(down, up)
        except OSError:
            pass
        finally:
            if handle is not None:
                self.streams.done(handle)
            cut()
            sock.close()
        return TAKEN_OVER

    def _learn_challenge(
        self, upstream: Upstream, bridge: DeviceCredentials, path: str, host: str
    ) -> bool:
        """Earn a fresh Digest challenge before a request that cannot be sent
        twice (a streamed body, a WebSocket handshake): a probe that can never act
        on the device.  It carries no credentials, so an address the device
        protects refuses it before any handler runs, with the ``401`` whose
        challenge the real request then answers; no body and no query, so where
        the device does not protect the address its handler gets no action
        parameters (``?action=open``); only ``Host``.  The path stays: a device
        may protect (and challenge) per path.  It is a ``GET``, the one method
        every embedded server implements: one without ``HEAD`` answers it
        ``405``/``501`` before checking credentials (no challenge to learn), an
        answer to ``HEAD`` costs the pooled connection (upstream_client), and a
        CGI handler runs for ``HEAD`` as for ``GET`` anyway.

        True when the probe was answered ``401`` and a challenge is known (the
        one it brought, normally): a ``401`` to the real request is then a
        refusal.  False when the device did not answer (the request itself then
        reports why) or answered anything else: nothing is learned from that (it
        says nothing about the real request either), and the real request goes
        with the challenge already known, if any, still once."""
        try:
            probe = upstream.pool.request("GET", path, [("Host", host)])
        except (OSError, InvalidRequest):
            return False
        if probe.status != 401:
            probe.close()  # not a challenge: its body is of no interest (and may be long)
            return False
        bridge.learn(probe.getlist("WWW-Authenticate"))
        probe.drain()
        probe.release()
        return bridge.has_challenge

    def _request_headers(self, call: _Call) -> list[tuple[str, str]]:
        svc = self.svc
        environ = call.environ
        connection_named = _connection_tokens([environ.get("HTTP_CONNECTION", "")])
        own = svc.identity_header_names
        headers: list[tuple[str, str]] = []
        for key, value in environ.items():
            if not key.startswith("HTTP_"):
                continue
            spelt = _inbound_name(key)
            if spelt is None:
                continue
            name, title = spelt
            if name in connection_named or name in own:
                continue
            if name == "cookie":
                value = self._without_own_cookies(value)
                if not value:
                    continue
            headers.append((title, value))
        if environ.get("CONTENT_TYPE"):
            headers.append(("Content-Type", environ["CONTENT_TYPE"]))
        headers.append(("Host", _upstream_host(call)))
        forwarded = call.forwarded
        headers.append(("X-Forwarded-For", ", ".join(forwarded.chain)))
        headers.append(("X-Forwarded-Proto", forwarded.proto))
        headers.append(("X-Forwarded-Host", forwarded.host))
        headers.extend(call.identity_headers)
        return headers

    def _forwarded(self, environ: dict[str, Any], req: Request) -> _Forwarded:
        """(X-Forwarded-For chain, proto, host) to send upstream: what the
        ``proxy.trusted_hops`` proxies in front said (only when the peer is in
        ``network.trusted_proxies``), else this connection's own facts."""
        svc = self.svc
        remote = req.remote_addr or ""
        hops = svc.settings.proxy.trusted_hops
        chain: list[str] = []
        proto, host = _connection_scheme(environ), req.host
        if hops and remote in svc.trusted_proxies:
            entries = [e.strip() for e in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
            entries = [e for e in entries if e]
            if entries and all(_is_ip(e) for e in entries[-hops:]):
                chain = entries[-hops:]
            fproto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip().lower()
            if fproto in ("http", "https"):
                proto = fproto
            fhost = environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[-1].strip()
            if fhost and _HOST.match(fhost):
                host = fhost
        chain.append(remote)
        return _Forwarded(tuple(chain), proto, host)

    def _answer_headers(
        self,
        headers: list[tuple[str, str]],
        upstream: Upstream,
        public_origin: str,
        *,
        personal: bool,
        status: int,
        keep_upgrade: bool = False,
    ) -> list[tuple[str, str]]:
        """The upstream's answer headers as the browser gets them.  ``personal``:
        a person's session decided the answer (not a public route), which is then
        ``private`` for shared caches (see _SHARED_CACHE_DIRECTIVES)."""
        named = _connection_tokens([v for k, v in headers if k.lower() == "connection"])
        out: list[tuple[str, str]] = []
        directives: list[str] | None = None  # a person's answer's Cache-Control, if any
        for name, value in headers:
            lower = name.lower()
            if keep_upgrade and lower in ("upgrade", "connection"):
                out.append((name, value))
                continue
            if lower in _NOT_RETURNED or lower in named:
                continue
            if lower == "www-authenticate" and upstream.credentials is not None:
                continue  # never a browser prompt for the device's own account
            if lower == "location":
                value = upstream.public_location(value, public_origin)
            elif lower == "set-cookie" and self._sets_own_cookie(value):
                continue  # an upstream must never set (or clear) the gateway's cookies
            elif personal and lower in _CACHE_HEADERS:
                if lower == "cache-control":  # several fields are one list: one goes out
                    directives = directives if directives is not None else []
                    directives.extend(_shareable_removed(value))
                continue
            out.append((name, value))
        # without any Cache-Control a shared cache may store the answer (heuristic
        # freshness from Last-Modified); a 304 without one is left so: it would
        # replace the browser's stored (already private) Cache-Control with it
        if personal and (directives is not None or status != 304):
            out.append(("Cache-Control", ", ".join([*(directives or ()), "private"])))
        return out

    def _without_own_cookies(self, header: str) -> str:
        """The Cookie header minus the gateway's cookies.  ',' separates too: the
        server joins repeated Cookie headers with it, and cookie values cannot
        contain it (RFC 6265), so nothing of ours can hide behind another name."""
        kept = []
        for part in _COOKIE_SEPARATOR.split(header):
            name = part.partition("=")[0].strip()
            if name and not self._own_cookie.match(name):
                kept.append(part.strip())
        return "; ".join(kept)

    def _sets_own_cookie(self, set_cookie: str) -> bool:
        """Whether a Set-Cookie must not reach the browser: one for the gateway's
        cookies, or one without a name.  Read as browsers do (RFC 6265bis 5.6):
        the name-value pair ends at the first ';'; without '=' in it, the name is
        empty and all of it is the value.  A browser sends a name-less cookie back
        as its bare value, so ``=sso_gw=X`` or ``sso_gw; Path=/`` would arrive as
        one of the gateway's cookies; no upstream needs a name-less one."""
        name, equals, _ = set_cookie.partition(";")[0].partition("=")
        name = name.strip()  # (more than the space and tab browsers strip: drops more)
        return not equals or not name or bool(self._own_cookie.match(name))


class _Relay:
    """The upstream's body, passed on as it arrives (``read1``: whatever is there,
    up to CHUNK bytes), and the upstream response released when the client is
    done (its connection back to the pool when the body was read whole) or gone.
    While it runs it is registered under its session, so that ending the session
    cuts it (live camera streams, Server-Sent Events)."""

    def __init__(
        self,
        resp: UpstreamResponse,
        svc: Services,
        audit_fields: dict[str, Any],
        streams: StreamRegistry,
        owner: tuple[str, str] | None,
        upstream: str,
    ) -> None:
        self.resp = resp
        self.svc = svc
        self.audit_fields = audit_fields
        self.streams = streams
        self.handle: StreamHandle | None = None
        if owner is not None and not resp.complete:
            # (an answer read whole with its head - most are - has nothing left to cut)
            self.handle = streams.open(owner[0], owner[1], "stream", upstream, self._cut)

    def _cut(self) -> None:
        self.resp.shutdown()  # wakes a read1 (or a splice) waiting in another greenlet

    def splice_source(self, minimum: int) -> tuple[socket.socket, bytes, int] | None:
        """The upstream connection, for the server to move a long body kernel to
        kernel (gateway.http_server); None when it must be iterated."""
        if self.handle is not None and self.handle.closed_because:
            return None
        return self.resp.take_body(minimum)

    def splice_ended(self, failure: str) -> None:
        """The server's report on a spliced body: "" when it all went."""
        if failure and not (self.handle is not None and self.handle.closed_because):
            self.svc.audit.emit(
                "upstream_error",
                **self.audit_fields,
                status=self.resp.status,
                reason="stream-interrupted",
                detail=failure,
            )

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                data = self.resp.read1(CHUNK)
            except OSError as exc:
                if self.handle is not None and self.handle.closed_because:
                    raise SessionEnded(self.handle.closed_because) from None
                self.svc.audit.emit(
                    "upstream_error",
                    **self.audit_fields,
                    status=self.resp.status,
                    reason="stream-interrupted",
                    detail=str(exc)[:300],
                )
                raise  # the server then drops the connection: never a silently cut body
            if self.handle is not None and self.handle.closed_because:
                raise SessionEnded(self.handle.closed_because)
            if not data:
                return
            yield data

    def close(self) -> None:
        if self.handle is not None:
            self.streams.done(self.handle)
        self.resp.release()


class SessionEnded(Exception):
    """Raised into the server to drop a connection whose session has ended."""


class _TakenOver:
    """Returned when the connection was taken over (a WebSocket): the server
    (gateway.http_server, or gateway.workers.FairGeventWorker under gunicorn's
    own handler) then closes it without writing anything."""

    connection_taken_over = True

    def __iter__(self) -> Iterator[bytes]:
        return iter(())


TAKEN_OVER = _TakenOver()


class _Direction:
    """One direction of a relayed WebSocket: where its frames end, and whether
    bytes are being written (a close frame of the gateway's may then not go)."""

    def __init__(self, dst: socket.socket, *, masked: bool) -> None:
        self.dst = dst
        self.masked = masked
        self.frames = FrameBoundary()
        self.sending = False

    def say_goodbye(self) -> None:
        """A close frame (1008, "session ended") to ``dst``, when the stream
        stands between frames and no close frame has passed yet."""
        if self.sending or self.frames.closed or not self.frames.at_boundary:
            return
        self.frames.closed = True
        try:
            self.dst.sendall(close_frame(SESSION_ENDED, "session ended", masked=self.masked))
        except OSError:
            pass


def _relay_both_ways(down: _Direction, up: _Direction) -> None:
    """Copy upstream -> client in a greenlet, client -> upstream here, until one
    side ends; then shut both down so the other copy ends too."""
    import gevent

    client, upstream = down.dst, up.dst

    def pump(read: Any, direction: _Direction) -> None:
        try:
            while data := read(CHUNK):
                direction.sending = True
                direction.dst.sendall(data)
                direction.sending = False
                direction.frames.feed(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    copier = gevent.spawn(pump, upstream.recv, down)
    client.settimeout(None)  # silence is limited on the upstream side (read_timeout)
    pump(client.recv, up)
    copier.join()


def _request_body(environ: dict[str, Any]) -> tuple[Iterable[bytes] | None, int | None]:
    """(body, Content-Length): a generator over ``wsgi.input``, never read whole."""
    stream = environ["wsgi.input"]
    length_text = (environ.get("CONTENT_LENGTH") or "").strip()
    if length_text:
        if not _DIGITS.match(length_text):
            raise ValueError("bad Content-Length")  # the server has refused these already
        length = int(length_text)
        if length == 0:
            return None, 0  # no body: nothing to stream (a GET may say so and be pooled)

        def fixed() -> Iterator[bytes]:
            left = length
            while left > 0:
                data = stream.read(min(CHUNK, left))
                if not data:
                    raise OSError("the client sent less than its Content-Length")
                left -= len(data)
                yield data

        return fixed(), length
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():

        def chunked() -> Iterator[bytes]:
            while True:
                data = stream.read(CHUNK)
                if not data:
                    return
                yield data

        return chunked(), None
    return None, None


def _upstream_host(call: _Call) -> str:
    """The ``Host`` sent upstream (see ``preserve_host``)."""
    upstream = call.upstream
    return call.req.host if upstream.settings.preserve_host else upstream.host_header


def _raw_uri(environ: dict[str, Any]) -> str:
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return str(raw)
    path = quote(
        environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace"),
        safe="/;=@:+$,!*'()&~",
    )
    query = environ.get("QUERY_STRING", "")
    return path + ("?" + query if query else "")


def _connection_scheme(environ: dict[str, Any]) -> str:
    """The scheme of the connection itself.  gunicorn rewrites ``wsgi.url_scheme``
    from X-Forwarded-Proto for its ``forwarded_allow_ips``, which would let a
    browser on such an address speak for itself even with ``trusted_hops: 0``."""
    if environ.get("SERVER_SOFTWARE") == SERVER_SOFTWARE:
        return "http"  # gateway.http_server: plain HTTP, the scheme never rewritten
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return str(environ.get("wsgi.url_scheme", "http"))
    return "https" if hasattr(sock, "getpeercert") else "http"


def _same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` (``scheme://host[:port]``) names this request's host."""
    scheme, sep, netloc = origin.strip().partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not netloc:
        return False  # "null", or not an origin at all
    return netloc.lower() == host.lower()


def _personal(decision: Decision) -> bool:
    """Whether a person's session decided the answer: anything but a public route
    (what reaches the upstream is ALLOW or PUBLIC)."""
    return decision.outcome is not Outcome.PUBLIC


def _is_upgrade(environ: dict[str, Any]) -> bool:
    if environ.get("HTTP_UPGRADE"):
        return True
    return "upgrade" in _connection_tokens([environ.get("HTTP_CONNECTION", "")])


# per-process LRU caches of pure string work done on every request (names and
# values come from clients and upstreams: bounded, long values not worth a slot)
_MEMO_LIMIT = 1024
_MEMO_VALUE_LENGTH = 256


@functools.lru_cache(maxsize=_MEMO_LIMIT)
def _inbound_name(key: str) -> tuple[str, str] | None:
    """A WSGI ``HTTP_X_THING`` key as (``x-thing``, ``X-Thing``), or None for a
    header never passed upstream whatever the request (_NOT_FORWARDED and the
    CLIENT_HINT_PREFIXES)."""
    lower = key[5:].replace("_", "-").lower()
    if lower in _NOT_FORWARDED or lower.startswith(CLIENT_HINT_PREFIXES):
        return None
    return lower, lower.title()


def _connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """The lower-cased tokens of Connection header values (hop-by-hop names)."""
    key = tuple(values)
    if sum(map(len, key)) > _MEMO_VALUE_LENGTH:
        return _tokens(key)
    return _remembered_tokens(key)


def _tokens(values: tuple[str, ...]) -> frozenset[str]:
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


_remembered_tokens = functools.lru_cache(maxsize=_MEMO_LIMIT)(_tokens)


def _shareable_removed(value: str) -> tuple[str, ...]:
    """A Cache-Control value's directives, as sent, minus those that let a shared
    cache store the answer (_SHARED_CACHE_DIRECTIVES)."""
    if len(value) > _MEMO_VALUE_LENGTH:
        return _directives(value)
    return _remembered_directives(value)


def _directives(value: str) -> tuple[str, ...]:
    kept = []
    for match in _DIRECTIVE.finditer(value):
        directive = match.group().strip()
        name = directive.partition("=")[0].strip().lower()
        if directive and name not in _SHARED_CACHE_DIRECTIVES:
            kept.append(directive)
    return tuple(kept)


_remembered_directives = functools.lru_cache(maxsize=_MEMO_LIMIT)(_directives)


def _is_ip(text: str) -> bool:
    from gateway.core.network import parse_address

    return parse_address(text) is not None


_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def _failure_kind(exc: BaseException) -> str:
    """What an upstream_error line gives as its reason."""
    if isinstance(exc, UpstreamError):
        return exc.kind
    if isinstance(exc, InvalidRequest):
        return "invalid-request"  # nothing was sent
    return "timeout" if isinstance(exc, TimeoutError) else "protocol"


_ERRORS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}
