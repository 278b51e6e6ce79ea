"""The gRPC face's interceptors: authentication, request ids, log context, status and metrics.

Most tests serve a recording `tandem.v1.Gateway` servicer behind the gateway's interceptors on
loopback, so they see exactly what reaches a servicer method; the last ones use the whole
gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
import structlog.testing
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.auth import MISSING, Authenticator
from gateway.grpc_interceptors import EdgeCredential, RequestIdInterceptor, current_call, interceptors
from gateway.server import GatewayServer
from gateway.state.tenants import MemoryTenants
from tandem.errors import BadRequest
from tandem.metrics import Metrics
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc

HOLD = "hold"  # a Chat request for this model streams one chunk, then waits to be cancelled


@dataclass
class Seen:
    """What one servicer method saw of its call."""

    method: str
    request_id: str
    tenant: str | None
    log_context: dict[str, Any]
    edge: EdgeCredential | None = None


@dataclass
class RecordingServicer(gateway_pb2_grpc.GatewayServicer):
    seen: list[Seen] = field(default_factory=list)
    held: asyncio.Event = field(default_factory=asyncio.Event)

    def _record(self, method: str) -> None:
        call = current_call()
        tenant = call.tenant.name if call.tenant else None
        context = structlog.contextvars.get_contextvars()
        self.seen.append(Seen(method, call.request_id, tenant, context, call.edge))

    async def Chat(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatChunk]:
        self._record("Chat")
        yield pb.ChatChunk(content="hello")
        if request.model == HOLD:
            self.held.set()
            await asyncio.Event().wait()

    async def Classify(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.RouteDecision:
        self._record("Classify")
        return pb.RouteDecision()

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        self._record("ListModels")
        return pb.ListModelsResponse()

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        self._record("Heartbeat")
        if not request.edge_id:
            raise BadRequest("edge_id is required")
        return pb.HeartbeatResponse()


@dataclass
class Served:
    servicer: RecordingServicer
    metrics: Metrics
    stub: gateway_pb2_grpc.GatewayStub
    channel: grpc.aio.Channel
    key: str  # a valid key of the tenant "acme"
    edge_key: str  # an edge key of the tenant "acme", for the edge "box-1"


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """A recording servicer behind the gateway's interceptors, with keys required."""
    tenants = MemoryTenants()
    key, _ = await tenants.create_key("acme")
    edge_key, _ = await tenants.create_key("acme", role="edge", edge="box-1")
    metrics = Metrics("tandem_gateway")
    servicer = RecordingServicer()
    server = grpc.aio.server(interceptors=interceptors(Authenticator(tenants, required=True), metrics))
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Served(servicer, metrics, gateway_pb2_grpc.GatewayStub(channel), channel, key, edge_key)
    await server.stop(None)


class RecordingStub(gateway_pb2_grpc.GatewayStub):
    channel: grpc.aio.Channel


