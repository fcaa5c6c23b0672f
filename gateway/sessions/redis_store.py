"""The Redis :class:`~gateway.sessions.store.SessionStore`.

Layout (``P`` is the prefix, ``ssogw:`` by default)::

    P session:<key>   string  {"user": ..., "record": {...}}      PX = session ttl
    P user:<user>     zset    member <key>, score = expiry (ms since the epoch);
                              expired members pruned on read; key TTL = max expiry
    P counter:<key>   string  INCR + PEXPIRE NX (window fixed at the first increment)
    P value:<key>     string  JSON, PX ttl; read with GETDEL
    P once:<key>      string  SET NX PX

``get_session`` is one GET.  Writes that touch two keys run in MULTI/EXEC;
``delete_session`` WATCHes the session key so it acts on the record it read;
``touch_session`` is one Lua script (SET XX, then the index; never contended).
Index scores use this machine's clock.

Every redis-py error, and anything stored under these keys that this module did
not write, becomes :class:`~gateway.core.errors.StoreUnavailable`.  The client
is built so that no call waits much longer than ``socket_timeout``: connect and
read timeouts are both ``socket_timeout``, a dropped connection is retried once
at once (timeouts are not retried), idle pooled connections are PINGed before
reuse after 30 s, and the pool reconnects by itself when Redis comes back.

:meth:`RedisStore.from_sentinel` builds the same store on a client that asks
Redis Sentinel for the current master before each new connection.  After a
failover the first command on a connection to the demoted master fails
(``READONLY`` or a dropped link), redis-py asks the sentinels again and the
single retry goes to the new master; the invalidation feed is cut by the
sentinels' reconfiguration and resubscribes on the new master by itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry
from redis.sentinel import Sentinel

from gateway.core.errors import StoreUnavailable
from gateway.sockets import current_pid

log = logging.getLogger(__name__)

_SESSION, _USER, _COUNTER, _VALUE, _ONCE = b"session:", b"user:", b"counter:", b"value:", b"once:"
_CHANNEL = b"invalidate"
_HEALTH_CHECK_INTERVAL = 30  # seconds a pooled connection may idle before a PING
_WATCH_ATTEMPTS = 5
_SCAN_COUNT = 500

# KEYS: session key, user index.  ARGV: document, ttl ms, index score, member.
_TOUCH_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'XX') then
  redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[2], 'GT')
  return 1
end
return 0
"""


def _ms(ttl: float) -> int:
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"ttl must be a positive, finite number of seconds, not {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def _raw(text: str) -> bytes:
    # surrogatepass: any Python str is a valid key and comes back unchanged
    return text.encode("utf-8", "surrogatepass")


