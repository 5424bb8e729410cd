"""Prometheus metrics of one shard, in a registry of its own (several shards may share a test)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ShardMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge(
            "chatscale_shard_sessions", "Sessions by status", ["status"], registry=r
        )
        self.capacity = Gauge(
            "chatscale_shard_capacity", "Most sessions this shard holds", registry=r
        )
        self.memory = Gauge("chatscale_shard_memory_bytes", "Memory in use", registry=r)
        self.memory_limit = Gauge("chatscale_shard_memory_limit_bytes", "Memory limit", registry=r)
        self.created = Counter("chatscale_shard_sessions_started", "Sessions started", registry=r)
        self.restored = Counter(
            "chatscale_shard_sessions_restored", "Sessions opened from a snapshot", registry=r
        )
        self.open_retries = Counter(
            "chatscale_shard_session_open_retries",
            "Opens of a session tried again after a failure (sessions.OPEN_RETRY_DELAYS)",
            registry=r,
        )
        self.page_memory_reopens = Counter(
            "chatscale_shard_page_memory_reopens",
            "Sessions reopened from their snapshot because their page passed PAGE_MEMORY_LIMIT_MB",
            registry=r,
        )
        self.lost = Counter(
            "chatscale_shard_sessions_lost",
            "Local copies closed after losing ownership",
            registry=r,
        )
        self.refused = Counter(
            "chatscale_shard_creates_refused", "Creates refused for lack of room", registry=r
        )
        self.activated = Counter(
            "chatscale_shard_requests_activated",
            "Creates no shard had room for, handed to an activator to hold",
            registry=r,
        )
        self.forwarded = Counter(
            "chatscale_shard_requests_forwarded", "Requests passed to the owning shard", registry=r
        )
        self.messages = Counter("chatscale_shard_messages_sent", "Messages sent", registry=r)
        self.message_events = Counter(
            "chatscale_shard_message_events",
            "message / message.any / message.ack events written, from what pages showed",
            registry=r,
        )
        self.open_seconds = Histogram(
            "chatscale_shard_session_open_seconds",
            "Time to open a session's page",
            registry=r,
            buckets=(0.25, 0.5, 1, 2, 4, 8, 16, 32),
        )
        self.snapshot_seconds = Histogram(
            "chatscale_shard_snapshot_seconds",
            "Time to take and save a snapshot",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
        )
        self.snapshot_bytes = Histogram(
            "chatscale_shard_snapshot_bytes",
            "Compressed snapshot size",
            registry=r,
            buckets=(1e3, 1e4, 1e5, 1e6, 1e7),
        )
        self.heartbeat_failures = Counter(
            "chatscale_shard_heartbeat_failures", "Heartbeats that could not be written", registry=r
        )
