"""Prometheus metrics of the autoscaler, in a registry of its own."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


def quantile(values: Iterable[float], q: float) -> float | None:
    """The q-quantile (nearest rank below) of recent values, rounded to milliseconds; None for
    none. What the status page shows next to the histograms /metrics exports."""
    ordered = sorted(values)
    return round(ordered[int(q * (len(ordered) - 1))], 3) if ordered else None


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sessions = Gauge("chatscale_sessions", "Sessions in the fleet", registry=r)
        self.pending = Gauge("chatscale_sessions_pending", "Sessions waiting for room", registry=r)
        self.capacity = Gauge("chatscale_capacity", "Session slots of live shards", registry=r)
        self.shards = Gauge("chatscale_shards", "Shards by state", ["state"], registry=r)
        self.desired = Gauge("chatscale_shards_desired", "Shard count wanted", registry=r)
        self.leader = Gauge("chatscale_leader", "1 if this autoscaler acts", registry=r)
        self.scale_events = Counter(
            "chatscale_scale_events", "Actions taken", ["kind", "outcome"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "chatscale_reconcile_seconds",
            "Duration of a reconcile pass",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.reconcile_failures = Counter(
            "chatscale_reconcile_failures", "Reconcile passes that failed", registry=r
        )
        self.nginx_reloads = Counter("chatscale_nginx_reloads", "nginx reloads", registry=r)
        self.nginx_failures = Counter(
            "chatscale_nginx_failures", "Rejected or failed nginx updates", registry=r
        )
        self.exceptions = Gauge(
            "chatscale_route_exceptions", "Sessions routed off their ring owner", registry=r
        )
        self.activator_held = Gauge(
            "chatscale_activator_held", "Requests this activator holds now", registry=r
        )
        self.activator_requests = Counter(
            "chatscale_activator_requests",
            "Requests the activator held, by how it ended (passed, timeout, overflow)",
            ["outcome"],
            registry=r,
        )
        self.activator_hold_seconds = Histogram(
            "chatscale_activator_hold_seconds",
            "How long a request was held before it was passed to a shard or given up",
            ["outcome"],
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120),
        )
        self.activator_wakeups = Counter(
            "chatscale_activator_wakeups",
            "Requests that found no shard running at all (the fleet woke from zero)",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "chatscale_webhook_deliveries",
            "Webhook attempts by outcome (delivered, retried, dead)",
            ["outcome"],
            registry=r,
        )
        self.webhook_latency = Histogram(
            "chatscale_webhook_latency_seconds",
            "From an event's write in Redis to its receiver's 2xx",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