def _redact(url: str) -> str:
    """The URL without credentials or query string, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


class RedisStore:
    """Sessions, counters and short-lived values in Redis.

    ``client`` replaces the client this store would build from ``url`` (which is
    then only used in messages); the caller keeps ownership and ``close()`` leaves
    it open.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ssogw:",
        socket_timeout: float = 1.0,
        client: redis.Redis | None = None,
    ) -> None:
        if not (math.isfinite(socket_timeout) and socket_timeout > 0):
            raise ValueError(f"socket_timeout must be a positive number, not {socket_timeout!r}")
        self._where = _redact(url)
        self._prefix = _raw(prefix)
        self._owns_client = client is None
        self._sentinel: Sentinel | None = None
        if client is None:
            client = redis.Redis.from_url(url, **_client_options(socket_timeout))
        self._redis = client
        self._touch = client.register_script(_TOUCH_LUA)
        self._channel = self._prefix + _CHANNEL
        self._feed: _InvalidationListener | None = None

    @classmethod
    def from_sentinel(
        cls,
        master: str,
        sentinels: Sequence[tuple[str, int]],
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        sentinel_username: str | None = None,
        sentinel_password: str | None = None,
        prefix: str = "ssogw:",
        socket_timeout: float = 1.0,
    ) -> RedisStore:
        """A store on the master that ``sentinels`` name for ``master``.

        ``username``/``password`` are for the Redis servers (master and
        replicas), ``sentinel_username``/``sentinel_password`` for the sentinels
        themselves (their own ``requirepass``)."""
        if not sentinels:
            raise ValueError("at least one sentinel address is needed")
        if not (math.isfinite(socket_timeout) and socket_timeout > 0):
            raise ValueError(f"socket_timeout must be a positive number, not {socket_timeout!r}")
        where = "redis+sentinel://{}/{}/{}".format(
            ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in sentinels), master, db
        )
        manager = Sentinel(  # type: ignore[no-untyped-call]
            list(sentinels),
            sentinel_kwargs={
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": socket_timeout,
                "username": sentinel_username,
                "password": sentinel_password,
                "protocol": 2,
                "client_name": "ssogw-sentinel",
                # no backoff: the next sentinel in the list is asked at once
                "retry": Retry(NoBackoff(), 0),
            },
        )
        client: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]
            master,
            redis_class=redis.Redis,
            db=db,
            username=username,
            password=password,
            **_client_options(socket_timeout),
        )
        store = cls(where, prefix=prefix, socket_timeout=socket_timeout, client=client)
        store._owns_client = True
        store._sentinel = manager
        return store

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "ssogw:", socket_timeout: float = 1.0
    ) -> RedisStore:
        """A store with its own connection pool to ``url``."""
        return cls(url, prefix=prefix, socket_timeout=socket_timeout)

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, prefix={self._prefix.decode(errors='replace')!r})"

    # -- sessions ---------------------------------------------------------------
    def put_session(self, key: str, record: dict[str, Any], ttl: float, user: str) -> None:
        ms = _ms(ttl)
        doc = _encode({"user": user, "record": record})
        member, index = _raw(key), self._key(_USER, user)
        now = _now_ms()
        with self._guard("put_session"), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(_SESSION, key), doc, px=ms, get=True)
            pipe.zremrangebyscore(index, "-inf", now)
            pipe.zadd(index, {member: now + ms})
            pipe.pexpire(index, ms, nx=True)  # a new index lives as long as its session...
            pipe.pexpire(index, ms, gt=True)  # ...an old one as long as its longest session
            old = pipe.execute()[0]
        if old is None:
            return
        self.publish_invalidation(key)  # a replaced record: cached copies are stale
        try:
            old_user = self._session_doc(old)["user"]
        except StoreUnavailable:
            log.warning("session store: replaced a session value this store did not write")
            return
        if old_user != user:  # the key moved to another user: drop it from the old index
            with self._guard("put_session"):
                self._redis.zrem(self._key(_USER, old_user), member)

    def get_session(self, key: str) -> dict[str, Any] | None:
        with self._guard("get_session"):
            raw = self._redis.get(self._key(_SESSION, key))
        if raw is None:
            return None
        record: dict[str, Any] = self._session_doc(raw)["record"]
        return record

    def touch_session(self, key: str, record: dict[str, Any], ttl: float, user: str) -> bool:
        """One atomic script: replace the record only if the session still exists
        (SET XX) and then push its index entry's expiry.  No WATCH, so concurrent
        touches on one busy session never contend."""
        ms = _ms(ttl)
        with self._guard("touch_session"):
            done = self._touch(
                keys=[self._key(_SESSION, key), self._key(_USER, user)],
                args=[_encode({"user": user, "record": record}), ms, _now_ms() + ms, _raw(key)],
            )
        return bool(done)

    def delete_session(self, key: str) -> dict[str, Any] | None:
        skey = self._key(_SESSION, key)
        with self._guard("delete_session"), self._redis.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_ATTEMPTS):
                try:
                    pipe.watch(skey)  # type: ignore[no-untyped-call]
                    raw = pipe.get(skey)
                    if raw is None:
                        return None
                    doc = self._session_doc(raw)
                    pipe.multi()
                    pipe.delete(skey)
                    pipe.zrem(self._key(_USER, doc["user"]), _raw(key))
                    pipe.publish(self._channel, _raw(key))  # every process drops its copy
                    pipe.execute()
                    record: dict[str, Any] = doc["record"]
                    return record
                except redis.WatchError:
                    continue
        raise self._contended("delete_session")

    def user_sessions(self, user: str) -> list[str]:
        index = self._key(_USER, user)
        with self._guard("user_sessions"), self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(index, "-inf", _now_ms())
            pipe.zrange(index, 0, -1)
            members = pipe.execute()[1]
        return [self._text(member) for member in members]

    def iter_sessions(self) -> Iterator[tuple[str, dict[str, Any]]]:
        head = self._prefix + _SESSION
        pattern = re.sub(rb"([*?\[\]\\])", rb"\\\1", head) + b"*"
        seen: set[bytes] = set()  # SCAN may return a key more than once
        cursor = 0
        while True:
            with self._guard("iter_sessions"):
                cursor, found = self._redis.scan(cursor, match=pattern, count=_SCAN_COUNT)
                names = [n for n in map(_as_bytes, found) if n not in seen]
                raws = self._redis.mget(names) if names else []
            seen.update(names)
            for name, raw in zip(names, raws, strict=True):
                if raw is not None:  # expired or deleted since the SCAN
                    yield self._text(name[len(head) :]), self._session_doc(raw)["record"]
            if cursor == 0:
                return

    # -- counters ---------------------------------------------------------------
    def incr(self, key: str, window: float) -> int:
        ms = _ms(window)
        name = self._key(_COUNTER, key)
        with self._guard("incr"), self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.pexpire(name, ms, nx=True)
            value = pipe.execute()[0]
        return int(value)

    def get_counter(self, key: str) -> int:
        with self._guard("get_counter"):
            raw = self._redis.get(self._key(_COUNTER, key))
        if raw is None:
            return 0
        try:
            return int(raw)
        except ValueError:
            raise self._garbage("a counter") from None

    def reset_counter(self, key: str) -> None:
        with self._guard("reset_counter"):
            self._redis.delete(self._key(_COUNTER, key))

    # -- short-lived values -----------------------------------------------------
    def put_value(self, key: str, value: dict[str, Any], ttl: float) -> None:
        ms = _ms(ttl)
        data = _encode(value)
        with self._guard("put_value"):
            self._redis.set(self._key(_VALUE, key), data, px=ms)

    def pop_value(self, key: str) -> dict[str, Any] | None:
        with self._guard("pop_value"):
            raw = self._redis.getdel(self._key(_VALUE, key))
        if raw is None:
            return None
        return self._json_object(raw, "a value")

    def add_once(self, key: str, ttl: float) -> bool:
        ms = _ms(ttl)
        with self._guard("add_once"):
            return bool(self._redis.set(self._key(_ONCE, key), b"1", nx=True, px=ms))

    # -- health -------------------------------------------------------------------
    def ping(self) -> None:
        with self._guard("ping"):
            if not self._redis.ping():
                raise StoreUnavailable(f"Redis session store {self._where}: PING not answered")

    # -- invalidation feed (per-process session caches) ---------------------------
    def publish_invalidation(self, key: str | None) -> None:
        """Tell every gateway process to drop its cached copy of ``key``."""
        with self._guard("publish_invalidation"):
            self._redis.publish(self._channel, b"*" if key is None else _raw(key))

    def subscribe_invalidations(
        self, on_key: Callable[[str | None], None], on_health: Callable[[bool], None]
    ) -> None:
        """Call ``on_key(key)`` for every published invalidation (None = all) and
        ``on_health(ok)`` whenever the feed becomes usable or breaks.  One
        background listener per process; it reconnects by itself."""
        if self._feed is None or not self._feed.alive():
            self._feed = _InvalidationListener(self._redis, self._channel, self._text)
        self._feed.add(on_key, on_health)

    def close(self) -> None:
        """Disconnect the pool this store built (a client passed in is left open)."""
        if self._feed is not None:
            self._feed.stop()
        if self._owns_client:
            with self._guard("close"):
                self._redis.close()
        if self._sentinel is not None:
            with self._guard("close"):
                self._sentinel.close()

    # -- internals ------------------------------------------------------------------
    def _key(self, namespace: bytes, key: str) -> bytes:
        return self._prefix + namespace + _raw(key)

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"Redis session store {self._where}: {action} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _garbage(self, what: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"Redis session store {self._where}: {what} holds data this store did not write"
        )

    def _contended(self, action: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"Redis session store {self._where}: {action} gave up after "
            f"{_WATCH_ATTEMPTS} concurrent modifications"
        )

    def _json_object(self, raw: bytes | str, what: str) -> dict[str, Any]:
        try:
            doc = json.loads(raw)
        except ValueError:
            raise self._garbage(what) from None
        if not isinstance(doc, dict):
            raise self._garbage(what)
        return doc

    def _session_doc(self, raw: bytes | str) -> dict[str, Any]:
        doc = self._json_object(raw, "a session")
        if not isinstance(doc.get("user"), str) or not isinstance(doc.get("record"), dict):
            raise self._garbage("a session")
        return doc

    def _text(self, raw: bytes | str) -> str:
        if isinstance(raw, str):
            return raw
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise self._garbage("a key name") from None


