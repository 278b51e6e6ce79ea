"""Prometheus metrics of one Tandem process (gateway or edge agent).

Each application object owns a `Metrics` with its own registry, so two processes' worth of
objects can live in one test without colliding, and `/metrics` shows only this process.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, exposition, generate_latest

from tandem.chat import RouteDecision, Usage

CONTENT_TYPE = exposition.CONTENT_TYPE_LATEST
OTHER_TENANTS = "_other"  # the label of tenants beyond the cap


class Metrics:
    """A process's metrics. Chat answers are recorded through `answered` and `used`, so both
    faces of both processes label them alike."""

    def __init__(self, prefix: str, *, max_tenants: int = 100) -> None:
        self._max_tenants = max_tenants
        self._tenants: set[str] = set()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{prefix}_requests",
            "Requests answered, by face, route and outcome (chat; at the edge also the calls passed "
            "to the local Ollama, with no route)",
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
            "Time from request to last byte of answered requests, by face and route",
            ["face", "target", "mode"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.tokens = Counter(
            f"{prefix}_tokens",
            "Tokens of answered requests, as the engine reported them: kind prompt or completion",
            ["kind", "target", "pool"],
            registry=r,
        )
        # Per tenant, for the first `max_tenants` tenants seen; the rest share OTHER_TENANTS, so
        # a deployment with thousands of keys cannot blow up the series count.
        self.tenant_requests = Counter(
            f"{prefix}_tenant_requests",
            "Chat requests per tenant, by status",
            ["tenant", "status"],
            registry=r,
        )
        self.tenant_tokens = Counter(
            f"{prefix}_tenant_tokens",
            "Tokens per tenant: kind prompt or completion",
            ["tenant", "kind"],
            registry=r,
        )
        self.state_degraded = Gauge(
            f"{prefix}_state_degraded",
            "1 while shared state (Redis) is unreachable and local state is used",
            registry=r,
        )

    def answered(
        self,
        face: str,
        decision: RouteDecision | None,
        status: str,
        started: float | None = None,
        tenant: str | None = None,
    ) -> None:
        """One chat request finished with `status`: counted by face and route (and by tenant when
        it has one); its duration (since `started`, a `time.perf_counter()`) observed when it ran
        (not a quick refusal)."""
        if tenant:
            self.tenant_requests.labels(self.tenant(tenant), status).inc()
        if decision is None:
            self.requests.labels(face, "", "", "", status).inc()
            return
        target, mode = decision.target.value, decision.mode.value
        self.requests.labels(face, target, mode, decision.reason, status).inc()
        if started is not None:
            self.duration.labels(face, target, mode).observe(time.perf_counter() - started)

    def used(self, decision: RouteDecision, usage: Usage, tenant: str | None = None) -> None:
        """The tokens of one answer, by where it ran (and by tenant when it has one)."""
        target = decision.target.value
        self.tokens.labels("prompt", target, decision.pool).inc(usage.prompt_tokens)
        self.tokens.labels("completion", target, decision.pool).inc(usage.completion_tokens)
        if tenant:
            label = self.tenant(tenant)
            self.tenant_tokens.labels(label, "prompt").inc(usage.prompt_tokens)
            self.tenant_tokens.labels(label, "completion").inc(usage.completion_tokens)

    def tenant(self, name: str | None) -> str:
        """The label of tenant `name` (its own while under the cap, else OTHER_TENANTS)."""
        if not name:
            return ""
        if name in self._tenants:
            return name
        if len(self._tenants) < self._max_tenants:
            self._tenants.add(name)
            return name
        return OTHER_TENANTS

    def render(self) -> bytes:
        return generate_latest(self.registry)
