"""The edge application: decide where a request runs, run it there, and fall back when a part
is down.

`EdgeService` is built once at start-up from the configuration and shared by the OpenAI and
Ollama faces, which only convert wire formats. For each request it:

1. plans with `edge_agent.policy` (the shared route decision plus the edge's policies) from a
   snapshot of its parts: the local Ollama (up, models, queue), the uplink's circuit breaker;
2. runs the plan on the local Ollama (thinking off, or on when degraded) or forwards it to the
   gateway, and waits for the first chunks;
3. when that attempt fails before any token, plans again with the failed part marked down
   (forward, degrade or a clear 503), so no request hangs on a dead part;
4. hands the faces a stream whose first chunks have arrived (or a whole answer).

It also runs the uplink's health probe (feeding the breaker) and the heartbeat to the gateway,
keeping the last reply's cloud pool states for the `cloud_cold` policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field, replace

from aiohttp import web
from prometheus_client import Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_agent import policy
from edge_agent.breaker import CircuitBreaker, State
from edge_agent.config import EdgeConfig
from edge_agent.local_engine import LocalEngine, LocalRefused, LocalUnavailable
from edge_agent.policy import Action, Plan, Situation
from edge_agent.uplink import Uplink, UplinkDown
from tandem.chat import ChatRequest, ChatResult, Chunk, Mode, RouteDecision, Target, ToolCall, Usage
from tandem.errors import TandemError, UpstreamUnavailable
from tandem.logs import get_logger, new_request_id
from tandem.metrics import Metrics
from tandem.tracing import Span, Tracing
from tandem.transport import Transport
from tandem.v1 import gateway_pb2 as pb
from tandem.version import tandem_version
from tandem.wire import ollama as ollama_wire

log = get_logger("tandem.edge")

_BREAKER_VALUE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}
# Pool states older than this many heartbeat intervals say nothing (replies stopped coming).
POOL_STATES_TRUSTED_INTERVALS = 3


@dataclass(slots=True)
class EdgeStream:
    """A stream whose first chunks have arrived; iterate `batches()` for all of them."""

    id: str
    model: str
    created: int
    decision: RouteDecision
    first: list[Chunk]
    _rest: AsyncGenerator[list[Chunk], None]
    _done: Callable[[], None]
    _closed: bool = field(default=False)
    usage: Usage | None = None  # the engine's, once it has come (last, with the final chunk)

    async def batches(self) -> AsyncGenerator[list[Chunk], None]:
        """All chunks, first batch included. Raises `UpstreamFailed` if the source breaks off."""
        try:
            self._note_usage(self.first)
            yield self.first
            async for batch in self._rest:
                self._note_usage(batch)
                yield batch
        finally:
            await self.close()

    def _note_usage(self, batch: list[Chunk]) -> None:
        if batch and batch[-1].usage is not None:
            self.usage = batch[-1].usage

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._rest.aclose()
            self._done()


class _ModelVersions(Collector):
    """`tandem_edge_model_version{model, reference, digest} 1` for each model version that model
    sync placed on this box: which version each edge runs, as ops ask during a rollout."""

    def __init__(self, versions: Callable[[], dict[str, tuple[str, str]]]) -> None:
        self._versions = versions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tandem_edge_model_version",
            "The model version this box serves, by served name (1 per version placed)",
            labels=["model", "reference", "digest"],
        )
        for model, (reference, digest) in self._versions().items():
            family.add_metric([model, reference, digest], 1)
        yield family


class EdgeService:
    def __init__(self, config: EdgeConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics("tandem_edge")
        registry = self.metrics.registry
        self._breaker_gauge = Gauge(
            "tandem_edge_uplink_breaker_state",
            "Uplink circuit: 0 closed, 1 half-open, 2 open",
            registry=registry,
        )
        self._local_up_gauge = Gauge(
            "tandem_edge_local_available", "1 while the local Ollama answers", registry=registry
        )
        self._local_in_flight = Gauge(
            "tandem_edge_local_in_flight", "Requests on the local Ollama now", registry=registry
        )
        self._local_in_flight.set_function(lambda: self.local.in_flight)
        self._local_up_gauge.set_function(lambda: int(self.local.available))
        self.breaker = CircuitBreaker(
            failures_to_open=config.breaker.failures_to_open,
            probe_failures_to_open=config.breaker.probe_failures_to_open,
            successes_to_close=config.breaker.successes_to_close,
            on_change=self._breaker_changed,
        )
        # Every outbound HTTP call of the edge (Ollama, the model registry) goes through this.
        self.transport = Transport(config.http_client)
        self.local = LocalEngine(
            config.ollama,
            sampling={"thinking": config.thinking_sampling, "non_thinking": config.non_thinking_sampling},
            transport=self.transport,
        )
        self.uplink = Uplink(config.uplink, self.breaker, edge_id=config.edge_id)
        self.tracing = Tracing(config.tracing, "tandem-edge")
        # Called with every heartbeat reply (model distribution listens here).
        self.heartbeat_listeners: list[Callable[[pb.HeartbeatResponse], None]] = []
        # Served name -> (reference, manifest digest) of versions placed by model sync; the
        # heartbeat reports them so the gateway can tell whether the edge matches its rollout.
        self.served_versions: Callable[[], dict[str, tuple[str, str]]] = dict
        registry.register(_ModelVersions(lambda: self.served_versions()))
        self._tasks: list[asyncio.Task[None]] = []
        self._cloud_models: list[pb.ModelInfo] = []
        self._cloud_models_at = -1e9
        # The last heartbeat reply's pool states, by every name that reaches the pool; when it came.
        self._pools: dict[str, pb.PoolState] = {}
        self._pools_at = -1e9
        self._heartbeat_interval = config.heartbeat_seconds
        self._in_flight = 0
        # Answered requests since start by (target, mode): the heartbeat reports them, and the
        # gateway's ops page turns them into this edge's local share.
        self.route_counts: dict[tuple[str, str], int] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        self.startup_seconds: float | None = None  # process start to ready, set by the server

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.uplink.start()
        await self.local.start()
        b = self.config.breaker
        self._tasks = [
            asyncio.create_task(
                self.breaker.watch(
                    self._probe, interval=b.probe_interval_seconds, deadline=b.probe_timeout_seconds
                ),
                name="uplink-probe",
            ),
            asyncio.create_task(self._heartbeat_loop(), name="uplink-heartbeat"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.uplink.close()
        await self.local.close()
        await self.transport.close()
        self.tracing.shutdown()

    def _breaker_changed(self, state: State) -> None:
        self._breaker_gauge.set(_BREAKER_VALUE[state])
        if state is State.OPEN:
            self._cut_silent_calls()

    async def _probe(self) -> None:
        if self.breaker.state is State.OPEN:
            self._cut_silent_calls()
        await self.uplink.probe(self.config.breaker.probe_timeout_seconds)

    def _cut_silent_calls(self) -> None:
        """While the breaker is open, ends the forwarded calls that have gone silent: on a dead
        link they would wait for their deadline. Calls still receiving are left alone: a
        link that carries them is not dead, whatever one late probe said."""
        silent_for = self.config.breaker.probe_timeout_seconds
        if ended := self.uplink.cut(
            f"the uplink to the gateway is down: {self.breaker.last_error}", silent_for=silent_for
        ):
            log.warning("uplink_calls_cut", calls=ended, silent_for_s=silent_for)

    # --- deciding ------------------------------------------------------------------------------

    def situation(self, model: str | None = None) -> Situation:
        """A snapshot of the parts, for one plan (of a request for `model`)."""
        local = self.local
        return Situation(
            local_models=local.contexts,
            thinkers=local.thinkers,
            local_up=local.available,
            saturated=local.saturated,
            uplink_up=self.breaker.allows,
            cloud_cold=model is not None and self.cloud_cold(model),
            uplink_retry_after=self.config.breaker.retry_after_seconds,
            local_retry_after=self.config.ollama.refresh_seconds,
        )

    def pool_state(self, model: str) -> pb.PoolState | None:
        """The state of the gateway's pool for `model` (as forwarded) at the last heartbeat
        reply; None when unknown, or when that reply is older than
        `POOL_STATES_TRUSTED_INTERVALS` heartbeat intervals."""
        age = asyncio.get_running_loop().time() - self._pools_at
        if age > POOL_STATES_TRUSTED_INTERVALS * self._heartbeat_interval:
            return None
        return self._pools.get(self.config.uplink.models.get(model, model))

    def cloud_cold(self, model: str) -> bool:
        state = self.pool_state(model)
        return state is not None and state.readiness == pb.POOL_READINESS_COLD

    # --- running -------------------------------------------------------------------------------

    async def stream(
        self, req: ChatRequest, *, generate: ollama_wire.GenerateRequest | None = None
    ) -> EdgeStream:
        """Runs `req` where the policy says and returns once its first chunks have arrived.

        `generate` is the original `/api/generate` call when `req` came from one (a local
        Ollama then runs it as a generate). Raises a Tandem error (status before streaming).
        """
        if self.draining:
            raise UpstreamUnavailable("the edge agent is shutting down", retry_after=1)
        if not req.request_id:
            req.request_id = new_request_id()
        self._enter()
        try:
            s = self.situation(req.model)
            for _ in range(3):  # each part is tried at most once, then the plan is a reject
                with self.tracing.span("route.decide") as span:
                    p = policy.plan(req, s, self.config.policy)
                    span.set("tandem.route", p.decision.header())
                try:
                    return await self._run(req, p, generate)
                except LocalRefused as exc:
                    log.info("local_refused", reason=exc.reason, error=str(exc))
                    s = replace(s, local_up=False, local_down_reason=exc.reason)
                except LocalUnavailable as exc:
                    log.warning("local_failed", error=str(exc))
                    s = replace(s, local_up=False)
                except UplinkDown as exc:
                    log.warning("uplink_failed", error=str(exc))
                    s = replace(s, uplink_up=False)
                except UpstreamUnavailable as exc:
                    if p.action is not Action.FORWARD:
                        raise
                    # The gateway answered that its cloud pool is down: same policy as a cut WAN.
                    log.warning("cloud_unavailable", error=exc.message)
                    s = replace(
                        s,
                        uplink_up=False,
                        uplink_down_why="the gateway's cloud pool is unavailable",
                        uplink_retry_after=exc.retry_after or s.uplink_retry_after,
                    )
            raise UpstreamUnavailable("no engine could take the request", retry_after=1)
        except BaseException:
            self._leave()
            raise

    async def _run(
        self, req: ChatRequest, p: Plan, generate: ollama_wire.GenerateRequest | None
    ) -> EdgeStream:
        if p.action is Action.REJECT:
            assert p.error is not None
            log.info("request_rejected", route=p.decision.header(), error=p.error.message)
            raise p.error
        started = time.perf_counter()
        local = p.action is Action.LOCAL
        span = self.tracing.start("ollama.call" if local else "uplink.call", kind="client")
        try:
            if local:
                first, rest = await self._run_local(req, p, generate)
            else:
                first, rest = await self._forward(req, p, span)
        except BaseException as exc:
            span.fail(f"{type(exc).__name__}: {exc}")
            span.end()
            raise
        self.metrics.first_token.observe(time.perf_counter() - started)
        stream = EdgeStream(
            id=f"chatcmpl-{req.request_id}",
            model=req.model,
            created=int(time.time()),
            decision=p.decision,
            first=first,
            _rest=rest,
            _done=self._leave,
        )
        stream._done = functools.partial(self._finished, span, stream)
        return stream

    def _finished(self, span: Span, stream: EdgeStream) -> None:
        span.end()
        if stream.usage is not None:
            self.metrics.used(stream.decision, stream.usage)
        self._leave()

    async def _run_local(
        self, req: ChatRequest, p: Plan, generate: ollama_wire.GenerateRequest | None
    ) -> tuple[list[Chunk], AsyncGenerator[list[Chunk], None]]:
        model = self.local.model(req.model)
        if model is None:  # gone between the snapshot and now
            raise LocalRefused(f"model '{req.model}' is not on the local Ollama", reason="model_unavailable")
        settings = self.local.settings(model, thinking=p.thinking)
        if generate is not None:
            path = "/api/generate"
            body = ollama_wire.engine_generate_body(
                generate, model=model.name, thinking=p.thinking, settings=settings
            )
        else:
            path = "/api/chat"
            body = ollama_wire.engine_chat_body(req, model=model.name, thinking=p.thinking, settings=settings)
        stream = await self.local.stream(path, body)
        return stream.first, stream.rest()

    async def _forward(
        self, req: ChatRequest, p: Plan, span: Span
    ) -> tuple[list[Chunk], AsyncGenerator[list[Chunk], None]]:
        # The mode travels explicitly: the answer must match the mode the route header promised.
        up = replace(
            req,
            model=self.config.uplink.models.get(req.model, req.model),
            mode=p.decision.mode,
            metadata={**req.metadata, "edge_id": self.config.edge_id, "edge_reason": p.decision.reason},
        )
        # A cold pool's gateway holds the request until a replica is ready: wait that long too.
        pool = self.pool_state(req.model)
        extra_wait_s = 0.0
        if pool is not None and pool.readiness == pb.POOL_READINESS_COLD:
            extra_wait_s = pool.estimated_wait_seconds
        trace: dict[str, str] = {}
        self.tracing.inject(trace, span)  # the gateway's spans continue this trace
        stream = await self.uplink.chat(up, extra_wait_s=extra_wait_s, metadata=trace)
        return [stream.first], stream.rest()

    async def complete(
        self, req: ChatRequest, *, generate: ollama_wire.GenerateRequest | None = None
    ) -> ChatResult:
        """A whole answer, gathered from the stream."""
        stream = await self.stream(req, generate=generate)
        content: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCall] = []
        finish = "stop"
        usage = Usage()
        async for batch in stream.batches():
            for c in batch:
                content.append(c.content)
                reasoning.append(c.reasoning)
                calls.extend(c.tool_calls)
                finish = c.finish_reason or finish
                usage = c.usage or usage
        return ChatResult(
            id=stream.id,
            model=stream.model,
            content="".join(content),
            reasoning="".join(reasoning),
            tool_calls=calls,
            finish_reason=finish,
            usage=usage,
            created=stream.created,
            route=stream.decision,
        )

    def count(
        self, face: str, decision: RouteDecision | None, status: str, started: float | None = None
    ) -> None:
        """One answered request in `tandem_edge_requests` (and its duration, since `started`)."""
        self.metrics.answered(face, decision, status, started)
        if decision is not None:
            key = (decision.target.value, decision.mode.value)
            self.route_counts[key] = self.route_counts.get(key, 0) + 1

    # --- in flight and draining ----------------------------------------------------------------

    @contextlib.contextmanager
    def passing_through(self) -> Iterator[None]:
        """A call handed to the local Ollama as it is (embeddings, load, unload, a model's
        details): refused while draining, and in flight (waited for at drain) until it ends."""
        if self.draining:
            raise UpstreamUnavailable("the edge agent is shutting down", retry_after=1)
        self._enter()
        try:
            yield
        finally:
            self._leave()

    def _enter(self) -> None:
        self._in_flight += 1
        self._idle.clear()
        self.metrics.in_flight.set(self._in_flight)

    def _leave(self) -> None:
        self._in_flight -= 1
        self.metrics.in_flight.set(self._in_flight)
        if self._in_flight == 0:
            self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def drain(self, deadline_s: float) -> bool:
        """Stops admitting requests and waits for those in flight; True when all finished."""
        self.draining = True
        try:
            async with asyncio.timeout(deadline_s):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    # --- the gateway's models and the heartbeat --------------------------------------------------

    async def cloud_models(self) -> list[pb.ModelInfo]:
        """The gateway's models, cached for `uplink.models_cache_seconds`; stale or none while
        the uplink is down (listing must not wait on a dead WAN)."""
        loop = asyncio.get_running_loop()
        fresh = loop.time() - self._cloud_models_at < self.config.uplink.models_cache_seconds
        if fresh or not self.breaker.allows:
            return self._cloud_models
        try:
            self._cloud_models = await self.uplink.list_models(self.config.breaker.probe_timeout_seconds)
            self._cloud_models_at = loop.time()
        except (UplinkDown, TandemError) as exc:
            log.info("cloud_models_unavailable", error=str(exc))
        return self._cloud_models

    def heartbeat_request(self) -> pb.HeartbeatRequest:
        local = self.local
        return pb.HeartbeatRequest(
            edge_id=self.config.edge_id,
            group=self.config.group,
            models=self._served_models(),
            in_flight=self._in_flight,
            queued=max(0, local.in_flight - self.config.ollama.num_parallel),
            healthy=local.available,
            version=tandem_version(),
            routes=self._route_counts(),
            breaker=self.breaker.state.value,
        )

    def _route_counts(self) -> pb.RouteCounts:
        c = self.route_counts
        return pb.RouteCounts(
            local_thinking=c.get((Target.EDGE.value, Mode.THINKING.value), 0),
            local_non_thinking=c.get((Target.EDGE.value, Mode.NON_THINKING.value), 0),
            forwarded_thinking=c.get((Target.CLOUD.value, Mode.THINKING.value), 0),
            forwarded_non_thinking=c.get((Target.CLOUD.value, Mode.NON_THINKING.value), 0),
        )

    def _served_models(self) -> list[pb.ServedModel]:
        synced = self.served_versions()
        out = []
        for m in self.local.models.values():
            reference, digest = synced.get(m.name, ("", m.digest))
            out.append(pb.ServedModel(name=m.name, digest=digest, reference=reference))
        return out

    async def _heartbeat_loop(self) -> None:
        while True:
            if self.breaker.allows:
                try:
                    reply = await self.uplink.heartbeat(self.heartbeat_request(), deadline_s=5.0)
                except (UplinkDown, TandemError) as exc:
                    log.info("heartbeat_failed", error=str(exc))
                else:
                    self.heard(reply)
            await asyncio.sleep(self._heartbeat_interval)

    def heard(self, reply: pb.HeartbeatResponse) -> None:
        """Takes in one heartbeat reply: the next interval (the gateway says when), the cloud
        pools' states, and whatever the listeners do with it."""
        self._heartbeat_interval = reply.interval_seconds or self.config.heartbeat_seconds
        self._pools = {name: p for p in reply.pools for name in (p.name, *p.aliases)}
        self._pools_at = asyncio.get_running_loop().time()
        for listener in self.heartbeat_listeners:
            listener(reply)


# Where the edge app keeps its service, for the faces' handlers.
SERVICE_KEY = web.AppKey("edge_service", EdgeService)
