"""Fuzz: the gateway's gRPC face answers any `ChatRequest` a client can encode, and bytes that
are no message at all, with a status the caller can act on (never UNKNOWN or INTERNAL), never
hangs, and keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from gateway.server import GatewayServer
from tandem.v1 import gateway_pb2 as pb
from tests.fuzz import ANSWER_WITHIN_S, FUZZ_SETTINGS, protobuf_messages

# What a bad request may get; UNKNOWN, INTERNAL, UNAVAILABLE or a deadline are the server's fault.
CALLERS_FAULT = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}


@pytest.fixture
async def channel(gateway: GatewayServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as ch:
        yield ch


async def _status(call: Any) -> grpc.StatusCode:
    try:
        async with asyncio.timeout(ANSWER_WITHIN_S):
            if hasattr(call, "__aiter__"):
                async for _ in call:
                    pass
            else:
                await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _still_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=ANSWER_WITHIN_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@FUZZ_SETTINGS
@given(fields=protobuf_messages(pb.ChatRequest.DESCRIPTOR))
async def test_any_chat_request_gets_a_callers_status(
    channel: grpc.aio.Channel, fields: dict[str, Any]
) -> None:
    request = pb.ChatRequest(**fields)
    raw = request.SerializeToString()
    chat = channel.unary_stream(
        "/tandem.v1.Gateway/Chat", request_serializer=None, response_deserializer=None
    )
    classify = channel.unary_unary(
        "/tandem.v1.Gateway/Classify", request_serializer=None, response_deserializer=None
    )
    for call in (chat(raw), classify(raw)):
        code = await _status(call)
        assert code in CALLERS_FAULT, (code, request)
    await _still_serving(channel)


@FUZZ_SETTINGS
@given(raw=st.binary(max_size=300))
async def test_bytes_that_are_no_message_get_a_callers_status(channel: grpc.aio.Channel, raw: bytes) -> None:
    for method in ("Chat", "Classify", "ListModels", "Heartbeat"):
        path = f"/tandem.v1.Gateway/{method}"
        call: Any = (
            channel.unary_stream(path, request_serializer=None, response_deserializer=None)(raw)
            if method == "Chat"
            else channel.unary_unary(path, request_serializer=None, response_deserializer=None)(raw)
        )
        code = await _status(call)
        assert code in CALLERS_FAULT, (method, code, raw)
    await _still_serving(channel)