def _client_options(socket_timeout: float) -> dict[str, Any]:
    """Connection options shared by the URL- and the Sentinel-built client."""
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "health_check_interval": _HEALTH_CHECK_INTERVAL,
        "protocol": 2,
        "decode_responses": False,
        "client_name": "ssogw-sessions",
        # RESP3 maintenance notifications would stretch timeouts to 10 s+
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }


def _as_bytes(name: bytes | str) -> bytes:
    return name if isinstance(name, bytes) else _raw(name)


class _InvalidationListener:
    """Background subscriber to the invalidation channel.

    It pings Redis every second on the subscription connection; when no answer
    comes for a few seconds, or the connection breaks, it reports the feed as
    unhealthy (callers then stop trusting cached sessions) and reconnects.
    Under gunicorn's gevent workers the thread is a greenlet.
    """

    PING_EVERY = 1.0
    DEAD_AFTER = 3.0

    def __init__(
        self, client: redis.Redis, channel: bytes, text: Callable[[bytes | str], str]
    ) -> None:
        self._client = client
        self._channel = channel
        self._text = text
        self._pid = os.getpid()
        self._subscribers: list[tuple[Callable[[str | None], None], Callable[[bool], None]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._healthy = False
        self._thread = threading.Thread(target=self._run, name="ssogw-invalidations", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._pid == current_pid() and self._thread.is_alive()

    def add(self, on_key: Callable[[str | None], None], on_health: Callable[[bool], None]) -> None:
        with self._lock:
            self._subscribers.append((on_key, on_health))
            healthy = self._healthy
        on_health(healthy)

    def stop(self) -> None:
        self._stop.set()

    def _health(self, healthy: bool) -> None:
        with self._lock:
            changed = healthy != self._healthy
            self._healthy = healthy
            subscribers = list(self._subscribers)
        if changed:
            for _, on_health in subscribers:
                on_health(healthy)

    def _deliver(self, key: str | None) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for on_key, _ in subscribers:
            on_key(key)

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
            try:
                self._listen(pubsub)
            except Exception as exc:  # noqa: BLE001 - any failure means "feed broken"
                log.warning("session invalidation feed broken (%s); retrying", exc)
            finally:
                self._health(False)
                with contextlib.suppress(Exception):
                    pubsub.close()
            self._stop.wait(0.5)

    def _listen(self, pubsub: Any) -> None:
        pubsub.subscribe(self._channel)
        last_answer = time.monotonic()
        next_ping = last_answer
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=0.25)
            now = time.monotonic()
            if message is not None:
                kind = message.get("type")
                if kind == "subscribe":
                    last_answer = now
                    self._health(True)
                elif kind == "message":
                    data = message.get("data")
                    self._deliver(None if data in (b"*", "*") else self._text(data))
                elif kind == "pong":
                    last_answer = now
            if now >= next_ping:
                pubsub.ping()
                next_ping = now + self.PING_EVERY
            if now - last_answer > self.DEAD_AFTER:
                raise TimeoutError("Redis did not answer pings on the invalidation feed")
