"""vLLM's Prometheus metrics (the subset a router or autoscaler reads), one registry per simulator."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# vLLM's own bucket boundaries.
_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
_E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
_LABELS = ("model_name", "engine")

CONTENT_TYPE = CONTENT_TYPE_LATEST


class VllmMetrics:
    """Gauges, counters and histograms named and labelled as vLLM's (`vllm:*`, `model_name`)."""

    def __init__(self, models: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", _LABELS, registry=r
        )
        self.waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", _LABELS, registry=r
        )
        self.kv_cache = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", _LABELS, registry=r
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", _LABELS, registry=r
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", _LABELS, registry=r
        )
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            (*_LABELS, "finished_reason"),
            registry=r,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            _LABELS,
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            _LABELS,
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self._series: dict[str, tuple[Any, Any, Any, Any]] = {}
        for model in models:
            self.add_model(model)

    def add_model(self, model: str) -> None:
        """Creates the labelled series for a model so they appear (at zero) before any request."""
        for gauge in (self.running, self.waiting, self.kv_cache):
            gauge.labels(model, "0")
        # The per-request series, looked up once (a labels() lookup takes a lock).
        self._series[model] = (
            self.prompt_tokens.labels(model, "0"),
            self.generation_tokens.labels(model, "0"),
            self.ttft.labels(model, "0"),
            self.e2e.labels(model, "0"),
        )

    def set_load(self, model: str, running: int, waiting: int, capacity: int) -> None:
        """Sets the load gauges (done when scraped: vLLM's own gauges lag by seconds too)."""
        self.running.labels(model, "0").set(running)
        self.waiting.labels(model, "0").set(waiting)
        self.kv_cache.labels(model, "0").set(min(1.0, running / capacity) if capacity else 0.0)

    def finished(
        self, model: str, *, prompt_tokens: int, generation_tokens: int, reason: str, ttft: float, e2e: float
    ) -> None:
        """Counts a request that ran to its end."""
        prompt, generation, ttft_series, e2e_series = self._series[model]
        prompt.inc(prompt_tokens)
        generation.inc(generation_tokens)
        ttft_series.observe(ttft)
        e2e_series.observe(e2e)
        self.success.labels(model, "0", reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
