"""The gateway's gRPC face: `tandem.v1.Gateway`, the standard health service and reflection.

A thin layer over `GatewayService`. `Chat` streams one `ChatChunk` per batch of engine events
(answer and reasoning kept apart); the last chunk carries usage, finish reason and the route
decision, which is also sent as trailing metadata `x-tandem-route`. The engine's final batch
travels in that last chunk, so a short answer read in one go is a single message.

Every call authenticates its caller from the metadata `authorization: Bearer <key>` (what the
edge agent's uplink sends) or `x-api-key: <key>`, gets a request id (sent back as trailing
metadata `x-request-id`) and is counted: `gateway.grpc_interceptors` does that around each
method. `Heartbeat` needs an edge credential (an edge key, or the client certificate an mTLS
listener verified), may report only the edge that credential names, records the edge's status
in the fleet store (bounded: `gateway.fleet.check_status`) and answers with the model version
the edge should serve and every cloud pool's state (warm or cold, `gateway.pool.elastic.PoolStates`),
which the edge's `cloud_cold` policy reads.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway import fleet
from gateway.config import TLS
from gateway.fleet import EdgeStatus, FleetStore, ServedModel
from gateway.grpc_interceptors import current_call, interceptors
from gateway.pool.elastic import PoolState, PoolStates, Readiness
from gateway.service import GatewayService
from tandem.chat import Chunk, Usage, assemble
from tandem.errors import PermissionDenied
from tandem.tracing import NO_SPAN, Span
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc as pb_grpc
from tandem.wire import protobuf as wire

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Gateway"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class GatewayServicer(pb_grpc.GatewayServicer):
    """The Gateway service's methods, each only its own work: the interceptors authenticate the
    caller (`current_call().tenant`), give the call its request id, log context and metrics, and
    turn a raised `TandemError` into its gRPC status."""

    def __init__(self, service: GatewayService, fleet_store: FleetStore) -> None:
        self.service = service
        self.fleet = fleet_store
        self.pool_states = PoolStates(service.elastic)

    async def Chat(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatChunk]:
        tracing = self.service.tracing
        if not tracing.enabled:
            async for chunk in self._chat(request, NO_SPAN):
                yield chunk
            return
        # Started here and ended in `finally`, never made current across a `yield`: a stream its
        # caller abandoned is closed from another task, where a context attached here could not
        # be detached. `_chat` makes it current only while it starts the stream.
        carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        span = tracing.start(
            "gateway.request", kind="server", carrier=carrier, attributes={"tandem.face": "grpc"}
        )
        call = current_call()
        try:
            async for chunk in self._chat(request, span):
                yield chunk
        except BaseException as exc:
            span.fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if call.decision is not None:
                span.set("tandem.route", call.decision.header())
            span.end()

    async def _chat(self, request: pb.ChatRequest, span: Span) -> AsyncIterator[pb.ChatChunk]:
        call = current_call()
        req = wire.request_from_pb(request)
        req.request_id = call.request_id
        if call.tenant is not None:
            req.tenant = call.tenant.name
        with self.service.tracing.current(span):  # the parent of the service's spans
            stream = await self.service.stream(req, call.tenant)
        call.decision = stream.decision  # the route: trailing metadata and metric labels
        usage: Usage | None = None
        finish = ""
        tail = Chunk()  # what the engine's final batch said: it leaves with the last message
        async for batch in stream.batches():
            merged = _merge(batch)
            if merged.usage is not None:
                usage = merged.usage
                merged.usage = None
            finish = merged.finish_reason or finish
            if merged.final:
                tail = merged
            elif merged.content or merged.reasoning or merged.tool_calls:
                # The finish reason goes on the last message only, even when the engine's
                # finish came in a batch before its [DONE] (a held batch often holds both).
                merged.finish_reason = None
                yield wire.chunk_to_pb(
                    merged, response_id=stream.id, model=stream.model, created=stream.created
                )
        last = wire.chunk_to_pb(tail, response_id=stream.id, model=stream.model, created=stream.created)
        last.finish_reason = finish or "stop"
        last.route.CopyFrom(wire.decision_to_pb(stream.decision))
        if usage is not None:
            last.usage.CopyFrom(wire.usage_to_pb(usage))
        yield last

    async def Classify(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.RouteDecision:
        call = current_call()
        decision, _ = self.service.decide(wire.request_from_pb(request), call.tenant)
        call.decision = decision
        return wire.decision_to_pb(decision)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        out = pb.ListModelsResponse()
        for pool in self.service.visible_pools(current_call().tenant):
            caps = ["completion", "tools"] + (["thinking"] if pool.supports_thinking_switch else [])
            for name in (pool.name, *pool.aliases):
                out.models.add(
                    id=name, owned_by="tandem", context_length=pool.context_length, capabilities=caps
                )
        return out

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        edge = current_call().edge
        if edge is not None and not edge.allows(request.edge_id):
            names = ", ".join(sorted(edge.names))
            raise PermissionDenied(f"this {edge.via} speaks for edge {names}: it may not report another edge")
        status = EdgeStatus(
            edge_id=request.edge_id,
            group=request.group or fleet.DEFAULT_GROUP,
            models=[ServedModel(m.name, m.digest, m.reference) for m in request.models],
            in_flight=request.in_flight,
            queued=request.queued,
            healthy=request.healthy,
            version=request.version,
            labels=dict(request.labels),
            breaker=request.breaker,
            routes={name: getattr(request.routes, name) for name in fleet.ROUTE_COUNTS},
        )
        desired = await self.fleet.heartbeat(status)  # refused when over a cap (`fleet.check_status`)
        for listener in self.service.heartbeat_listeners:
            listener(status)
        ref, digest = fleet.assignment(status.edge_id, status.group, desired)
        return pb.HeartbeatResponse(
            desired_reference=ref,
            desired_digest=digest,
            interval_seconds=self.service.config.fleet.heartbeat_seconds,
            server_time_unix=int(time.time()),
            pools=[_pool_to_pb(p) for p in self.pool_states.now()],
        )


_READINESS = {Readiness.WARM: pb.POOL_READINESS_WARM, Readiness.COLD: pb.POOL_READINESS_COLD}


def _pool_to_pb(p: PoolState) -> pb.PoolState:
    return pb.PoolState(
        name=p.name,
        aliases=p.aliases,
        readiness=_READINESS[p.readiness],
        endpoints=p.endpoints,
        held=p.held,
        cold_seconds=p.cold_seconds,
        estimated_wait_seconds=p.estimated_wait_seconds,
    )


def _merge(batch: list[Chunk]) -> Chunk:
    """One chunk for a batch of engine events read or held together: fewer, larger gRPC
    messages. A tool call's pieces join into one delta per call (`assemble`)."""
    if len(batch) == 1:
        return batch[0]
    out = assemble(batch)
    out.final = batch[-1].final
    return out


def build_server(
    service: GatewayService, fleet_store: FleetStore
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The gRPC server with every service registered (not yet bound or started)."""
    keepalive_ms = int(service.config.grpc.keepalive_seconds * 1000)
    server = grpc.aio.server(
        interceptors=interceptors(
            service.auth, service.metrics, client_certs=_requires_client_certs(service.config.grpc.tls)
        ),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Keepalive pings keep a silent thinking phase from being cut by idle proxies.
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ],
    )
    pb_grpc.add_GatewayServicer_to_server(GatewayServicer(service, fleet_store), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    return server, health_servicer


def _requires_client_certs(tls: TLS | None) -> bool:
    return tls is not None and tls.client_ca_file is not None


def bind(server: grpc.aio.Server, host: str, port: int, tls: TLS | None) -> int:
    """Binds the listening address (TLS or mTLS when configured); returns the bound port."""
    address = f"{host}:{port}"
    if tls is None:
        return server.add_insecure_port(address)
    creds = grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=tls.client_ca_file.read_bytes() if tls.client_ca_file else None,
        require_client_auth=_requires_client_certs(tls),
    )
    return server.add_secure_port(address, creds)