@contextlib.asynccontextmanager
async def recording(
    auth: Authenticator, *, certs: Path | None = None
) -> AsyncIterator[tuple[RecordingServicer, RecordingStub]]:
    """A recording servicer behind the interceptors; with `certs`, over mTLS (the listener
    requires client certificates) and called with the client certificate of `certs`."""
    servicer = RecordingServicer()
    server = grpc.aio.server(
        interceptors=interceptors(auth, Metrics("tandem_gateway"), client_certs=bool(certs))
    )
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)
    if certs is None:
        port = server.add_insecure_port("127.0.0.1:0")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    else:

        def read(name: str) -> bytes:
            return (certs / name).read_bytes()

        creds = grpc.ssl_server_credentials(
            [(read("server.key"), read("server.pem"))],
            root_certificates=read("ca.pem"),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
        client = grpc.ssl_channel_credentials(read("ca.pem"), read("client.key"), read("client.pem"))
        channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", client)
    await server.start()
    async with channel:
        stub = RecordingStub(channel)
        stub.channel = channel
        yield servicer, stub
    await server.stop(None)


def with_key(served: Served, *more: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {served.key}"), *more)


def with_edge_key(served: Served, *more: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {served.edge_key}"), *more)


def with_key_for(method: str, served: Served) -> tuple[tuple[str, str], ...]:
    """The key a caller of `method` holds: an edge's for the fleet's methods, else a tenant's."""
    return with_edge_key(served) if method == "Heartbeat" else with_key(served)


def chat_request(**kwargs: Any) -> pb.ChatRequest:
    return pb.ChatRequest(model="qwen3", messages=[pb.Message(role=pb.ROLE_USER, content="hi")], **kwargs)


async def call_method(stub: gateway_pb2_grpc.GatewayStub, method: str, metadata: Any = ()) -> Any:
    """Calls one Gateway method to its end; returns its trailing metadata as a dict."""
    if method == "Chat":
        call: Any = stub.Chat(chat_request(), metadata=metadata)
        [m async for m in call]
    else:
        request = {
            "Classify": chat_request(),
            "ListModels": pb.ListModelsRequest(),
            "Heartbeat": pb.HeartbeatRequest(edge_id="box-1"),
        }[method]
        call = getattr(stub, method)(request, metadata=metadata)
        await call
    return dict(await call.trailing_metadata())


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


METHOD_NAMES = ["Chat", "Classify", "ListModels", "Heartbeat"]


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHOD_NAMES)
async def test_a_call_without_a_key_is_refused_before_the_servicer_runs(served: Served, method: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call_method(served.stub, method)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and refused.value.details() == MISSING
    assert served.servicer.seen == []


async def test_a_call_with_an_unknown_key_is_refused_before_the_servicer_runs(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call_method(served.stub, "ListModels", (("x-api-key", "tdm-" + "Q" * 43),))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and served.servicer.seen == []


async def test_the_servicer_gets_the_tenant_of_the_callers_key(served: Served) -> None:
    await call_method(served.stub, "ListModels", with_key(served))
    (seen,) = served.servicer.seen
    assert seen.tenant == "acme" and seen.log_context["tenant"] == "acme"


# --- edge credentials ---------------------------------------------------------------------------


async def test_a_tenant_key_may_not_send_heartbeats(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call_method(served.stub, "Heartbeat", with_key(served))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs an edge credential" in (refused.value.details() or "")
    assert served.servicer.seen == []


async def test_an_edge_key_sends_heartbeats_for_the_edge_it_names(served: Served) -> None:
    await call_method(served.stub, "Heartbeat", with_edge_key(served))
    (seen,) = served.servicer.seen
    assert seen.edge == EdgeCredential("edge key", frozenset({"box-1"})) and seen.tenant == "acme"


@pytest.mark.parametrize("method", ["Chat", "Classify", "ListModels"])
async def test_an_edge_key_forwards_user_work_as_its_tenant(served: Served, method: str) -> None:
    await call_method(served.stub, method, with_edge_key(served))
    (seen,) = served.servicer.seen
    assert seen.tenant == "acme"


@pytest.mark.parametrize("method", METHOD_NAMES)
async def test_with_authentication_off_every_method_is_open(method: str) -> None:
    async with recording(Authenticator(MemoryTenants(), required=False)) as (servicer, stub):
        await call_method(stub, method)
    (seen,) = servicer.seen
    assert seen.tenant is None and seen.edge is None


async def test_a_verified_client_certificate_is_an_edge_credential_naming_its_edge(certs: Path) -> None:
    async with recording(Authenticator(MemoryTenants(), required=True), certs=certs) as (servicer, stub):
        await call_method(stub, "Heartbeat")
    (seen,) = servicer.seen
    assert seen.edge == EdgeCredential("client certificate", frozenset({"client"})) and seen.tenant is None


async def test_a_client_certificate_with_a_tenant_key_may_send_heartbeats(certs: Path) -> None:
    tenants = MemoryTenants()
    key, _ = await tenants.create_key("acme")
    async with recording(Authenticator(tenants, required=True), certs=certs) as (servicer, stub):
        await call_method(stub, "Heartbeat", (("authorization", f"Bearer {key}"),))
    (seen,) = servicer.seen
    assert seen.edge is not None and seen.edge.via == "client certificate" and seen.tenant == "acme"


async def test_a_client_certificate_alone_does_not_make_a_tenant(certs: Path) -> None:
    async with recording(Authenticator(MemoryTenants(), required=True), certs=certs) as (servicer, stub):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call_method(stub, "Chat")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and servicer.seen == []


# --- requests that are no message ------------------------------------------------------------

NO_MESSAGE = b"\x0a\xff"  # field 1, length-delimited, its length cut off: decodes as nothing


async def call_raw(channel: grpc.aio.Channel, method: str, raw: bytes, metadata: Any = ()) -> grpc.aio.Call:
    """Calls `method` with `raw` as the request's bytes; returns the finished call."""
    path = f"/tandem.v1.Gateway/{method}"
    if method == "Chat":
        stream: Any = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
        call = stream(raw, metadata=metadata)
        with contextlib.suppress(grpc.aio.AioRpcError):
            [m async for m in call]
        return call
    unary: Any = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    call = unary(raw, metadata=metadata)
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call
    return call


REQUEST_TYPES = {"Chat": "ChatRequest", "Classify": "ChatRequest", "ListModels": "ListModelsRequest"}
REQUEST_TYPES["Heartbeat"] = "HeartbeatRequest"


@pytest.mark.parametrize("method", METHOD_NAMES)
async def test_bytes_that_are_no_message_are_invalid_argument_without_a_traceback(
    served: Served, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as lines:
        call = await call_raw(served.channel, method, NO_MESSAGE, with_key_for(method, served))
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await call.details() == f"request is not a valid tandem.v1.{REQUEST_TYPES[method]} message"
    assert served.servicer.seen == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    assert [line for line in lines if line["log_level"] in ("warning", "error", "critical")] == []


@pytest.mark.parametrize("method", METHOD_NAMES)
async def test_bytes_that_are_no_message_without_a_key_are_unauthenticated(
    served: Served, method: str
) -> None:
    call = await call_raw(served.channel, method, NO_MESSAGE)
    assert await call.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bytes_that_are_no_message_are_counted_as_invalid_argument(served: Served) -> None:
    await call_raw(served.channel, "Chat", NO_MESSAGE, with_key(served))
    calls = "tandem_gateway_grpc_calls_total"
    assert sample(served.metrics, calls, method="Chat", status="INVALID_ARGUMENT") == 1


async def test_with_authentication_off_bytes_that_are_no_message_are_invalid_argument() -> None:
    async with recording(Authenticator(MemoryTenants(), required=False)) as (servicer, stub):
        call = await call_raw(stub.channel, "Classify", NO_MESSAGE)
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT and servicer.seen == []


async def test_health_checks_need_no_key(served: Served) -> None:
    reply = await health_pb2_grpc.HealthStub(served.channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- request ids and log context --------------------------------------------------------------


async def test_the_callers_x_request_id_comes_back_in_the_trailing_metadata(served: Served) -> None:
    trailers = await call_method(served.stub, "Chat", with_key(served, ("x-request-id", "line-3.req-42")))
    assert trailers["x-request-id"] == "line-3.req-42"


async def test_the_callers_x_request_id_is_bound_to_the_calls_log_lines(served: Served) -> None:
    await call_method(served.stub, "Heartbeat", with_edge_key(served, ("x-request-id", "line-3.req-42")))
    (seen,) = served.servicer.seen
    assert seen.request_id == "line-3.req-42" and seen.log_context["request_id"] == "line-3.req-42"


async def test_a_call_without_a_request_id_gets_a_new_one_of_its_own(served: Served) -> None:
    first = await call_method(served.stub, "Classify", with_key(served))
    second = await call_method(served.stub, "Classify", with_key(served))
    assert first["x-request-id"] and second["x-request-id"] != first["x-request-id"]
    assert [s.request_id for s in served.servicer.seen] == [first["x-request-id"], second["x-request-id"]]


async def test_a_chat_requests_own_request_id_wins_over_the_metadata(served: Served) -> None:
    call = served.stub.Chat(
        chat_request(request_id="edge-7f3a"), metadata=with_key(served, ("x-request-id", "other"))
    )
    [m async for m in call]
    assert dict(await call.trailing_metadata())["x-request-id"] == "edge-7f3a"


async def test_a_malformed_x_request_id_is_replaced_by_a_new_one(served: Served) -> None:
    trailers = await call_method(served.stub, "ListModels", with_key(served, ("x-request-id", "a b; c")))
    assert (
        trailers["x-request-id"] != "a b; c"
        and served.servicer.seen[0].request_id == trailers["x-request-id"]
    )


async def test_a_refused_call_still_carries_its_request_id(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call_method(served.stub, "Chat", (("x-request-id", "req-9"),))
    assert dict(refused.value.trailing_metadata() or ())["x-request-id"] == "req-9"


async def test_concurrent_calls_each_see_their_own_request_id(served: Served) -> None:
    ids = [f"req-{i}" for i in range(8)]
    await asyncio.gather(
        *(call_method(served.stub, "Chat", with_key(served, ("x-request-id", i))) for i in ids)
    )
    assert sorted(s.request_id for s in served.servicer.seen) == ids
    assert all(s.log_context["request_id"] == s.request_id for s in served.servicer.seen)


# --- status -----------------------------------------------------------------------------------


async def test_a_tandem_error_from_the_servicer_becomes_its_status_with_error_trailers(
    served: Served,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.stub.Heartbeat(pb.HeartbeatRequest(), metadata=with_edge_key(served))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "edge_id is required"
    assert dict(refused.value.trailing_metadata() or ())["x-tandem-error"] == "invalid_request_error"


# --- metrics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHOD_NAMES)
async def test_each_call_is_counted_by_method_and_status(served: Served, method: str) -> None:
    await call_method(served.stub, method, with_key_for(method, served))
    with pytest.raises(grpc.aio.AioRpcError):
        await call_method(served.stub, method)
    calls = "tandem_gateway_grpc_calls_total"
    assert sample(served.metrics, calls, method=method, status="OK") == 1
    assert sample(served.metrics, calls, method=method, status="UNAUTHENTICATED") == 1


async def test_a_refused_chat_is_counted_as_a_grpc_request_without_a_route(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await call_method(served.stub, "Chat")
    labels = {"face": "grpc", "target": "", "mode": "", "reason": "", "status": "UNAUTHENTICATED"}
    assert sample(served.metrics, "tandem_gateway_requests_total", **labels) == 1


async def test_a_stream_its_caller_cancels_is_counted_as_cancelled(served: Served) -> None:
    call = served.stub.Chat(pb.ChatRequest(model=HOLD), metadata=with_key(served))
    await call.read()
    await served.servicer.held.wait()
    call.cancel()
    calls = "tandem_gateway_grpc_calls_total"
    for _ in range(100):
        if sample(served.metrics, calls, method="Chat", status="CANCELLED"):
            break
        await asyncio.sleep(0.02)
    assert sample(served.metrics, calls, method="Chat", status="CANCELLED") == 1


# --- wrapping ---------------------------------------------------------------------------------


async def test_a_methods_handler_is_wrapped_once_and_reused() -> None:
    async def behaviour(request: Any, context: Any) -> Any:
        return request

    handler = grpc.unary_unary_rpc_method_handler(behaviour)

    @dataclass
    class Details:  # what grpc passes as `grpc.HandlerCallDetails`
        method: str
        invocation_metadata: tuple[tuple[str, str], ...] = ()

    async def continuation(_: Any) -> grpc.RpcMethodHandler:
        return handler

    interceptor = RequestIdInterceptor()
    first = await interceptor.intercept_service(continuation, Details("/tandem.v1.Gateway/ListModels"))
    second = await interceptor.intercept_service(continuation, Details("/tandem.v1.Gateway/ListModels"))
    assert first is second and first is not handler


# --- the whole gateway ------------------------------------------------------------------------


async def test_the_gateways_chat_is_counted_with_its_route_and_duration(
    stub: gateway_pb2_grpc.GatewayStub, gateway: GatewayServer
) -> None:
    request = pb.ChatRequest(
        model="qwen3", messages=[pb.Message(role=pb.ROLE_USER, content="hi")], mode=pb.MODE_THINKING
    )
    [m async for m in stub.Chat(request)]
    metrics = gateway.service.metrics
    labels = {"face": "grpc", "target": "cloud", "mode": "thinking", "reason": "explicit", "status": "OK"}
    assert sample(metrics, "tandem_gateway_requests_total", **labels) == 1
    duration = {"face": "grpc", "target": "cloud", "mode": "thinking"}
    assert sample(metrics, "tandem_gateway_request_seconds_count", **duration) == 1


async def test_the_gateways_answers_carry_both_request_id_and_route(
    stub: gateway_pb2_grpc.GatewayStub,
) -> None:
    request = pb.ChatRequest(model="qwen3", messages=[pb.Message(role=pb.ROLE_USER, content="hi /no_think")])
    call = stub.Classify(request, metadata=(("x-request-id", "req-5"),))
    await call
    trailers = dict(await call.trailing_metadata())
    assert trailers["x-request-id"] == "req-5"
    assert trailers["x-tandem-route"] == "target=cloud; mode=non_thinking; reason=soft_switch"
