"""Group resolvers: where a provider's identity gets its groups when the login
itself does not carry them (Entra ID's groups overage, nested AD groups).

A resolver is separate from the login adapters so any of them can use any
resolver: Microsoft Graph (:class:`GraphGroupResolver`, here) or a directory
(LDAP) resolver.  A resolver returns group identifiers (object GUIDs for Graph),
never display names: names that group owners can edit never decide access.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import requests

from gateway.core.errors import AuthenticationFailed, ProviderUnavailable
from gateway.settings_oidc import GraphSettings


@dataclass(frozen=True)
class GroupQuery:
    """Who to look up: whatever the login told us about the person."""

    object_id: str | None = None  # Entra object id (oid)
    username: str | None = None  # UPN / preferred_username
    email: str | None = None


class GroupResolver(Protocol):
    name: str

    def group_ids(self, who: GroupQuery) -> tuple[str, ...]:
        """Every group (transitively) the person is in.  Raises
        ProviderUnavailable when the source cannot answer, AuthenticationFailed
        when it does not know the person."""


class GraphGroupResolver:
    """``GET /users/{oid}/transitiveMemberOf/microsoft.graph.group`` with an
    app-only token (application permission ``GroupMember.Read.All``), following
    ``@odata.nextLink`` pages - only ever to the configured Graph origin, so the
    token is never sent elsewhere."""

    name = "graph"

    def __init__(
        self,
        settings: GraphSettings,
        token_source: Callable[[str], tuple[str, float]],
        *,
        verify: bool | str = True,
    ) -> None:
        self.settings = settings
        self._token_source = token_source
        self._http = requests.Session()
        self._http.verify = verify
        self._origin = _origin(settings.url)
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def _bearer(self) -> str:
        now = time.monotonic()
        with self._lock:
            if self._token is not None and self._token[1] > now:
                return self._token[0]
        token, lifetime = self._token_source(self.settings.token_scope)
        with self._lock:
            self._token = (token, now + max(0.0, lifetime - 60))
        return token

    def group_ids(self, who: GroupQuery) -> tuple[str, ...]:
        if not who.object_id:
            raise AuthenticationFailed("graph-no-object-id")
        url: str | None = (
            f"{self.settings.url.rstrip('/')}/users/{quote(who.object_id, safe='')}"
            "/transitiveMemberOf/microsoft.graph.group?$select=id&$top=999"
        )
        ids: list[str] = []
        pages = 0
        while url is not None:
            pages += 1
            if pages > self.settings.max_pages:
                raise ProviderUnavailable("graph: too many pages of groups")
            page = self._get(url)
            for item in page.get("value", []):
                gid = item.get("id") if isinstance(item, dict) else None
                if isinstance(gid, str) and gid:
                    ids.append(gid.lower())
            link = page.get("@odata.nextLink")
            if link is not None and (not isinstance(link, str) or _origin(link) != self._origin):
                raise ProviderUnavailable("graph: nextLink leaves the Graph endpoint")
            url = link
        return tuple(dict.fromkeys(ids))

    def _get(self, url: str) -> dict[str, Any]:
        try:
            resp = self._http.get(
                url,
                headers={"Authorization": f"Bearer {self._bearer()}", "Accept": "application/json"},
                timeout=self.settings.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"graph: {type(exc).__name__}") from None
        if resp.status_code == 404:
            raise AuthenticationFailed("graph-user-unknown")
        if resp.status_code == 401:
            with self._lock:
                self._token = None  # next login fetches a new app token
        if resp.status_code != 200:
            raise ProviderUnavailable(f"graph: HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            raise ProviderUnavailable("graph: not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("value", []), list):
            raise ProviderUnavailable("graph: unexpected answer")
        return data


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()
