"""Edge keys: a key's role (`tenant`, the default, or `edge`), set when it is created, stored
beside its tenant, listed, and given in the configuration of a gateway without Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import orjson
import pytest
from click.testing import CliRunner, Result

from cli.main import main
from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from gateway.state import Principal, Tenant, TenantStore
from gateway.state.tenants import KeyRecord, RedisTenants, key_digest, new_key
from simulators.vllm import VllmSimulator
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc
from tests.state.conftest import RedisServer, gateway_config, make_state

Tandem = Callable[..., Result]


@pytest.fixture
def tandem(redis_server: RedisServer, prefix: str) -> Tandem:
    def run(*args: str) -> Result:
        return CliRunner().invoke(
            main, [*args, "--redis-url", redis_server.url], env={"TANDEM_REDIS__KEY_PREFIX": f'"{prefix}"'}
        )

    return run


def lookup(server: RedisServer, prefix: str, key: str) -> Principal | None:
    async def go() -> Principal | None:
        state = make_state(server, prefix)
        try:
            return await RedisTenants(state).lookup(key_digest(key))
        finally:
            await state.close()

    return asyncio.run(go())


# --- the stores --------------------------------------------------------------------------------


async def test_a_key_is_a_tenant_key_unless_made_an_edge_key(tenant_store: TenantStore) -> None:
    key, record = await tenant_store.create_key("acme")
    assert record.role == "tenant" and await tenant_store.lookup(key_digest(key)) == Principal(Tenant("acme"))


async def test_an_edge_key_resolves_to_its_tenant_role_and_edge(tenant_store: TenantStore) -> None:
    await tenant_store.set_tenant(Tenant("factory-a", rpm=60))
    key, record = await tenant_store.create_key("factory-a", role="edge", edge="line-a-1")
    assert (record.role, record.edge) == ("edge", "line-a-1")
    expected = Principal(Tenant("factory-a", rpm=60), "edge", "line-a-1")
    assert await tenant_store.lookup(key_digest(key)) == expected
    (listed,) = await tenant_store.keys("factory-a")
    assert (listed.role, listed.edge) == ("edge", "line-a-1")


@pytest.mark.parametrize(
    ("role", "edge"),
    [("root", ""), ("admin", "line-a-1"), ("tenant", "line-a-1"), ("edge", "line a/1"), ("edge", "e" * 257)],
)
async def test_a_bad_role_or_edge_name_is_refused(tenant_store: TenantStore, role: str, edge: str) -> None:
    with pytest.raises(ValueError):
        await tenant_store.create_key("acme", role=role, edge=edge)  # type: ignore[arg-type]


def test_a_key_record_from_before_roles_reads_as_a_tenant_key() -> None:
    old = b'{"id":"3f9c2a61d0b4","tenant":"acme","digest":"00","label":"ci","created":1.0,"revoked":0}'
    record = KeyRecord.from_json(old)
    assert (record.role, record.edge, record.tenant) == ("tenant", "", "acme")


# --- the commands ------------------------------------------------------------------------------


def test_keys_create_with_edge_makes_a_key_for_that_edge(
    tandem: Tandem, redis_server: RedisServer, prefix: str
) -> None:
    made = tandem("gateway", "keys", "create", "--tenant", "factory-a", "--edge", "line-a-1")
    assert made.exit_code == 0, made.output
    assert "edge key" in made.stderr and "edge line-a-1" in made.stderr
    found = lookup(redis_server, prefix, made.stdout.strip())
    assert found is not None and found.tenant.name == "factory-a"
    assert (found.role, found.edge) == ("edge", "line-a-1")
    listed = orjson.loads(tandem("gateway", "keys", "list", "--json").stdout)["keys"]
    assert [(k["role"], k["edge"]) for k in listed] == [("edge", "line-a-1")]
    assert "edge:line-a-1" in tandem("gateway", "keys", "list").stdout


def test_keys_create_with_role_edge_makes_a_key_for_any_edge(
    tandem: Tandem, redis_server: RedisServer, prefix: str
) -> None:
    made = orjson.loads(
        tandem("gateway", "keys", "create", "--tenant", "f", "--role", "edge", "--json").stdout
    )
    assert (made["role"], made["edge"]) == ("edge", "")
    found = lookup(redis_server, prefix, made["key"])
    assert found is not None and (found.role, found.edge) == ("edge", "")


def test_keys_create_refuses_an_edge_for_a_tenant_key(tandem: Tandem) -> None:
    made = tandem("gateway", "keys", "create", "--tenant", "f", "--role", "tenant", "--edge", "e1")
    assert made.exit_code == 2 and "--edge" in made.stderr


def test_offline_edge_keys_say_where_the_digest_goes() -> None:
    result = CliRunner().invoke(
        main, ["gateway", "keys", "create", "--tenant", "f", "--edge", "line-a-1", "--offline"]
    )
    assert result.exit_code == 0 and "edge_keys" in result.stderr and "line-a-1" in result.stderr


# --- a gateway without Redis -------------------------------------------------------------------


async def test_edge_keys_from_the_configuration_send_heartbeats_and_tenant_keys_do_not(
    engines: list[VllmSimulator],
) -> None:
    tenant_key, edge_key = new_key(), new_key()
    factory = {
        "name": "factory-a",
        "key_sha256": [key_digest(tenant_key)],
        "edge_keys": [{"sha256": key_digest(edge_key), "edge": "line-a-1"}],
    }
    gateway = GatewayServer(
        gateway_config([e.url for e in engines], auth={"required": True, "tenants": [factory]})
    )
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            beat = pb.HeartbeatRequest(edge_id="line-a-1", group="line-a")
            await stub.Heartbeat(beat, metadata=(("authorization", f"Bearer {edge_key}"),))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Heartbeat(beat, metadata=(("authorization", f"Bearer {tenant_key}"),))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert [e.edge_id for e in await gateway.fleet.edges()] == ["line-a-1"]
    finally:
        await gateway.stop()


def test_an_edge_key_in_the_configuration_is_a_digest() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        GatewayConfig.model_validate(
            {"auth": {"required": True, "tenants": [{"name": "f", "edge_keys": [{"sha256": "tdm-x"}]}]}}
        )
