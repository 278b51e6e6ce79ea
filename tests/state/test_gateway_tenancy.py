"""A gateway that requires API keys: who may call, which models each tenant sees and uses, and
its limits, on both faces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest

from gateway.server import GatewayServer
from gateway.state import Tenant
from gateway.state.tenants import RedisTenants
from simulators.vllm import VllmSimulator
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc
from tests.state.conftest import StartGateway

FAST = [{"role": "user", "content": "Say hello. /no_think"}]


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> GatewayServer:
    return await start_gateway()


@pytest.fixture
async def http(gateway: GatewayServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as session:
        yield session


@pytest.fixture
async def stub(gateway: GatewayServer) -> AsyncIterator[gateway_pb2_grpc.GatewayStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)


async def new_key(tenants: RedisTenants, tenant: Tenant) -> str:
    await tenants.set_tenant(tenant)
    key, _ = await tenants.create_key(tenant.name)
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def chat(
    http: aiohttp.ClientSession, key: str | None, model: str = "qwen3", **body: Any
) -> aiohttp.ClientResponse:
    headers = bearer(key) if key else {}
    async with http.post(
        "/v1/chat/completions", json={"model": model, "messages": FAST, **body}, headers=headers
    ) as resp:
        await resp.read()
        return resp


async def grpc_chat(
    stub: gateway_pb2_grpc.GatewayStub, metadata: tuple[tuple[str, str], ...], model: str = "qwen3"
) -> list[pb.ChatChunk]:
    request = pb.ChatRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER, content="hi /no_think")])
    return [chunk async for chunk in stub.Chat(request, metadata=metadata)]


async def test_a_request_without_a_key_is_401_saying_how_to_send_one(http: aiohttp.ClientSession) -> None:
    resp = await chat(http, None)
    body = await resp.json()
    assert resp.status == 401 and "Authorization: Bearer" in body["error"]["message"]
    assert body["error"]["type"] == "authentication_error"


async def test_a_bad_key_is_401_and_not_echoed(http: aiohttp.ClientSession) -> None:
    bad = "tdm-" + "Z" * 43
    resp = await chat(http, bad)
    assert resp.status == 401 and bad not in await resp.text()


async def test_a_valid_key_gets_its_answer(http: aiohttp.ClientSession, tenants: RedisTenants) -> None:
    key = await new_key(tenants, Tenant("acme"))
    resp = await chat(http, key)
    assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"]


async def test_a_key_for_another_tenants_model_is_403(
    http: aiohttp.ClientSession, tenants: RedisTenants, gateway: GatewayServer
) -> None:
    key = await new_key(tenants, Tenant("acme", frozenset({"qwen3-32b"})))
    resp = await chat(http, key, model="qwen3")
    body = await resp.json()
    assert resp.status == 403 and "qwen3" in body["error"]["message"]


async def test_a_tenant_lists_only_its_models(
    http: aiohttp.ClientSession, tenants: RedisTenants, stub: gateway_pb2_grpc.GatewayStub
) -> None:
    allowed = await new_key(tenants, Tenant("acme", frozenset({"qwen3-14b"})))  # an alias
    other = await new_key(tenants, Tenant("beta", frozenset({"elsewhere"})))
    async with http.get("/v1/models", headers=bearer(allowed)) as resp:
        assert {m["id"] for m in (await resp.json())["data"]} == {"qwen3", "qwen3-14b"}
    async with http.get("/v1/models", headers=bearer(other)) as resp:
        assert (await resp.json())["data"] == []
    async with http.get("/v1/models") as resp:
        assert resp.status == 401
    listed = await stub.ListModels(pb.ListModelsRequest(), metadata=(("x-api-key", other),))
    assert list(listed.models) == []


async def test_over_the_rpm_is_429_naming_the_limit_with_retry_after(
    http: aiohttp.ClientSession, tenants: RedisTenants
) -> None:
    key = await new_key(tenants, Tenant("acme", rpm=2))
    assert [(await chat(http, key)).status for _ in range(2)] == [200, 200]
    async with http.post(
        "/v1/chat/completions", json={"model": "qwen3", "messages": FAST}, headers=bearer(key)
    ) as resp:
        body = await resp.json()
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 20
    assert "rpm=2" in body["error"]["message"] and body["error"]["param"] == "rpm"


async def test_tokens_are_charged_by_estimate_before_and_by_usage_after(
    http: aiohttp.ClientSession, tenants: RedisTenants, engines: list[VllmSimulator]
) -> None:
    key = await new_key(tenants, Tenant("acme", tpm=300))
    for engine in engines:
        engine.faults.slow_start = 0.5
    first = asyncio.create_task(chat(http, key, max_tokens=200))  # charged ~210 while it runs
    await asyncio.sleep(0.2)
    async with http.post(
        "/v1/chat/completions",
        json={"model": "qwen3", "messages": FAST, "max_tokens": 200},
        headers=bearer(key),
    ) as resp:
        body = await resp.json()
        assert (
            resp.status == 429 and body["error"]["param"] == "tpm" and "tpm=300" in body["error"]["message"]
        )
    for engine in engines:
        engine.faults.slow_start = 0.0
    assert (await first).status == 200
    await asyncio.sleep(0.1)  # it used ~20 tokens: the rest is refunded
    assert (await chat(http, key, max_tokens=200)).status == 200


async def test_concurrent_streams_beyond_the_limit_are_429_and_slots_come_back(
    http: aiohttp.ClientSession, tenants: RedisTenants, engines: list[VllmSimulator]
) -> None:
    key = await new_key(tenants, Tenant("acme", streams=2))
    for engine in engines:
        engine.faults.slow_start = 1.0
    slow = [asyncio.create_task(chat(http, key, stream=True)) for _ in range(2)]
    await asyncio.sleep(0.3)
    refused = await chat(http, key, stream=True)
    assert refused.status == 429
    assert [(await t).status for t in slow] == [200, 200]
    for engine in engines:
        engine.faults.slow_start = 0.0
    await asyncio.sleep(0.1)  # slots are released in the next batch to Redis
    assert (await chat(http, key, stream=True)).status == 200


async def test_grpc_takes_the_key_as_bearer_metadata_like_the_edge_uplink_sends(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants
) -> None:
    key = await new_key(tenants, Tenant("edges"))
    chunks = await grpc_chat(stub, (("authorization", f"Bearer {key}"),))
    assert chunks[-1].finish_reason


async def test_grpc_takes_the_key_as_x_api_key(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants
) -> None:
    key = await new_key(tenants, Tenant("acme"))
    assert (await grpc_chat(stub, (("x-api-key", key),)))[-1].finish_reason


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer tdm-" + "Q" * 43),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Basic dXNlcjpwYXNz"),), grpc.StatusCode.UNAUTHENTICATED),
    ],
)
async def test_grpc_refuses_missing_and_bad_keys(
    stub: gateway_pb2_grpc.GatewayStub, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await grpc_chat(stub, metadata)
    assert refused.value.code() == code


async def test_grpc_over_the_rpm_is_resource_exhausted_with_a_retry_after_trailer(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants
) -> None:
    key = await new_key(tenants, Tenant("acme", rpm=1))
    metadata = (("authorization", f"Bearer {key}"),)
    await grpc_chat(stub, metadata)
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await grpc_chat(stub, metadata)
    trailers = dict(limited.value.trailing_metadata() or ())
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rpm=1" in (
        limited.value.details() or ""
    )
    assert int(trailers["retry-after"]) >= 30


async def test_an_unknown_model_is_not_found_whatever_the_tenant(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants
) -> None:
    key = await new_key(tenants, Tenant("acme", frozenset({"qwen3"})))
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await grpc_chat(stub, (("x-api-key", key),), model="no-such-model")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_grpc_permission_denied_for_a_model_outside_the_tenants_list(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants
) -> None:
    key = await new_key(tenants, Tenant("acme", frozenset({"some-other-model"})))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await grpc_chat(stub, (("x-api-key", key),))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_revoked_key_stops_working_on_every_replica_within_seconds(
    start_gateway: StartGateway, tenants: RedisTenants
) -> None:
    replicas = [await start_gateway(), await start_gateway()]
    key, record = await tenants.create_key("acme")
    sessions = [aiohttp.ClientSession(f"http://127.0.0.1:{g.http_port}") for g in replicas]
    try:
        assert [(await chat(s, key)).status for s in sessions] == [200, 200]
        await tenants.revoke(record.id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        statuses = [200, 200]
        while statuses != [401, 401]:
            assert loop.time() - started < 3, "a replica kept accepting the revoked key"
            await asyncio.sleep(0.1)
            statuses = [(await chat(s, key)).status for s in sessions]
    finally:
        for s in sessions:
            await s.close()


async def test_heartbeats_need_an_edge_key_and_get_their_groups_rollout(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants, gateway: GatewayServer
) -> None:
    beat = pb.HeartbeatRequest(edge_id="edge-1", group="line-a", healthy=True)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Heartbeat(beat)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    key, _ = await tenants.create_key("edges", role="edge", edge="edge-1")
    metadata = (("authorization", f"Bearer {key}"),)
    assert (await stub.Heartbeat(beat, metadata=metadata)).desired_reference == ""
    await gateway.service.state.fleet.rollout("line-a", "registry.local:5000/models/qwen3:v2")  # type: ignore[attr-defined]
    reply = await stub.Heartbeat(beat, metadata=metadata)
    assert reply.desired_reference == "registry.local:5000/models/qwen3:v2"
    assert reply.interval_seconds == gateway.config.fleet.heartbeat_seconds
