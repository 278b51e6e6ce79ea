"""The uplink: the edge agent's gRPC channel to the gateway.

One `grpc.aio` channel (TLS, or mTLS with a client certificate, when configured), the edge's
API key on every call, a deadline on every call, HTTP/2 keepalive pings, and reconnects that
back off for at most `max_reconnect_backoff_seconds`, so a returning WAN is used again soon.

`chat` forwards a request and returns once the first chunk has arrived, so a failure before
any answer can still be handled by the edge's policy; later chunks pass through as they come,
reasoning and answer apart. A failure is told apart by where it happened: the gateway's own
error answers (they carry `x-tandem-error`) become Tandem errors for the caller; anything else
(refused, reset, deadline, cut) is `UplinkDown` and counts against the circuit breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_agent.breaker import CircuitBreaker
from edge_agent.config import Uplink as UplinkConfig
from tandem.chat import ChatRequest, Chunk, RouteDecision
from tandem.errors import ModelNotFound, TandemError, UpstreamFailed
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc as pb_grpc
from tandem.wire import protobuf as wire

SERVICE_NAME = "tandem.v1.Gateway"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Status codes only an answering server produces; a broken link never does.
_ANSWERS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class UplinkDown(Exception):
    """The gateway could not be reached, or stopped answering, before the answer began."""


@dataclass(slots=True, eq=False)  # hashed by identity: kept in a set of calls in flight
class _Call:
    call: grpc.aio.UnaryStreamCall
    last_seen: float  # loop time of the call's start or its latest message
    cut: str = ""  # why the edge cut it (the breaker opened), when it did


@dataclass(slots=True)
class UplinkStream:
    """A forwarded request whose first chunk has arrived."""

    first: Chunk
    _call: _Call
    _uplink: Uplink
    route: RouteDecision | None = None  # the gateway's own decision, once the last chunk came
    _closed: bool = field(default=False)

    async def rest(self) -> AsyncGenerator[list[Chunk], None]:
        """The chunks after the first. Raises `UpstreamFailed` if the stream breaks off."""
        try:
            while True:
                try:
                    message = await self._uplink._read(self._call)
                except (UplinkDown, TandemError) as exc:
                    if isinstance(exc, UplinkDown) and not self._call.cut:
                        self._uplink.breaker.request_failed(str(exc))
                    raise UpstreamFailed(f"the gateway stream broke off: {_text(exc)}") from None
                if message is None:
                    return
                chunk = wire.chunk_from_pb(message)
                if message.HasField("route"):  # the gateway's last message
                    self.route = wire.decision_from_pb(message.route)
                    chunk.final = True
                yield [chunk]
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._call.call.cancel()
            self._uplink._active.discard(self._call)


def _text(exc: BaseException) -> str:
    return exc.message if isinstance(exc, TandemError) else str(exc)


class Uplink:
    """The channel to the gateway, owned by the edge application object."""

    def __init__(self, config: UplinkConfig, breaker: CircuitBreaker, *, edge_id: str) -> None:
        self.config = config
        self.breaker = breaker
        self._edge_id = edge_id
        self._channel: grpc.aio.Channel | None = None
        self._active: set[_Call] = set()
        metadata = [("x-tandem-edge-id", edge_id)]
        key = config.api_key()
        if key:
            metadata.append(("authorization", f"Bearer {key}"))
        self._metadata = tuple(metadata)

    async def start(self) -> None:
        cfg = self.config
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", int(cfg.keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_seconds * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # (Not min_reconnect_backoff_ms: gRPC also takes it as the connect timeout.)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(cfg.max_reconnect_backoff_seconds * 1000)),
            # Failures are the edge's to handle (policy, breaker); no hidden retries.
            ("grpc.enable_retries", 0),
        ]
        if cfg.tls is None:
            self._channel = grpc.aio.insecure_channel(cfg.address, options=options)
        else:
            tls = cfg.tls
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls.ca_file.read_bytes() if tls.ca_file else None,
                private_key=tls.key_file.read_bytes() if tls.key_file else None,
                certificate_chain=tls.cert_file.read_bytes() if tls.cert_file else None,
            )
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.aio.secure_channel(cfg.address, creds, options=options)
        self._stub = pb_grpc.GatewayStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def close(self) -> None:
        self.cut("the edge agent is stopping")
        if self._channel is not None:
            await self._channel.close(grace=None)

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def cut(self, reason: str, *, silent_for: float = 0.0) -> int:
        """Ends the forwarded calls that have received nothing for `silent_for` seconds (all of
        them with 0): on a dead link they would only hang. Returns how many it ended."""
        now = asyncio.get_running_loop().time()
        ended = 0
        for c in list(self._active):
            if now - c.last_seen >= silent_for:
                c.cut = reason
                c.call.cancel()
                ended += 1
        return ended

    # --- calls ---------------------------------------------------------------------------------

    async def probe(self, deadline_s: float) -> None:
        """The gateway's health Check with a short deadline; raises unless it answers SERVING."""
        assert self._channel is not None, "Uplink.start() was not awaited"
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                timeout=deadline_s,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise UplinkDown(f"{exc.code().name}: {exc.details()}") from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            raise UplinkDown(f"the gateway reports {status}")

    async def chat(
        self, req: ChatRequest, *, extra_wait_s: float = 0.0, metadata: Mapping[str, str] | None = None
    ) -> UplinkStream:
        """Forwards `req` and waits for its first chunk (`first_chunk_timeout_seconds`, plus
        `extra_wait_s` when the gateway is expected to hold it: a cold pool starting).

        Raises `UplinkDown` for a link failure (counted by the breaker) and the gateway's own
        errors as Tandem errors (`ModelNotFound`, `BadRequest`, `UpstreamUnavailable`, ...).
        """
        assert self._channel is not None, "Uplink.start() was not awaited"
        call = _Call(
            call=self._stub.Chat(
                wire.request_to_pb(req),
                timeout=self.config.timeout_seconds,
                metadata=self._metadata + tuple((metadata or {}).items()),  # a trace's traceparent
            ),
            last_seen=asyncio.get_running_loop().time(),
        )
        self._active.add(call)
        first_chunk_s = self.config.first_chunk_timeout_seconds + extra_wait_s
        try:
            try:
                async with asyncio.timeout(first_chunk_s):
                    first = await self._read(call)
            except TimeoutError:
                raise UplinkDown(f"no answer from the gateway within {first_chunk_s:g}s") from None
            except ModelNotFound:
                raise ModelNotFound(req.model) from None
            if first is None:
                raise UplinkDown("the gateway ended the stream without an answer")
        except BaseException as exc:
            call.call.cancel()
            self._active.discard(call)
            if isinstance(exc, UplinkDown):
                self.breaker.request_failed(str(exc))
            raise
        self.breaker.succeeded()
        stream = UplinkStream(first=wire.chunk_from_pb(first), _call=call, _uplink=self)
        if first.HasField("route"):  # the whole answer came in one message
            stream.route = wire.decision_from_pb(first.route)
            stream.first.final = True
        return stream

    async def _read(self, c: _Call) -> pb.ChatChunk | None:
        """The next message, None at the end; errors as `UplinkDown` or Tandem errors."""
        try:
            message = await c.call.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if c.cut and (task is None or not task.cancelling()):
                raise UplinkDown(c.cut) from None
            raise
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        if message is grpc.aio.EOF:
            return None
        assert isinstance(message, pb.ChatChunk)
        c.last_seen = asyncio.get_running_loop().time()
        return message

    async def list_models(self, deadline_s: float) -> list[pb.ModelInfo]:
        """The models the gateway offers this edge."""
        assert self._channel is not None
        try:
            reply = await self._stub.ListModels(
                pb.ListModelsRequest(), timeout=deadline_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return list(reply.models)

    async def heartbeat(self, request: pb.HeartbeatRequest, deadline_s: float) -> pb.HeartbeatResponse:
        assert self._channel is not None
        try:
            reply: pb.HeartbeatResponse = await self._stub.Heartbeat(
                request, timeout=deadline_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return reply


def _error(exc: grpc.aio.AioRpcError) -> Exception:
    """The gateway's answer as a Tandem error, or a link failure as `UplinkDown`."""
    code = exc.code()
    details = exc.details() or code.name
    trailers = dict((k, v) for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str))
    if "x-tandem-error" not in trailers and code not in _ANSWERS:
        return UplinkDown(f"{code.name}: {details}")
    retry_after = None
    with contextlib.suppress(ValueError):
        retry_after = float(trailers.get("retry-after", ""))
    return wire.error_from_status(code, details, retry_after)
