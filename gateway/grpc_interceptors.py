"""What every call to `tandem.v1.Gateway` goes through around its servicer method.

Four `grpc.aio.ServerInterceptor`s, outermost first (`interceptors()` returns them in order):

- `RequestIdInterceptor`: the call's request id (the request's own `request_id` field, else the
  caller's `x-request-id` metadata, else a new id), bound to every log line of the call, and the
  call's `GatewayCall`, which the servicer and the inner interceptors read with `current_call()`;
- `StatusInterceptor`: what the caller gets back besides messages: trailing metadata
  (`x-request-id`, and `x-tandem-route` once the servicer has recorded its route decision) and,
  for a `TandemError` raised inside, its gRPC status, message and error trailers;
- `MetricsInterceptor`: every call counted by method and status; `Chat` also as a request of the
  gRPC face with its route, and its duration;
- `AuthInterceptor`: the caller's tenant from `authorization: Bearer <key>` or `x-api-key`,
  resolved before the servicer runs; a missing or bad key never reaches it. Fleet methods
  (`Heartbeat`) need an edge credential: an edge key, or the client certificate the listener
  verified when it requires them (`grpc.tls.client_ca_file`); a tenant key gets
  PERMISSION_DENIED. Then the request itself: bytes that are no message get INVALID_ARGUMENT.

A request is decoded by grpc before any wrapped behaviour runs, and a decoding error there
would be answered UNKNOWN with an ERROR traceback, before the key is looked at. So
`AuthInterceptor` also wraps the method's deserializer: bytes that do not decode become an
`Undecodable` value, which its behaviour refuses once the caller is authenticated.

Servicer methods raise `TandemError`s and read the caller from `current_call()`. Only the
Gateway service is intercepted: health checks and reflection need no key. Each interceptor wraps
a method's handler on its first call and reuses that wrapper, so a call costs one dict lookup
per interceptor, and a streamed message one generator step per interceptor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import NoReturn, TypeAlias

import grpc
from google.protobuf.message import DecodeError, Message
from prometheus_client import Counter
from structlog.contextvars import bind_contextvars

from gateway.auth import Authenticator, credential
from gateway.state import Tenant
from tandem.chat import RouteDecision
from tandem.errors import BadRequest, PermissionDenied, TandemError
from tandem.logs import bind_request, callers_request_id, get_logger, new_request_id
from tandem.metrics import Metrics
from tandem.v1 import gateway_pb2 as pb
from tandem.wire import protobuf as wire

log = get_logger("tandem.gateway.grpc")

UnaryBehaviour: TypeAlias = Callable[[Message, "Context"], Awaitable[Message]]
StreamBehaviour: TypeAlias = Callable[[Message, "Context"], AsyncGenerator[Message, None]]
Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
Context: TypeAlias = grpc.aio.ServicerContext
Deserializer: TypeAlias = Callable[[bytes], object]  # a message, or `Undecodable`

# The fleet's methods: only an edge may call them.
EDGE_METHODS = frozenset({"Heartbeat"})


@dataclass(frozen=True, slots=True)
class Method:
    """One `tandem.v1.Gateway` method, as the interceptors need to know it."""

    name: str  # "Chat"
    streams: bool  # server streaming
    has_request_id: bool  # its request message carries a `request_id` field
    request_type: str  # "tandem.v1.ChatRequest"
    edge_only: bool  # a fleet method: the caller needs an edge credential


def _gateway_methods() -> Mapping[str, Method]:
    service = pb.DESCRIPTOR.services_by_name["Gateway"]
    methods = {}
    for m in service.methods:
        if m.client_streaming:  # every wrapper below takes one request message
            raise TypeError(f"{m.full_name}: client streaming is not intercepted")
        methods[f"/{service.full_name}/{m.name}"] = Method(
            name=m.name,
            streams=m.server_streaming,
            has_request_id="request_id" in m.input_type.fields_by_name,
            request_type=m.input_type.full_name,
            edge_only=m.name in EDGE_METHODS,
        )
    return MappingProxyType(methods)


METHODS = _gateway_methods()  # by the full method name gRPC routes on: "/tandem.v1.Gateway/Chat"


@dataclass(frozen=True, slots=True)
class EdgeCredential:
    """What lets a caller speak for an edge: an edge key, or a client certificate the listener
    verified; `names` are the edge ids it may report (empty: an edge key bound to no edge)."""

    via: str  # "edge key" or "client certificate"
    names: frozenset[str] = frozenset()

    def allows(self, edge_id: str) -> bool:
        return not self.names or edge_id in self.names


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What a request whose bytes are no `request_type` message is deserialized to."""

    request_type: str


@dataclass(slots=True)
class GatewayCall:
    """One call to the Gateway service, as the interceptors and its servicer method share it."""

    request_id: str
    tenant: Tenant | None = None  # set by `AuthInterceptor`; None with authentication off
    # Set by `AuthInterceptor` when the caller holds an edge credential; None with authentication off.
    edge: EdgeCredential | None = None
    decision: RouteDecision | None = None  # set by the servicer once the route is decided


