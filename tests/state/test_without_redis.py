"""A single gateway without Redis: everything on local state, keys from its configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import pytest

from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from gateway.state.tenants import key_digest, new_key
from simulators.vllm import VllmSimulator
from tandem.errors import ConfigError
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc
from tests.state.conftest import gateway_config

FAST = [{"role": "user", "content": "Say hello. /no_think"}]
KEY = new_key()


@pytest.fixture
async def start(engines: list[VllmSimulator]) -> AsyncIterator[Callable[..., Awaitable[GatewayServer]]]:
    started: list[GatewayServer] = []

    async def go(**overrides: Any) -> GatewayServer:
        server = GatewayServer(gateway_config([e.url for e in engines], **overrides))
        await server.start()
        started.append(server)
        return server

    yield go
    for server in started:
        await server.stop()


async def post(gateway: GatewayServer, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions",
            json={"model": "qwen3", "messages": FAST},
            headers=headers,
        ) as resp,
    ):
        return resp.status


async def test_an_embedded_gateway_needs_no_key_and_no_redis(
    start: Callable[..., Awaitable[GatewayServer]],
) -> None:
    gateway = await start()
    assert not gateway.config.auth_required and gateway.service.state.redis is None
    assert await post(gateway, None) == 200


async def test_keys_from_the_configuration_with_their_tenants_limits(
    start: Callable[..., Awaitable[GatewayServer]],
) -> None:
    tenants = [{"name": "acme", "rpm": 2, "key_sha256": [key_digest(KEY)]}]
    gateway = await start(auth={"required": True, "tenants": tenants})
    assert await post(gateway, None) == 401
    assert await post(gateway, new_key()) == 401
    assert [await post(gateway, KEY) for _ in range(3)] == [200, 200, 429]


async def test_heartbeats_are_kept_in_the_process(start: Callable[..., Awaitable[GatewayServer]]) -> None:
    gateway = await start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        await stub.Heartbeat(pb.HeartbeatRequest(edge_id="e1", group="g"))
    assert [e.edge_id for e in await gateway.fleet.edges()] == ["e1"]


def test_keys_cannot_be_required_when_none_can_exist() -> None:
    with pytest.raises(ValueError, match=r"auth.required is on, but no key can exist"):
        GatewayConfig.model_validate({"auth": {"required": True}})


def test_gateway_serve_requires_keys_unless_told_otherwise() -> None:
    with_redis = GatewayConfig.model_validate({"redis": {"url": "redis://127.0.0.1:6379"}})
    assert with_redis.with_auth_required_by_default().auth_required
    told = GatewayConfig.model_validate({"auth": {"required": False}})
    assert not told.with_auth_required_by_default().auth_required
    with pytest.raises(ConfigError, match="on by default"):
        GatewayConfig().with_auth_required_by_default()


def test_configured_keys_are_digests_only() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        GatewayConfig.model_validate({"auth": {"tenants": [{"name": "acme", "key_sha256": [KEY]}]}})
