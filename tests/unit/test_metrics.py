"""gateway.metrics.BatchedLatency: request durations added up per process and
written once a second give the histogram that observing each one would."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.metrics import _LATENCY_BUCKETS, FLUSH_SECONDS, BatchedLatency

# on, below and above every bound, zero, and past the last one (+Inf)
VALUES = [0.0, 0.0004, 0.0005, 0.0006, 0.001, 0.002, 0.0025, 0.03, 0.7, 2.5, 2.6, 40.0]


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    histogram = Histogram(
        "t_duration_seconds", "test", ["endpoint"], buckets=_LATENCY_BUCKETS, registry=registry
    )
    return registry, histogram


def _exposed(registry: CollectorRegistry) -> list[str]:
    """The exposition minus the creation times (they differ by construction)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_a_flush_writes_what_observing_each_value_would() -> None:
    direct_registry, direct = _histogram()
    batched_registry, histogram = _histogram()
    batched = BatchedLatency(histogram, _LATENCY_BUCKETS)
    for endpoint in ("proxy", "auth"):
        for seconds in VALUES:
            direct.labels(endpoint).observe(seconds)
            batched.observe(endpoint, seconds)
    batched.flush()
    assert _exposed(batched_registry) == _exposed(direct_registry)
    batched.flush()  # nothing new: nothing written twice
    assert _exposed(batched_registry) == _exposed(direct_registry)


def test_the_histogram_internals_the_flush_relies_on_are_there() -> None:
    """prometheus-client's child keeps one value per bucket (+Inf included) and
    one for the sum; if that changes, BatchedLatency falls back to observing."""
    _, histogram = _histogram()
    child: Any = histogram.labels("proxy")
    assert len(child._buckets) == len(_LATENCY_BUCKETS) + 1
    assert hasattr(child._sum, "inc")


def test_without_the_internals_every_value_is_observed() -> None:
    seen: list[float] = []

    class Child:
        def observe(self, seconds: float) -> None:
            seen.append(seconds)

    class Labels:
        def labels(self, endpoint: str) -> Child:
            return Child()

    batched = BatchedLatency(Labels(), _LATENCY_BUCKETS)  # type: ignore[arg-type]
    for seconds in VALUES:
        batched.observe("proxy", seconds)
    batched.flush()
    assert seen == VALUES


def test_the_flusher_writes_within_about_a_second() -> None:
    registry, histogram = _histogram()
    batched = BatchedLatency(histogram, _LATENCY_BUCKETS)
    batched.observe("proxy", 0.003)
    count = 't_duration_seconds_count{endpoint="proxy"} 1.0'
    deadline = time.monotonic() + 5 * FLUSH_SECONDS
    while count not in _exposed(registry) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count in _exposed(registry)


def test_a_forked_child_does_not_write_its_parents_waiting_durations(
    monkeypatch: Any,
) -> None:
    registry, histogram = _histogram()
    batched = BatchedLatency(histogram, _LATENCY_BUCKETS)
    batched.observe("proxy", 0.003)  # the parent's, flushed by the parent
    monkeypatch.setattr("gateway.flusher.current_pid", lambda: 4242)  # now "in the child"
    batched.observe("proxy", 0.2)
    batched.flush()
    exposed = _exposed(registry)
    assert 't_duration_seconds_count{endpoint="proxy"} 1.0' in exposed
    assert 't_duration_seconds_sum{endpoint="proxy"} 0.2' in exposed
