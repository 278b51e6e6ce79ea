"""Traces: OpenTelemetry spans of a request across edge, gateway and engine, exported by OTLP
only when configured.

Each process's application object owns one `Tracing` (as it owns its `Metrics`). Off (no
`tracing.otlp_endpoint`, the default) it is a set of no-ops and `opentelemetry` is not even
imported: nothing leaves the machine and the hot path pays one attribute check. On, it has a
`TracerProvider` of its own (not the process-global one, so an edge and a gateway in one test
process keep their service names apart) with a batching OTLP/HTTP exporter.

The spans of one forwarded request:

    edge.request (server)            the device's call to the edge agent, from its `traceparent`
      route.decide                   the edge's classification
      uplink.call (client)           the gRPC call to the gateway; `traceparent` in its metadata
        gateway.request (server)     the gateway's call, HTTP or gRPC, from that `traceparent`
          route.decide
          limits.admit               the tenant's limits (Redis)
          pool.choose                an endpoint of the pool (litellm's cooldowns, live load)
          pool.hold                  waiting for an endpoint while the pool is cold
          engine.attempt (client)    one try at one endpoint; `traceparent` sent to the engine
    (or, answered locally: ollama.call (client) under edge.request)

W3C Trace Context (`traceparent`, `tracestate`) is what is carried, in HTTP headers and gRPC
metadata alike. A caller's `traceparent` is accepted whether tracing is on or not only in the
sense that it is never an error; with tracing off it is ignored.

Spans are made current through OpenTelemetry's context (a contextvar), so `span()` nests
under whatever is current in the task; long-lived spans whose end is not in the same block
(an engine attempt that ends with its stream) are `start()`ed and ended explicitly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from tandem.configfile import Section

if TYPE_CHECKING:  # imported for real only when tracing is on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer


class TracingConfig(Section):
    """Where spans go. Without `otlp_endpoint` nothing is traced."""

    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces"
    )
    # Sent with every export (a collector's API key); never logged.
    headers: dict[str, str] = Field(default_factory=dict)
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0, description="share of new traces kept")
    service_name: str | None = Field(None, description="default: tandem-gateway / tandem-edge")

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (OTLP over HTTP)")
        return value


class Span:
    """One span, or nothing when tracing is off (`NO_SPAN`)."""

    __slots__ = ("_span",)

    def __init__(self, span: OtelSpan | None) -> None:
        self._span = span

    def set(self, key: str, value: str | int | float | bool) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)

    def fail(self, message: str) -> None:
        """Marks the span as failed (an error status with `message`)."""
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, message))

    def end(self) -> None:
        """Ends the span; later calls (a stream closed twice) do nothing."""
        if self._span is not None:
            self._span.end()
            self._span = None


NO_SPAN = Span(None)
# Shared, reusable no-op blocks: what `span()` and `current()` return while tracing is off.
_NO_SPAN_BLOCK: contextlib.AbstractContextManager[Span] = contextlib.nullcontext(NO_SPAN)
_NO_BLOCK: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


class Tracing:
    """One process's tracer (see the module's docstring)."""

    def __init__(
        self, config: TracingConfig | None, service_name: str, *, exporter: SpanExporter | None = None
    ) -> None:
        """`exporter` replaces the OTLP one (tests pass the SDK's `InMemorySpanExporter`, with a
        synchronous processor so spans are there as soon as they end)."""
        config = config or TracingConfig()
        self.enabled = exporter is not None or config.otlp_endpoint is not None
        self._tracer: Tracer | None = None
        self._provider: TracerProvider | None = None
        if self.enabled:
            self._provider, self._tracer = _provider(config, config.service_name or service_name, exporter)

    def start(
        self,
        name: str,
        *,
        kind: str = "internal",
        carrier: Mapping[str, str] | None = None,
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> Span:
        """A span that the caller ends. Its parent: the `traceparent` in `carrier` when given
        (a server span), else the current span."""
        if self._tracer is None:
            return NO_SPAN
        from opentelemetry import propagate

        context = propagate.extract(carrier) if carrier is not None else None
        return Span(self._tracer.start_span(name, context=context, kind=_kind(kind), attributes=attributes))

    def span(
        self,
        name: str,
        *,
        kind: str = "internal",
        carrier: Mapping[str, str] | None = None,
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> contextlib.AbstractContextManager[Span]:
        """A span current for the block (spans started inside nest under it); an exception
        leaving the block fails it. Off, one shared no-op block: the request path builds
        nothing per span."""
        if self._tracer is None:
            return _NO_SPAN_BLOCK
        return self._span_block(name, kind, carrier, attributes)

    @contextlib.contextmanager
    def _span_block(
        self,
        name: str,
        kind: str,
        carrier: Mapping[str, str] | None,
        attributes: Mapping[str, str | int | float | bool] | None,
    ) -> Iterator[Span]:
        span = self.start(name, kind=kind, carrier=carrier, attributes=attributes)
        with self.current(span):
            try:
                yield span
            except BaseException as exc:
                span.fail(f"{type(exc).__name__}: {exc}")
                raise
            finally:
                span.end()

    def current(self, span: Span) -> contextlib.AbstractContextManager[None]:
        """Makes a `start()`ed span current for the block (without ending it)."""
        if span._span is None:
            return _NO_BLOCK
        return self._current_block(span._span)

    @contextlib.contextmanager
    def _current_block(self, otel_span: OtelSpan) -> Iterator[None]:
        from opentelemetry import context, trace

        token = context.attach(trace.set_span_in_context(otel_span))
        try:
            yield
        finally:
            context.detach(token)

    def inject(self, carrier: MutableMapping[str, str], span: Span | None = None) -> None:
        """Writes `traceparent` (and `tracestate`) of `span`, or of the current span, into
        outgoing headers or gRPC metadata."""
        if self._tracer is None:
            return
        from opentelemetry import propagate, trace

        context = None
        if span is not None and span._span is not None:
            context = trace.set_span_in_context(span._span)
        propagate.inject(carrier, context=context)

    def shutdown(self) -> None:
        """Exports what is buffered and stops the exporter (at process stop)."""
        if self._provider is not None:
            self._provider.shutdown()


def _kind(kind: str) -> Any:
    from opentelemetry.trace import SpanKind

    return {"server": SpanKind.SERVER, "client": SpanKind.CLIENT}.get(kind, SpanKind.INTERNAL)


def _provider(
    config: TracingConfig, service_name: str, exporter: SpanExporter | None
) -> tuple[TracerProvider, Tracer]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from tandem.version import tandem_version

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": tandem_version()}),
        # A caller's sampling decision is kept; new traces are sampled at the configured ratio.
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        assert config.otlp_endpoint is not None
        otlp = OTLPSpanExporter(endpoint=config.otlp_endpoint, headers=dict(config.headers), timeout=5)
        # Exported off the request path, in batches, from a thread of the SDK's own.
        provider.add_span_processor(BatchSpanProcessor(otlp))
    return provider, provider.get_tracer("tandem")
