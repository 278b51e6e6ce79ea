"""Prometheus metrics of one Tandem process (gateway or edge agent).

Each application object owns a `Metrics` with its own registry, so two processes' worth of
objects can live in one test without colliding, and `/metrics` shows only this process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, exposition, generate_latest

CONTENT_TYPE = exposition.CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, prefix: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{prefix}_requests",
            "Chat requests answered, by face, route and outcome",
            ["face", "target", "mode", "reason", "status"],
            registry=r,
        )
        self.in_flight = Gauge(f"{prefix}_in_flight_requests", "Chat requests being answered now", registry=r)
        self.upstream_in_flight = Gauge(
            f"{prefix}_upstream_in_flight",
            "Requests in flight per upstream endpoint",
            ["upstream"],
            registry=r,
        )
        self.upstream_failures = Counter(
            f"{prefix}_upstream_failures",
            "Failed attempts per upstream endpoint",
            ["upstream", "status"],
            registry=r,
        )
        self.retries = Counter(
            f"{prefix}_retries", "Attempts retried on another endpoint or pool", registry=r
        )
        self.first_token = Histogram(
            f"{prefix}_first_token_seconds",
            "Time from request to first token",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.duration = Histogram(
            f"{prefix}_request_seconds",
            "Time from request to last byte",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.tokens = Counter(f"{prefix}_tokens", "Tokens processed", ["kind"], registry=r)
        self.state_degraded = Gauge(
            f"{prefix}_state_degraded",
            "1 while shared state (Redis) is unreachable and local state is used",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