# Each call runs in its own task, so a value set here is seen by that call alone; it is never
# reset, because a stream abandoned by its caller is closed later from another task's context.
_current_call: ContextVar[GatewayCall] = ContextVar("tandem_gateway_call")


def current_call() -> GatewayCall:
    """The call being served by this task; `LookupError` outside an intercepted Gateway call."""
    return _current_call.get()


def interceptors(
    auth: Authenticator, metrics: Metrics, *, client_certs: bool = False
) -> list[grpc.aio.ServerInterceptor]:
    """The gateway's interceptors, outermost first (the order `grpc.aio.server` takes).
    `client_certs`: the listener requires and verifies client certificates (mTLS), so a
    caller's certificate is an edge credential."""
    return [
        RequestIdInterceptor(),
        StatusInterceptor(),
        MetricsInterceptor(metrics),
        AuthInterceptor(auth, client_certs=client_certs),
    ]


class _GatewayInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each Gateway method's handler with `_unary` or `_stream`, once per method."""

    def __init__(self) -> None:
        # full method name -> (the handler found inside, its wrapper)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """The handler for this call: the Gateway method's, wrapped; any other as it is."""
        handler = await continuation(handler_call_details)
        name = handler_call_details.method
        known = self._wrapped.get(name)
        if known is not None and known[0] is handler:
            return known[1]
        method = METHODS.get(name)
        if handler is None or method is None:
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[name] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: Method, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        codec = {
            "request_deserializer": self._deserializer(method, handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if method.streams:
            return grpc.unary_stream_rpc_method_handler(self._stream(method, handler.unary_stream), **codec)
        return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary), **codec)

    def _deserializer(self, method: Method, deserialize: Deserializer | None) -> Deserializer | None:
        return deserialize  # the inner handler's, as it is

    def _unary(self, method: Method, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        raise NotImplementedError

    def _stream(self, method: Method, behaviour: StreamBehaviour) -> StreamBehaviour:
        raise NotImplementedError


class RequestIdInterceptor(_GatewayInterceptor):
    """Gives each call its request id, log context and `GatewayCall`."""

    def _unary(self, method: Method, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def unary(request: Message, context: Context) -> Message:
            _open_call(method, request, context)
            return await behaviour(request, context)

        return unary

    def _stream(self, method: Method, behaviour: StreamBehaviour) -> StreamBehaviour:
        async def stream(request: Message, context: Context) -> AsyncGenerator[Message, None]:
            _open_call(method, request, context)
            async with aclosing(behaviour(request, context)) as messages:
                async for message in messages:
                    yield message

        return stream


def _open_call(method: Method, request: Message, context: Context) -> None:
    request_id = _request_id(method, request, context)
    bind_request(request_id)
    _current_call.set(GatewayCall(request_id))


def _request_id(method: Method, request: Message, context: Context) -> str:
    """The request's own id (what the edge agent sends), else the caller's `x-request-id`, else
    a new one; an id that is not short printable ASCII is ignored."""
    if method.has_request_id and not isinstance(request, Undecodable):
        own = callers_request_id(request.request_id)
        if own:
            return own
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return callers_request_id(value) or new_request_id()
    return new_request_id()


class StatusInterceptor(_GatewayInterceptor):
    """Ends each call with its trailing metadata, and a `TandemError` with its gRPC status."""

    def _unary(self, method: Method, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def unary(request: Message, context: Context) -> Message:
            call = current_call()
            try:
                response = await behaviour(request, context)
            except TandemError as err:
                await _refuse(context, call, err)
            context.set_trailing_metadata(_trailers(call))
            return response

        return unary

    def _stream(self, method: Method, behaviour: StreamBehaviour) -> StreamBehaviour:
        async def stream(request: Message, context: Context) -> AsyncGenerator[Message, None]:
            call = current_call()
            try:
                async with aclosing(behaviour(request, context)) as messages:
                    async for message in messages:
                        yield message
            except TandemError as err:
                await _refuse(context, call, err)
            context.set_trailing_metadata(_trailers(call))

        return stream


def _trailers(call: GatewayCall) -> tuple[tuple[str, str], ...]:
    if call.decision is None:
        return (("x-request-id", call.request_id),)
    return (("x-request-id", call.request_id), ("x-tandem-route", call.decision.header()))


async def _refuse(context: Context, call: GatewayCall, err: TandemError) -> NoReturn:
    code = wire.error_code(err)
    if call.decision is None:  # refused before any work; a failure after is the service's to log
        log.info("request_refused", code=code.name, error=err.message)
    context.set_trailing_metadata(_trailers(call) + wire.error_trailers(err))
    await context.abort(code, err.message)
    raise AssertionError("context.abort raises")


class MetricsInterceptor(_GatewayInterceptor):
    """Counts every call by method and status; `Chat` also in the gateway's request metrics.

    Registers `tandem_gateway_grpc_calls` in `metrics.registry`: one interceptor per `Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics
        self.calls = Counter(
            "tandem_gateway_grpc_calls",
            "Calls to tandem.v1.Gateway, by method and gRPC status",
            ["method", "status"],
            registry=metrics.registry,
        )

    def _unary(self, method: Method, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        record = self._recorder(method)

        async def unary(request: Message, context: Context) -> Message:
            call = current_call()
            started = time.perf_counter()
            status = "OK"
            try:
                return await behaviour(request, context)
            except BaseException as exc:
                status = _status(exc, context)
                raise
            finally:
                record(call, status, started)

        return unary

    def _stream(self, method: Method, behaviour: StreamBehaviour) -> StreamBehaviour:
        record = self._recorder(method)

        async def stream(request: Message, context: Context) -> AsyncGenerator[Message, None]:
            # Kept in locals: a stream its caller abandoned is closed from another task.
            call = current_call()
            started = time.perf_counter()
            status = "OK"
            try:
                async with aclosing(behaviour(request, context)) as messages:
                    async for message in messages:
                        yield message
            except BaseException as exc:
                status = _status(exc, context)
                raise
            finally:
                record(call, status, started)

        return stream

    def _recorder(self, method: Method) -> Callable[[GatewayCall, str, float], None]:
        calls = self.calls
        if method.name != "Chat":

            def record_call(call: GatewayCall, status: str, started: float) -> None:
                calls.labels(method.name, status).inc()

            return record_call
        metrics = self.metrics

        def record_chat(call: GatewayCall, status: str, started: float) -> None:
            calls.labels("Chat", status).inc()
            # Like the HTTP face: the time of answers that ran, not of quick refusals.
            tenant = call.tenant.name if call.tenant else None
            metrics.answered("grpc", call.decision, status, started if call.decision else None, tenant)

        return record_chat


def _status(exc: BaseException, context: Context) -> str:
    """The gRPC status name a call that raised `exc` ends with."""
    if isinstance(exc, TandemError):
        return str(wire.error_code(exc).name)
    if isinstance(exc, grpc.aio.AbortError):  # the servicer aborted the call itself
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    return "UNKNOWN"  # what grpc answers for an exception it does not know


class AuthInterceptor(_GatewayInterceptor):
    """Resolves the caller's tenant (and edge credential) once per call, before the servicer
    runs; then refuses a request that did not decode. With authentication off, only the latter."""

    def __init__(self, auth: Authenticator, *, client_certs: bool = False) -> None:
        super().__init__()
        self.auth = auth
        self.client_certs = client_certs

    def _deserializer(self, method: Method, deserialize: Deserializer | None) -> Deserializer | None:
        if deserialize is None:
            return None
        undecodable = Undecodable(method.request_type)

        def tolerant(raw: bytes) -> object:
            try:
                return deserialize(raw)
            except DecodeError:
                return undecodable  # refused once the caller is authenticated

        return tolerant

    def _unary(self, method: Method, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def unary(request: Message, context: Context) -> Message:
            await self._admit(method, request, context)
            return await behaviour(request, context)

        return unary

    def _stream(self, method: Method, behaviour: StreamBehaviour) -> StreamBehaviour:
        async def stream(request: Message, context: Context) -> AsyncGenerator[Message, None]:
            await self._admit(method, request, context)
            async with aclosing(behaviour(request, context)) as messages:
                async for message in messages:
                    yield message

        return stream

    async def _admit(self, method: Method, request: Message | Undecodable, context: Context) -> None:
        if self.auth.required:
            await self._authenticate(method, context)
        if isinstance(request, Undecodable):
            raise BadRequest(f"request is not a valid {request.request_type} message")

    async def _authenticate(self, method: Method, context: Context) -> None:
        """Sets the call's tenant and edge credential; raises `Unauthenticated` (or
        `UpstreamUnavailable` when the key cannot be checked now), and `PermissionDenied` when
        a fleet method is called without an edge credential."""
        authorization = api_key = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value
            elif key == "x-api-key":
                api_key = value
        key = credential(_text(authorization), _text(api_key))
        call = current_call()
        certificate = _certificate(context) if self.client_certs else None
        if method.edge_only and certificate is not None and key is None:
            call.edge = certificate  # the verified certificate alone speaks for the edge
            return
        principal = await self.auth.identify(key)
        if principal is None:  # authentication is off after all
            return
        bind_contextvars(tenant=principal.tenant.name)
        call.tenant = principal.tenant
        if principal.is_edge:
            call.edge = EdgeCredential("edge key", frozenset({principal.edge} if principal.edge else ()))
        else:
            call.edge = certificate
        if method.edge_only and call.edge is None:
            raise PermissionDenied(
                f"{method.name} needs an edge credential: an edge key (`tandem gateway keys create "
                "--edge NAME`) or the edge's client certificate; this is a tenant key"
            )


def _certificate(context: Context) -> EdgeCredential | None:
    """The edge the caller's client certificate names (its CN and SANs), when it sent one; the
    listener has verified it against `grpc.tls.client_ca_file`."""
    found = context.auth_context()
    names = frozenset(
        value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        for field in ("x509_common_name", "x509_subject_alternative_name")
        for value in found.get(field, ())
    )
    return EdgeCredential("client certificate", names) if names else None


def _text(value: str | bytes | None) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
