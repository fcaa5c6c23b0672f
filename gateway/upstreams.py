"""The upstreams of reverse-proxy mode: which one a request goes to, the path it
receives there, and a keep-alive connection pool per upstream
(:class:`gateway.upstream_client.UpstreamPool`).

Selection: the upstream whose host globs match the request's host (lower-case,
port and one trailing dot dropped) and whose path prefix is the longest one
covering the canonical request path (``/pbx`` covers ``/pbx`` and ``/pbx/...``,
never ``/pbxadmin``); ties go to the one listed first.  No match means no
upstream: there is no default.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway.core.paths import encode_path
from gateway.core.policy import compile_host_globs, normalise_host
from gateway.device_auth import DeviceCredentials
from gateway.settings_proxy import ProxySettings, UpstreamSettings
from gateway.upstream_client import UpstreamPool

__all__ = ["Upstream", "UpstreamTable"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# the start of a path-absolute Location and everything a browser reads into it:
# '\\' is '/' in http(s) URLs, tab, CR and LF are removed anywhere (WHATWG URL)
_LEADING_SLASHES = re.compile(r"[/\\\t\r\n]+")


@dataclass(frozen=True)
class Upstream:
    name: str
    settings: UpstreamSettings
    host_re: re.Pattern[str]
    prefix: str  # canonical, without a trailing slash ("" for the root)
    strip: bool
    scheme: str
    host_header: str  # what the upstream expects in Host (host[:port])
    origins: tuple[str, ...]  # lower-case scheme://host[:port] spellings of the upstream
    base: str  # the URL's path, without a trailing slash
    pool: UpstreamPool  # also opens the WebSockets' connections of their own
    address: tuple[str, int]
    credentials: DeviceCredentials | None  # the credential bridge, when configured

    def covers(self, path: str) -> bool:
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")

    def upstream_path(self, path: str) -> str:
        """The wire path the upstream receives for the canonical public ``path``."""
        if self.strip and self.prefix:
            path = path[len(self.prefix) :] or "/"
        return self.base + encode_path(path)

    def public_location(self, value: str, public_origin: str) -> str:
        """A ``Location`` from the upstream, as the browser must see it: the
        upstream's own address becomes the public one, its base path is removed
        and a stripped prefix put back.  Other locations are left alone.

        A path (not an absolute or scheme-relative URL) stays a path on this
        host: once the base is removed, ``/base//evil.example/x`` would start with
        ``//``, which a browser follows to another host, as it does ``/\\evil`` and
        ``/<tab>/evil``.  Such a leading run goes out as one ``/`` (the page the
        gateway serves there anyway: it collapses ``//`` in paths); an absolute
        public URL instead would name the ``Host`` the gateway was asked for,
        which a front proxy may have rewritten."""
        lowered = value.lower()
        rest: str | None = None
        absolute = False
        for origin in self.origins:
            for form in (origin, "//" + origin.split("://", 1)[1]):
                if lowered == form or lowered.startswith((form + "/", form + "?")):
                    rest = value[len(form) :] or "/"
                    absolute = True
                    break
            if rest is not None:
                break
        if rest is None:
            if not value.startswith("/") or value.startswith("//"):
                return value
            rest = value
        if rest.startswith("?"):
            rest = "/" + rest
        if self.base:
            if rest == self.base or rest.startswith((self.base + "/", self.base + "?")):
                rest = rest[len(self.base) :] or "/"
                if rest.startswith("?"):
                    rest = "/" + rest
            elif absolute:
                return value  # outside what the gateway publishes
        if self.strip and self.prefix:
            rest = self.prefix + (rest if rest != "/" else "/")
        if absolute:
            return public_origin + rest  # the host is the public one, whatever follows
        run = _LEADING_SLASHES.match(rest)
        if run is not None and sum(c in "/\\" for c in run.group()) > 1:
            rest = "/" + rest[run.end() :]
        return rest


class UpstreamTable:
    """Every configured upstream, with its connection pool (no connection is
    opened before the first request)."""

    def __init__(
        self, cfg: ProxySettings, resolve_path: Callable[[Path], Path] = lambda p: p
    ) -> None:
        self.settings = cfg
        self.upstreams = tuple(_build(u, resolve_path) for u in cfg.upstreams)

    def select(self, host: str, path: str) -> Upstream | None:
        name = normalise_host(host)
        best: Upstream | None = None
        for upstream in self.upstreams:
            if not upstream.host_re.fullmatch(name) or not upstream.covers(path):
                continue
            if best is None or len(upstream.prefix) > len(best.prefix):
                best = upstream
        return best

    def close(self) -> None:
        for upstream in self.upstreams:
            upstream.pool.close()


def _build(cfg: UpstreamSettings, resolve_path: Callable[[Path], Path]) -> Upstream:
    parts = urlsplit(cfg.url)
    scheme = parts.scheme
    host = parts.hostname or ""
    port = parts.port or _DEFAULT_PORTS[scheme]
    literal = f"[{host}]" if ":" in host else host
    host_header = literal if port == _DEFAULT_PORTS[scheme] else f"{literal}:{port}"
    origins = {f"{scheme}://{literal}:{port}".lower(), f"{scheme}://{host_header}".lower()}
    tls = None
    if scheme == "https":
        # verified: CERT_REQUIRED and the host name (or IP address) checked
        tls = ssl.create_default_context(
            cafile=str(resolve_path(cfg.ca_bundle)) if cfg.ca_bundle else None
        )
        if cfg.client_cert is not None:
            tls.load_cert_chain(
                str(resolve_path(cfg.client_cert)),
                str(resolve_path(cfg.client_key)) if cfg.client_key else None,
            )
    pool = UpstreamPool(
        (host, port),
        tls=tls,
        server_hostname=host,
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        maxsize=cfg.pool_size,
        legacy=cfg.legacy_http,
    )
    prefix = cfg.match.path_prefix.rstrip("/")
    base = (parts.path or "").rstrip("/")
    return Upstream(
        name=cfg.name,
        settings=cfg,
        host_re=compile_host_globs(cfg.match.hosts),
        prefix=prefix,
        strip=cfg.match.strip_prefix,
        scheme=scheme,
        host_header=host_header,
        origins=tuple(sorted(origins)),
        base=base,
        pool=pool,
        address=(host, port),
        credentials=DeviceCredentials(cfg.device_login) if cfg.device_login else None,
    )
