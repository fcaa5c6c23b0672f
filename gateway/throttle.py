"""Login throttling: failure counters per username and per client address.

The check runs BEFORE the password is verified (:meth:`LoginThrottle.begin`, which
also counts the attempt against the user atomically).  Counters are kept for every
name tried, existing or not, so a throttled answer never tells whether a user
exists.  Usernames are stored hashed (SHA-256 of the lowercased name) so the
store holds no list of names people typed, and a name's counter does not depend
on how it was capitalised.

A counter disappears ``window`` seconds after its first increment (a fixed window,
as the session store's ``incr`` defines it).  A successful login forgets the
user's counter, but not the client's: one address guessing many accounts stays
limited.

Store failures surface as :class:`StoreUnavailable`; callers fail closed.
"""

from __future__ import annotations

import hashlib

from gateway.core.errors import StoreUnavailable, Throttled
from gateway.sessions.store import SessionStore

__all__ = ["LoginThrottle", "client_key", "user_key"]

USER_PREFIX = "throttle:user:"
CLIENT_PREFIX = "throttle:ip:"
START_PREFIX = "throttle:start:"
START_WINDOW = 60.0


def user_key(username: str) -> str:
    digest = hashlib.sha256(username.lower().encode("utf-8", "surrogatepass")).hexdigest()
    return USER_PREFIX + digest


def client_key(client_ip: str) -> str:
    return CLIENT_PREFIX + client_ip


class LoginThrottle:
    """Refuses login attempts once a user or a client address failed too often."""

    def __init__(
        self,
        store: SessionStore,
        *,
        max_user_failures: int = 5,
        max_client_failures: int = 20,
        window: float = 900,
        max_starts_per_minute: int = 120,
    ) -> None:
        if isinstance(max_user_failures, bool) or max_user_failures < 1:
            raise ValueError("max_user_failures must be at least 1")
        if isinstance(max_client_failures, bool) or max_client_failures < 1:
            raise ValueError("max_client_failures must be at least 1")
        if not window > 0:
            raise ValueError("window must be positive")
        self._store = store
        self.max_user_failures = max_user_failures
        self.max_client_failures = max_client_failures
        self.window = float(window)
        self.max_starts_per_minute = max_starts_per_minute

    def started(self, client_ip: str) -> None:
        """Count one login started at an identity provider (each keeps login
        state in the store until it completes or expires), or raise Throttled:
        one address cannot fill the store with abandoned logins."""
        key = START_PREFIX + client_ip
        try:
            value = self._store.incr(key, START_WINDOW)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"throttle counter update failed: {exc}") from exc
        if _as_count(value) > self.max_starts_per_minute:
            raise Throttled("throttled-starts")

    def begin(self, username: str, client_ip: str) -> None:
        """Admit one login attempt, or raise Throttled.

        The attempt is counted against the user *before* the password is
        checked, with the store's atomic increment, so concurrent guesses cannot
        all pass a read-then-count check; :meth:`succeeded` forgets the count.
        The client's counter holds failures only (an office behind one NAT
        address signs in many times a day), so it is read here and increased by
        :meth:`failed`.
        """
        if self._get(client_key(client_ip)) >= self.max_client_failures:
            raise Throttled("throttled-client")
        if self._incr(user_key(username)) > self.max_user_failures:
            raise Throttled("throttled-user")

    def failed(self, username: str, client_ip: str) -> None:
        """The admitted attempt failed: count it for the client address (the user
        was counted by :meth:`begin`)."""
        self._incr(client_key(client_ip))

    def succeeded(self, username: str, client_ip: str) -> None:
        """The admitted attempt succeeded: forget the user's attempts (the
        client's failures stay counted)."""
        try:
            self._store.reset_counter(user_key(username))
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"throttle counter reset failed: {exc}") from exc

    # -- store access: anything unexpected becomes StoreUnavailable ----------

    def _get(self, key: str) -> int:
        try:
            value = self._store.get_counter(key)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"throttle counter read failed: {exc}") from exc
        return _as_count(value)

    def _incr(self, key: str) -> int:
        try:
            value = self._store.incr(key, self.window)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"throttle counter update failed: {exc}") from exc
        return _as_count(value)


def _as_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StoreUnavailable("throttle counter holds an invalid value")
    return value
