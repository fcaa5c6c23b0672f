"""Prometheus metrics (prometheus-client), served at ``/.sso/metrics``.

Under ``sso-gateway serve`` every gunicorn worker writes its samples into
``PROMETHEUS_MULTIPROC_DIR`` (``data_dir/metrics``, emptied at start and set by
:func:`gateway.serve.prepare_metrics_dir` before any worker imports
prometheus-client) and a scrape adds them up over all
workers (prometheus-client's multiprocess mode).  Elsewhere (tests, a bare
``create_app``) each app has its own registry.

What is counted:

* ``sso_gateway_logins_total{provider, result}`` - result ``success`` or
  ``failure`` (reasons stay in the audit log: several are chosen by outsiders
  and would make labels without bound);
* ``sso_gateway_decisions_total{outcome, route}`` - every forward-auth decision;
  routes come from the policy, ``none`` when no route matched;
* ``sso_gateway_request_duration_seconds{endpoint}`` - ``auth`` for
  ``/.sso/auth``, ``proxy`` for proxied requests (until the upstream's status and
  headers; WebSockets are not timed).  Each process adds its observations up and
  writes them once a second (and when it serves a scrape, and as it exits):
  a histogram write per request is two locked file writes, under gevent with a
  lock written in Python.  Another worker's last second may be missing from a
  scrape;
* ``sso_gateway_store_errors_total{where}`` - session store failures;
* ``sso_gateway_sessions_revoked_total{reason}``;
* ``sso_gateway_active_sessions`` - live sessions in the store, counted at most
  every 15 s at scrape time.

Login, failure, store-error and revocation counts are taken from the audit
events (:meth:`Metrics.on_audit`), so each is counted exactly where it is
audited.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.core.errors import StoreUnavailable
from gateway.flusher import ProcessFlusher
from gateway.sockets import current_pid

FLUSH_SECONDS = 1.0
PENDING_LIMIT = 200_000  # observations waiting for a flush (20 s at 10,000 a second)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_REVOKING_EVENTS = {
    "sessions_revoked": "cli",
    "backchannel_logout": "backchannel-logout",
    "logout": "logout",
}


def multiprocess_dir() -> str | None:
    value = os.environ.get(MULTIPROC_ENV)
    return value if value and Path(value).is_dir() else None


def _values_with_cached_pid() -> None:
    """In multiprocess mode prometheus-client checks ``os.getpid()`` on every
    increment (a system call, two per observed request); the gateway's process
    id, kept current across forks, answers the same without one.  Metrics made
    after this use it (the gateway's own are made later, in ``create_app``)."""
    if getattr(prometheus_values.ValueClass, "_multiprocess", False):
        prometheus_values.ValueClass = prometheus_values.MultiProcessValue(  # type: ignore[no-untyped-call]
            process_identifier=current_pid
        )


_values_with_cached_pid()


def mark_worker_dead(pid: int) -> None:
    """gunicorn ``child_exit``: a dead worker's live gauges stop counting."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class SessionCount(Collector):
    """``sso_gateway_active_sessions``, counted from the store at scrape time and
    remembered for ``ttl`` seconds (a scan of every session is not free)."""

    def __init__(self, count: Callable[[], int], ttl: float = 15.0) -> None:
        self._count = count
        self._ttl = ttl
        self._cached: tuple[float, float] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = time.monotonic()
        with self._lock:
            cached = self._cached
        if cached is None or now - cached[0] > self._ttl:
            try:
                value = float(self._count())
            except StoreUnavailable:  # the store is down: NaN rather than a false 0
                value = float("nan")
            cached = (now, value)
            with self._lock:
                self._cached = cached
        family = GaugeMetricFamily(
            "sso_gateway_active_sessions", "Live sessions in the session store"
        )
        family.add_metric([], cached[1])
        yield family


class BatchedLatency:
    """Request durations added up per process and written to the histogram once
    a second: ``observe`` only appends to a deque (atomic, no lock to take).
    Each process's flusher (gateway.flusher, started by its first observation)
    writes the sums; ``flush`` writes them at once."""

    def __init__(self, histogram: Histogram, buckets: tuple[float, ...]) -> None:
        self._histogram = histogram
        self._bounds = buckets
        # bounded: should the flusher ever fall behind, the oldest go, not memory
        self._pending: deque[tuple[str, float]] = deque(maxlen=PENDING_LIMIT)
        self._children: dict[str, Any] = {}
        self._lock = threading.Lock()  # one flush at a time
        self._flusher = ProcessFlusher(self.flush, FLUSH_SECONDS, "metrics")

    def observe(self, endpoint: str, seconds: float) -> None:
        if self._flusher.ensure():  # a forked child: what is waiting is the parent's
            self._pending.clear()
        self._pending.append((endpoint, seconds))

    def flush(self) -> None:
        """Write what was observed since the last flush."""
        with self._lock:
            observed: dict[str, list[float]] = {}
            pending = self._pending
            while pending:
                try:
                    endpoint, seconds = pending.popleft()
                except IndexError:
                    break
                observed.setdefault(endpoint, []).append(seconds)
            for endpoint, values in observed.items():
                self._write(self._child(endpoint), values)

    def _child(self, endpoint: str) -> Any:
        child = self._children.get(endpoint)
        if child is None:
            child = self._children[endpoint] = self._histogram.labels(endpoint)
        return child

    def _write(self, child: Any, values: list[float]) -> None:
        """One increment per touched bucket and one for the sum.  The child's
        bucket and sum values are prometheus-client internals (checked by
        tests/unit/test_metrics.py); without them each value is observed."""
        buckets, sum_value = getattr(child, "_buckets", None), getattr(child, "_sum", None)
        if buckets is None or sum_value is None or len(buckets) != len(self._bounds) + 1:
            for seconds in values:
                child.observe(seconds)
            return
        counts = [0] * len(buckets)
        for seconds in values:
            counts[bisect_left(self._bounds, seconds)] += 1  # the first bound >= it
        sum_value.inc(sum(values))
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)


class Metrics:
    def __init__(self, active_sessions: Callable[[], int]) -> None:
        self._multiprocess = multiprocess_dir() is not None
        # in multiprocess mode the values live in files; the objects register
        # nowhere and a fresh registry reads the files per scrape
        self.registry: CollectorRegistry | None = (
            None if self._multiprocess else CollectorRegistry()
        )
        reg = self.registry
        self.logins = Counter(
            "sso_gateway_logins",
            "Completed sign-in attempts",
            ["provider", "result"],
            registry=reg,
        )
        self.decisions = Counter(
            "sso_gateway_decisions",
            "Forward-auth decisions",
            ["outcome", "route"],
            registry=reg,
        )
        self.latency = Histogram(
            "sso_gateway_request_duration_seconds",
            "Time to answer, by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self._latency = BatchedLatency(self.latency, _LATENCY_BUCKETS)
        self.store_errors = Counter(
            "sso_gateway_store_errors",
            "Session store failures (the request failed closed)",
            ["where"],
            registry=reg,
        )
        self.revocations = Counter(
            "sso_gateway_sessions_revoked",
            "Sessions ended before their time",
            ["reason"],
            registry=reg,
        )
        self._sessions = SessionCount(active_sessions)
        if self.registry is not None:
            self.registry.register(self._sessions)

    # -- audit events -> counters ------------------------------------------------
    def on_audit(self, line: Mapping[str, Any]) -> None:
        event = line.get("event")
        if event == "login":
            self.logins.labels(str(line.get("provider", "unknown")), "success").inc()
        elif event == "login_failed":
            self.logins.labels(str(line.get("provider", "local")), "failure").inc()
        elif event == "store_unavailable":
            self.store_errors.labels(str(line.get("where", "unknown"))[:64]).inc()
        elif event in _REVOKING_EVENTS:
            count = line.get("count")
            sessions = line.get("sessions")
            if isinstance(count, int):
                n = count
            else:
                n = len(sessions) if isinstance(sessions, list) else 1
            if n:
                self.revocations.labels(_REVOKING_EVENTS[str(event)]).inc(n)

    def observe(self, endpoint: str, seconds: float) -> None:
        self._latency.observe(endpoint, seconds)

    def decision(self, outcome: str, route: str | None, seconds: float) -> None:
        self.decisions.labels(outcome, route or "none").inc()
        self._latency.observe("auth", seconds)

    def flush(self) -> None:
        """Write this process's pending request durations (a worker exiting)."""
        self._latency.flush()

    # -- exposition -----------------------------------------------------------------
    def render(self) -> bytes:
        self._latency.flush()
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(self._sessions)
        return generate_latest(registry)
