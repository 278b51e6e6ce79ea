"""Who may speak for an edge: `Heartbeat` needs an edge credential (an edge key, or the client
certificate of an mTLS listener), an edge reports only its own status, and what it reports is
bounded. Whole gateways on a real Redis, keys required."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.server import GatewayServer
from gateway.state import RedisState
from gateway.state.tenants import RedisTenants
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc
from tests.state.conftest import StartGateway

Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> GatewayServer:
    return await start_gateway()


@pytest.fixture
async def stub(gateway: GatewayServer) -> AsyncIterator[gateway_pb2_grpc.GatewayStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)


async def bearer(tenants: RedisTenants, tenant: str = "factory-a", **role: Any) -> Metadata:
    key, _ = await tenants.create_key(tenant, **role)
    return (("authorization", f"Bearer {key}"),)


def beat(edge_id: str = "line-a-1", **fields: Any) -> pb.HeartbeatRequest:
    defaults = {"edge_id": edge_id, "group": "line-a", "healthy": True, "version": "0.1.0"}
    return pb.HeartbeatRequest(**{**defaults, **fields})


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def stored(redis_state: RedisState, prefix: str, edge_id: str) -> bytes | str | None:
    found: bytes | str | None = await redis_state.client.get(f"{prefix}{{fleet}}:edge:{edge_id}")
    return found


# --- the credential ------------------------------------------------------------------------------


async def test_a_tenant_key_cannot_overwrite_an_edges_status(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants, redis_state: RedisState, prefix: str
) -> None:
    await stub.Heartbeat(beat(), metadata=await bearer(tenants, role="edge", edge="line-a-1"))
    genuine = await stored(redis_state, prefix, "line-a-1")
    customer = await bearer(tenants, "acme")
    denied = await refused(stub.Heartbeat(beat(healthy=False, version="6.6.6"), metadata=customer))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs an edge credential" in (denied.details() or "")
    assert await stored(redis_state, prefix, "line-a-1") == genuine


async def test_a_tenant_key_cannot_register_an_edge(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants, redis_state: RedisState, prefix: str
) -> None:
    denied = await refused(stub.Heartbeat(beat("fake-1"), metadata=await bearer(tenants, "acme")))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await stored(redis_state, prefix, "fake-1") is None


async def test_an_edge_key_reports_only_the_edge_it_names(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants, redis_state: RedisState, prefix: str
) -> None:
    mine = await bearer(tenants, role="edge", edge="line-a-1")
    assert (await stub.Heartbeat(beat("line-a-1"), metadata=mine)).interval_seconds > 0
    denied = await refused(stub.Heartbeat(beat("line-a-2"), metadata=mine))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "line-a-1" in (denied.details() or "")
    assert await stored(redis_state, prefix, "line-a-2") is None


async def test_an_edge_key_for_no_edge_in_particular_reports_any(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants, gateway: GatewayServer
) -> None:
    edges = await bearer(tenants, role="edge")
    for edge_id in ("line-a-1", "line-a-2"):
        await stub.Heartbeat(beat(edge_id), metadata=edges)
    assert [e.edge_id for e in await gateway.fleet.edges()] == ["line-a-1", "line-a-2"]


async def test_an_edge_key_forwards_user_work_as_its_tenant(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants
) -> None:
    edge = await bearer(tenants, role="edge", edge="line-a-1")
    request = pb.ChatRequest(model="qwen3", messages=[pb.Message(role=pb.ROLE_USER, content="hi /no_think")])
    chunks = [c async for c in stub.Chat(request, metadata=edge)]
    assert chunks[-1].finish_reason == "stop"
    assert [m.id for m in (await stub.ListModels(pb.ListModelsRequest(), metadata=edge)).models]


async def test_a_key_stored_before_roles_is_a_tenant_key(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants, redis_state: RedisState, prefix: str
) -> None:
    metadata = await bearer(tenants, "acme")
    (record,) = await tenants.keys("acme")
    await redis_state.client.hdel(f"{prefix}key:{record.digest}", "role", "edge")  # as written before roles
    assert (await stub.ListModels(pb.ListModelsRequest(), metadata=metadata)).models
    denied = await refused(stub.Heartbeat(beat(), metadata=metadata))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


# --- mTLS: the certificate is the credential -----------------------------------------------------


@pytest.fixture
async def mtls_stub(start_gateway: StartGateway, certs: Path) -> AsyncIterator[gateway_pb2_grpc.GatewayStub]:
    """A gateway whose gRPC listener requires client certificates, called with the `client`
    certificate (CN=client)."""
    tls = {"cert_file": certs / "server.pem", "key_file": certs / "server.key"}
    tls["client_ca_file"] = certs / "ca.pem"
    gateway = await start_gateway(grpc={"port": 0, "tls": tls})
    ca, key, cert = ((certs / name).read_bytes() for name in ("ca.pem", "client.key", "client.pem"))
    creds = grpc.ssl_channel_credentials(ca, key, cert)
    async with grpc.aio.secure_channel(f"127.0.0.1:{gateway.grpc_port}", creds) as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)


async def test_a_verified_client_certificate_sends_heartbeats_for_the_edge_it_names(
    mtls_stub: gateway_pb2_grpc.GatewayStub, redis_state: RedisState, prefix: str
) -> None:
    assert (await mtls_stub.Heartbeat(beat("client"))).interval_seconds > 0
    denied = await refused(mtls_stub.Heartbeat(beat("line-a-9")))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await stored(redis_state, prefix, "client") and not await stored(redis_state, prefix, "line-a-9")


async def test_user_work_over_mtls_still_needs_a_key(mtls_stub: gateway_pb2_grpc.GatewayStub) -> None:
    denied = await refused(mtls_stub.ListModels(pb.ListModelsRequest()))
    assert denied.code() == grpc.StatusCode.UNAUTHENTICATED


# --- bounds --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "request_"),
    [
        ("edge_id", beat("e" * 257)),
        ("group", pb.HeartbeatRequest(edge_id="line-a-1", group="g" * 129)),
        ("version", beat(version="v" * 65)),
        ("labels", beat(labels={f"k{i}": "v" for i in range(33)})),
        ("labels", beat(labels={"k" * 65: "v"})),
        ("labels", beat(labels={"k": "v" * 257})),
        ("models", beat(models=[pb.ServedModel(name=f"m{i}") for i in range(257)])),
        ("models", beat(models=[pb.ServedModel(name="qwen3", reference="r" * 513)])),
    ],
)
async def test_each_heartbeat_field_is_capped_naming_the_field(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants, field: str, request_: pb.HeartbeatRequest
) -> None:
    edges = await bearer(tenants, role="edge")
    denied = await refused(stub.Heartbeat(request_, metadata=edges))
    assert denied.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (denied.details() or "").startswith(f"heartbeat {field}:")


async def test_an_oversized_heartbeat_is_refused_and_redis_does_not_grow(
    stub: gateway_pb2_grpc.GatewayStub, tenants: RedisTenants, redis_state: RedisState, prefix: str
) -> None:
    edges = await bearer(tenants, role="edge")
    await stub.Heartbeat(beat("line-a-1"), metadata=edges)
    before = (await redis_state.client.info("memory"))["used_memory"]
    keys_before = await redis_state.client.dbsize()
    huge = beat("fake-1", labels={f"label-{i}": "x" * 1024 for i in range(3 * 1024)})  # 3 MiB of labels
    for _ in range(4):
        denied = await refused(stub.Heartbeat(huge, metadata=edges))
        assert denied.code() == grpc.StatusCode.INVALID_ARGUMENT and "labels" in (denied.details() or "")
    assert await stored(redis_state, prefix, "fake-1") is None
    assert await redis_state.client.dbsize() == keys_before
    assert (await redis_state.client.info("memory"))["used_memory"] - before < 256 * 1024
    assert (await stub.Heartbeat(beat("line-a-1"), metadata=edges)).interval_seconds > 0  # still serving
