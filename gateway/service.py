"""The gateway application: decide how a request runs, then run it on the cloud pool.

`GatewayService` is built once at start-up from the configuration and shared by the gRPC and
HTTP faces, which only convert wire formats. For each request it:

1. decides the route (mode, pool, token estimate) with the shared rules in `tandem/routing`;
2. refuses what cannot work (unknown model, a model the tenant may not use, context too long,
   over the in-flight bound, over the tenant's limits);
3. asks the balancer (litellm.Router) for an endpoint with free capacity and sends the request
   with the relay, retrying on another endpoint, then on the fallback pools, for as long as no
   token has reached the caller;
4. hands the faces the answer, or a stream whose first batch of chunks has already arrived,
   and when it ends settles the tenant's limits (actual tokens, stream slot released).

The faces authenticate the caller (`service.auth`) and pass its tenant in; with `auth.required`
off the tenant is None and no tenant rules apply. The shared state, and with it redis, is
imported when a service is built, so importing this module stays light for the commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config import GatewayConfig, Pool
from gateway.pool import Balancer, Upstream
from gateway.pool.elastic import ElasticPools
from gateway.relay import AttemptFailed, Relay, StreamBroken, first_batch, stream_chunks
from gateway.retry_budget import RetryBudget
from gateway.usage import UsageCounter, exact_for
from tandem.chat import ChatRequest, ChatResult, Chunk, Mode, RouteDecision, Usage, assemble
from tandem.errors import (
    BadRequest,
    ContextTooLong,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    TandemError,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tandem.logs import get_logger, new_request_id
from tandem.metrics import Metrics
from tandem.routing.decide import route
from tandem.tracing import NO_SPAN, Span, Tracing
from tandem.transport import Transport
from tandem.wire import dialects
from tandem.wire import openai as wire

if TYPE_CHECKING:
    from gateway.fleet import EdgeStatus
    from gateway.state import Grant, SharedState, Tenant

log = get_logger("tandem.gateway")


@dataclass(slots=True)
class Admission:
    """A request that holds a slot in the in-flight bound (and an endpoint's, once chosen)."""

    service: GatewayService
    upstream: Upstream | None = None
    released: bool = False
    grant: Grant | None = None  # the tenant's limits, when it has any
    used_tokens: int | None = 0  # what the engine reported; None: unknown (keep the estimate)
    retry_budget_spent: bool = False  # a retry was due and the pool's retry budget refused it
    pool: str | None = None  # the pool it counts in (its demand), once decided

    def take_upstream(self, upstream: Upstream) -> None:
        self.service._upstream_load[upstream.id] = self.service._upstream_load.get(upstream.id, 0) + 1
        self.service.metrics.upstream_in_flight.labels(upstream.label).inc()
        self.upstream = upstream

    def drop_upstream(self) -> None:
        if self.upstream is not None:
            self.service._upstream_load[self.upstream.id] -= 1
            self.service.metrics.upstream_in_flight.labels(self.upstream.label).dec()
            self.upstream = None

    def enter(self, pool: str) -> None:
        self.pool = pool
        self.service.elastic.entered(pool)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.drop_upstream()
            if self.pool is not None:
                self.service.elastic.left(self.pool)
            if self.grant is not None:
                self.service.limits.finish(self.grant, self.used_tokens)
            self.service._in_flight -= 1
            self.service.metrics.in_flight.set(self.service._in_flight)
            if self.service._in_flight == 0:
                self.service._idle.set()


@dataclass(slots=True)
class ActiveStream:
    """A stream whose first chunks have arrived; iterate `batches()` for the rest."""

    id: str
    model: str
    created: int
    decision: RouteDecision
    first: list[Chunk]
    _rest: AsyncGenerator[list[Chunk], None]
    _admission: Admission
    _service: GatewayService
    _counter: UsageCounter
    _span: Span = NO_SPAN  # the engine attempt that answers: it ends with the stream
    tenant: str | None = None
    usage: Usage | None = None  # the engine's, once its usage chunk has arrived (or the count)
    _started: float = field(default_factory=time.perf_counter)

    async def batches(self) -> AsyncGenerator[list[Chunk], None]:
        """All chunks, first batch included. Raises `UpstreamFailed` if the engine breaks off.

        An engine that sent no usage (llama.cpp's servers ignore `stream_options`) gets its
        answer counted here (`UsageCounter`): the usage is added to the last batch, or sent
        as a batch of its own when the engine's `[DONE]` came alone.
        """
        counter = self._counter
        try:
            # A short answer's whole stream, usage included, may be in the first batch.
            batch = self.first
            self._note_usage(batch)
            counter.add(batch)
            if batch and batch[-1].final and counter.missing:
                self._count_usage(batch)
            yield batch
            async for batch in self._rest:
                self._note_usage(batch)
                counter.add(batch)
                if batch[-1].final and counter.missing:
                    self._count_usage(batch)
                yield batch
            if counter.missing:  # [DONE] came in a read of its own
                last = [Chunk(final=True)]
                self._count_usage(last)
                yield last
        except StreamBroken as exc:
            assert self._admission.upstream is not None
            self._service.balancer.failed(self._admission.upstream, status=None, error=str(exc))
            self._span.fail(f"the engine failed mid-stream: {exc}")
            raise UpstreamFailed(f"the engine failed mid-stream: {exc}") from None
        finally:
            await self.close()

    def _note_usage(self, batch: list[Chunk]) -> None:
        usage = batch[-1].usage if batch else None  # usage comes last, after the final answer chunk
        if usage is not None:
            self._admission.used_tokens = usage.total_tokens
            self.usage = usage

    def _count_usage(self, batch: list[Chunk]) -> None:
        """Puts the counted usage on the batch's last chunk (it has none: the engine sent none)."""
        usage = self._counter.count()
        batch[-1].usage = usage
        self._admission.used_tokens = usage.total_tokens
        self.usage = usage

    async def close(self) -> None:
        # Closing the generator releases the upstream connection when the caller went away.
        with contextlib.suppress(Exception):
            await self._rest.aclose()
        if not self._admission.released and self.usage is not None:
            self._service.metrics.used(self.decision, self.usage, self.tenant)
        self._admission.release()
        self._span.end()


class GatewayService:
    def __init__(
        self,
        config: GatewayConfig,
        balancer: Balancer,
        *,
        metrics: Metrics | None = None,
        state: SharedState | None = None,
    ) -> None:
        from gateway.auth import Authenticator
        from gateway.state import SharedState

        self.config = config
        self.balancer = balancer
        self.metrics = metrics or Metrics("tandem_gateway")
        self.state = state or SharedState.from_config(config, self.metrics)
        self.auth = Authenticator(
            self.state.tenants,
            required=config.auth_required,
            cache_seconds=config.auth.cache_seconds,
            retry_after_s=config.limits.retry_after_seconds,
        )
        self.limits = self.state.limits
        # Connections are bounded by the requests in flight (`limits.max_in_flight`).
        self.transport = Transport(config.http_client)
        self.relay = Relay(self.transport, connect_timeout=config.router.connect_timeout_seconds)
        router = config.router
        self._retry_budgets = {
            pool.name: RetryBudget(
                ratio=router.retry_budget_ratio,
                min_retries=router.retry_budget_min_retries,
                window_s=router.retry_budget_window_seconds,
            )
            for pool in config.pools
        }
        self._in_flight = 0
        self._upstream_load: dict[str, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        # Told of every request's route once it is decided, and of every edge's heartbeat once
        # stored: the ops page's history of routes (`gateway/ops`).
        self.route_listeners: list[Callable[[RouteDecision], None]] = []
        self.heartbeat_listeners: list[Callable[[EdgeStatus], None]] = []
        self.elastic = ElasticPools(config, balancer, self.transport, self.metrics, self._upstream_load)
        self.tracing = Tracing(config.tracing, "tandem-gateway")

    async def start(self) -> None:
        await self.state.start()
        await self.elastic.start()
        if any(kind != "vllm" and exact_for(model) for kind, model in self._engines()):
            # Their answers are counted here (`gateway/usage.py`): Qwen's tokenizer loads now,
            # off the event loop, not in the first answer's path (~0.2 s).
            from tandem.routing.tokens import encoding

            await asyncio.to_thread(encoding)

    def _engines(self) -> list[tuple[str, str]]:
        """(kind, served model) of every configured endpoint and discovery template."""
        out: list[tuple[str, str]] = []
        for pool in self.config.pools:
            out += [(e.kind, e.model) for e in pool.endpoints]
            if pool.discovery is not None:
                out.append((pool.discovery.kind, pool.discovery.model))
        return out

    async def close(self) -> None:
        await self.elastic.stop()
        await self.transport.close()
        await self.state.close()
        self.tracing.shutdown()

    # --- decisions -------------------------------------------------------------------------

    def pool_for(self, model: str) -> Pool:
        pool = self.config.pool(model)
        if pool is None:
            raise ModelNotFound(model)
        return pool

    def visible_pools(self, tenant: Tenant | None) -> list[Pool]:
        """The pools a caller may use (all of them when authentication is off)."""
        pools = self.config.pools
        return pools if tenant is None else [p for p in pools if tenant.allows(p.name, *p.aliases)]

    def decide(self, req: ChatRequest, tenant: Tenant | None = None) -> tuple[RouteDecision, Pool]:
        """The route decision for `req`, and the pool it runs on. Raises before any engine call."""
        asked = self.pool_for(req.model)
        if tenant is not None and not tenant.allows(asked.name, *asked.aliases):
            raise PermissionDenied(
                f"this API key's tenant ({tenant.name}) may not use the model `{req.model}`"
            )
        decision = route(req, context_limit=asked.context_length, prefer=asked.prefer)
        pool = asked
        if decision.mode is Mode.NON_THINKING and asked.non_thinking_pool:
            pool = self.pool_for(asked.non_thinking_pool)
        decision.pool = pool.name
        if decision.estimated_tokens > pool.context_length:
            out = req.max_tokens or 0
            raise ContextTooLong(
                limit=pool.context_length, prompt_tokens=decision.estimated_tokens - out, max_tokens=out
            )
        return decision, pool

    # --- admission ---------------------------------------------------------------------------

    def _admit(self) -> Admission:
        if self.draining:
            raise UpstreamUnavailable("the gateway is shutting down", retry_after=1)
        if self._in_flight >= self.config.limits.max_in_flight:
            raise RateLimited(
                f"the gateway has {self._in_flight} requests in flight, its limit "
                f"(limits.max_in_flight={self.config.limits.max_in_flight})",
                retry_after=self.config.limits.retry_after_seconds,
            )
        self._in_flight += 1
        self._idle.clear()
        self.metrics.in_flight.set(self._in_flight)
        return Admission(self)

    async def _choose(self, pool: str, tried: set[str], *, ignore_cooldowns: bool = False) -> Upstream | None:
        """An endpoint of `pool` with free capacity; raises RateLimited when all are just full."""
        full: set[str] = set()
        while True:
            exclude = frozenset(tried | full)
            upstream = await self.balancer.choose(pool, exclude=exclude, ignore_cooldowns=ignore_cooldowns)
            if upstream is None:
                if full and not (set(u.id for u in self.balancer.upstreams(pool)) - full - tried):
                    raise RateLimited(
                        f"every endpoint of pool {pool!r} is at its max_concurrency",
                        retry_after=self.config.limits.retry_after_seconds,
                    )
                return None
            if self._upstream_load.get(upstream.id, 0) < upstream.max_concurrency:
                return upstream
            full.add(upstream.id)

    # --- running -----------------------------------------------------------------------------

    def _attempts(
        self, decision: RouteDecision, admission: Admission
    ) -> contextlib.aclosing[AsyncGenerator[Upstream, None]]:
        """Endpoints to try in order (`async with ... as attempts: async for upstream in attempts`).
        Closed on leaving the block: an abandoned async generator would be finalized through a
        thread-safe wake-up of the loop (a syscall and an extra loop turn per request)."""
        return contextlib.aclosing(self._endpoints(decision, admission))

    async def _endpoints(
        self, decision: RouteDecision, admission: Admission
    ) -> AsyncGenerator[Upstream, None]:
        """The first endpoint, then retries while the pool's retry budget allows: up to
        `num_retries` more endpoints of the pool, then of each fallback pool. Endpoints cooling
        down come last, when no other is left: a cooldown ranks an endpoint last, it never
        empties a pool whose engines still answer."""
        budget = self._retry_budgets[decision.pool]
        budget.request()
        attempts = self.config.router.num_retries + 1
        pools = [decision.pool, *self.balancer.fallbacks(decision.pool)]
        tried: dict[str, set[str]] = {pool: set() for pool in pools}
        first = True
        for ignore_cooldowns in (False, True):
            for pool in pools:
                while len(tried[pool]) < attempts:
                    with self.tracing.span("pool.choose", attributes={"tandem.pool": pool}):
                        upstream = await self._choose(pool, tried[pool], ignore_cooldowns=ignore_cooldowns)
                    if upstream is None:
                        break
                    if not first:
                        if not budget.try_retry():
                            admission.retry_budget_spent = True
                            return
                        self.metrics.retries.inc()
                    first = False
                    tried[pool].add(upstream.id)
                    admission.take_upstream(upstream)
                    decision.deployment = upstream.label
                    yield upstream
                    admission.drop_upstream()

    def _body(
        self, req: ChatRequest, decision: RouteDecision, upstream: Upstream, *, stream: bool
    ) -> dict[str, Any]:
        thinking = decision.mode is Mode.THINKING
        defaults = self.config.thinking_sampling if thinking else self.config.non_thinking_sampling
        body = wire.engine_body(
            req, model=upstream.model, thinking=thinking, sampling_defaults=defaults, stream=stream
        )
        return dialects.for_engine(body, upstream.kind, served_model=upstream.model)

    def _succeeded(self, upstream: Upstream, latency_s: float) -> None:
        # Reported once the answer is on its way: litellm's bookkeeping (~35 us of CPU) then
        # runs after the reply's send instead of before it.
        report = functools.partial(self.balancer.succeeded, upstream, latency_s=latency_s)
        asyncio.get_running_loop().call_soon(report)

    def _fail(self, upstream: Upstream, exc: AttemptFailed, failures: list[AttemptFailed]) -> None:
        """Books a failed attempt; raises when the request should not go elsewhere.

        A failure of the endpoint counts against it (cooldowns) and the request moves on. A
        refusal of the request itself does not count; a 4xx goes back to the caller at once, a
        5xx that names the request gets one more endpoint, in case this engine lacks a feature
        another has, and goes back to the caller if that one refuses it too.
        """
        if exc.request_fault:
            self.balancer.rejected(upstream)
            log.info("upstream_rejected_request", upstream=upstream.id, status=exc.status, error=exc.message)
            if exc.over_context:  # every engine of the pool serves the same model: no retry
                raise ContextTooLong.from_engine(exc.message)
            assert exc.status is not None
            if exc.status < 500 or any(f.request_fault for f in failures):
                raise _request_error(exc)
        else:
            self.balancer.failed(upstream, status=exc.status, error=exc.message)
            if not exc.reached:  # the engine is not there (any more): look the name up again
                self.elastic.endpoint_failed(upstream.pool)
            self.metrics.upstream_failures.labels(upstream.label, str(exc.status or "connect")).inc()
            log.warning("upstream_attempt_failed", upstream=upstream.id, status=exc.status, error=exc.message)
        failures.append(exc)

    def _exhausted(
        self, decision: RouteDecision, failures: list[AttemptFailed], admission: Admission
    ) -> TandemError:
        refused = [f for f in failures if f.request_fault]
        if refused:  # the only answer about the request itself is that it cannot be served
            return _request_error(refused[-1])
        if failures and all(f.status is None and "no answer" in f.message for f in failures):
            return UpstreamTimeout(f"no endpoint of pool {decision.pool!r} answered in time", retry_after=1)
        detail = f": last error: {failures[-1].message}" if failures else ": every endpoint is cooling down"
        if admission.retry_budget_spent:
            detail += " (no retry: the pool's retry budget is spent)"
        return UpstreamUnavailable(
            f"no endpoint of pool {decision.pool!r} could take the request{detail}",
            retry_after=self.config.router.cooldown_seconds or 1,
        )

    async def complete(self, req: ChatRequest, tenant: Tenant | None = None) -> ChatResult:
        """A whole answer, streamed from the engine and assembled here.

        An engine sends a non-streamed answer only once it has all of it, so waiting for one
        cannot tell a hung engine from a long answer. Streamed, the first token has its own
        deadline (`first_token_timeout_seconds`, then another endpoint gets the request) and a
        long thinking answer only the whole-request cap (`timeout_seconds`).
        """
        active = await self.stream(req, tenant)
        chunks: list[Chunk] = []
        async for batch in active.batches():
            chunks.extend(batch)
        whole = assemble(chunks)
        return ChatResult(
            id=active.id,
            model=req.model,
            content=whole.content,
            reasoning=whole.reasoning,
            tool_calls=whole.tool_calls,
            finish_reason=whole.finish_reason or "stop",
            usage=whole.usage or Usage(),
            created=active.created,
            route=active.decision,
        )

    async def stream(
        self,
        req: ChatRequest,
        tenant: Tenant | None = None,
        *,
        on_hold: Callable[[RouteDecision], Awaitable[None]] | None = None,
    ) -> ActiveStream:
        """Starts a stream and waits for its first chunks, retrying elsewhere until they come.

        Anything raised here reaches the caller as a plain error status; once this returns,
        a failure can only end the stream (`ActiveStream.batches` raises `UpstreamFailed`).
        `on_hold` is awaited once, when the request starts waiting for the pool to have an
        endpoint (a face may start its answer then and keep the caller's connection alive).
        """
        with self.tracing.span("route.decide") as span:
            decision, pool = self.decide(req, tenant)
            span.set("tandem.route", decision.header())
        admission = self._admit()
        for listener in self.route_listeners:
            listener(decision)
        failures: list[AttemptFailed] = []
        try:
            with self.tracing.span("limits.admit"):
                admission.grant = await self.limits.acquire(tenant, decision.estimated_tokens)
            admission.enter(decision.pool)
            hold_until: float | None = None
            while True:
                active = await self._first_answer(req, decision, admission, failures)
                if active is not None:
                    return active
                if not self._may_hold(pool, failures):
                    raise self._exhausted(decision, failures, admission)
                assert pool.cold_start is not None
                if hold_until is None:
                    hold_until = asyncio.get_running_loop().time() + pool.cold_start.timeout_seconds
                    if on_hold is not None:
                        await on_hold(decision)
                with self.tracing.span("pool.hold", attributes={"tandem.pool": pool.name}):
                    await self.elastic.hold(pool, hold_until)
                failures.clear()
        except BaseException:
            admission.release()
            raise

    def _may_hold(self, pool: Pool, failures: list[AttemptFailed]) -> bool:
        """Whether a request that found no endpoint may wait for one: the pool holds requests
        (`cold_start`), and no engine got it (none was there, or none could be reached)."""
        return pool.cold_start is not None and all(not f.reached for f in failures)

    async def _first_answer(
        self, req: ChatRequest, decision: RouteDecision, admission: Admission, failures: list[AttemptFailed]
    ) -> ActiveStream | None:
        """Tries endpoints until one streams its first chunks; None when none did."""
        router = self.config.router
        async with self._attempts(decision, admission) as attempts:
            async for upstream in attempts:
                started = time.perf_counter()
                body = self._body(req, decision, upstream, stream=True)
                span = self.tracing.start(
                    "engine.attempt",
                    kind="client",
                    attributes={"tandem.pool": upstream.pool, "tandem.endpoint": upstream.label},
                )
                trace_headers: dict[str, str] = {}
                self.tracing.inject(trace_headers, span)
                try:
                    resp = await self.relay.open(
                        upstream,
                        body,
                        first_byte_timeout=router.first_token_timeout_seconds,
                        total_timeout=router.timeout_seconds,
                        headers=trace_headers,
                    )
                    rest = stream_chunks(resp, coalesce_s=self.config.streaming.coalesce_ms / 1000)
                    try:
                        deadline = router.first_token_timeout_seconds
                        first = await first_batch(rest, deadline)
                    except TimeoutError:
                        await rest.aclose()
                        raise AttemptFailed(f"{upstream.id}: no first token within {deadline:g}s") from None
                    except StreamBroken as exc:
                        await rest.aclose()
                        if exc.empty and upstream.kind == "llama-cpp":
                            refused = await self.relay.over_context(
                                upstream, body, within_s=router.first_token_timeout_seconds
                            )
                            if refused is not None:
                                raise refused from None
                        raise AttemptFailed(f"{upstream.id}: {exc}") from None
                except AttemptFailed as exc:
                    span.fail(exc.message)
                    span.end()
                    self._fail(upstream, exc, failures)
                    continue
                except BaseException:
                    span.end()
                    raise
                latency = time.perf_counter() - started
                self._succeeded(upstream, latency)
                self.metrics.first_token.observe(latency)
                admission.used_tokens = None  # known when the usage chunk arrives
                return ActiveStream(
                    id=f"chatcmpl-{req.request_id or new_request_id()}",
                    model=req.model,
                    created=int(time.time()),
                    decision=decision,
                    first=first,
                    _rest=rest,
                    _admission=admission,
                    _service=self,
                    _counter=UsageCounter(req, upstream.model),
                    _span=span,
                    tenant=req.tenant,
                )
        return None

    # --- lifecycle ----------------------------------------------------------------------------

    async def drain(self, deadline_s: float) -> bool:
        """Stops admitting requests and waits for those in flight; True when all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=deadline_s)
            return True
        except TimeoutError:
            return False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def upstream_in_flight(self, upstream_id: str) -> int:
        """This gateway's requests on one endpoint now."""
        return self._upstream_load.get(upstream_id, 0)


def _request_error(exc: AttemptFailed) -> TandemError:
    """An engine's refusal of the request itself, for the caller (400): its message passed on."""
    if exc.status is not None and exc.status >= 500:
        return BadRequest(f"the engine cannot serve this request: {exc.message}")
    return BadRequest(exc.message)
