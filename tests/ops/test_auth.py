"""Who may read the ops page's JSON: anyone when the gateway checks no keys (`tandem up`), only
an admin key when it does: 401 without a valid key, 403 for a tenant's or an edge's key."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from click.testing import CliRunner, Result

from cli.main import main
from gateway.server import GatewayServer
from gateway.state.tenants import key_digest
from tests.gateway.conftest import StartGateway
from tests.ops.conftest import ops_state
from tests.state import conftest as state_tests

redis_server = state_tests.redis_server  # the fixtures: a redis-server of this test's own,
prefix = state_tests.prefix  # and a key prefix

TENANT_KEY = "tdm-ops-test-tenant-key-0123456789abcdefghijklmno"
EDGE_KEY = "tdm-ops-test-edge-key-0123456789abcdefghijklmnopq"
ADMIN_KEY = "tdm-ops-test-admin-key-0123456789abcdefghijklmnop"


async def get_state(gateway: GatewayServer, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{gateway.http_port}/ops/api/state"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.headers["Cache-Control"] == "no-store"
        return resp.status, await resp.json()


@pytest.fixture
async def keyed_gateway(start_gateway: StartGateway) -> GatewayServer:
    tenant = {
        "name": "factory-a",
        "key_sha256": [key_digest(TENANT_KEY)],
        "edge_keys": [{"sha256": key_digest(EDGE_KEY)}],
        "admin_key_sha256": [key_digest(ADMIN_KEY)],
    }
    server: GatewayServer = await start_gateway(auth={"required": True, "tenants": [tenant]})
    return server


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({}, 401, "missing API key"),
        ({"Authorization": "Bearer tdm-not-a-key-0123456789abcdefghijklmnopqrst"}, 401, "invalid API key"),
        ({"Authorization": "Basic b3BzOm9wcw=="}, 401, "invalid API key"),
        ({"Authorization": f"Bearer {TENANT_KEY}"}, 403, "needs an admin key"),
        ({"x-api-key": EDGE_KEY}, 403, "needs an admin key"),
    ],
)
async def test_without_an_admin_key_the_state_is_refused(
    keyed_gateway: GatewayServer, headers: dict[str, str], status: int, says: str
) -> None:
    got, body = await get_state(keyed_gateway, headers)
    assert got == status and says in body["error"]["message"]
    assert "fleet" not in body


@pytest.mark.parametrize("header", ["Authorization", "x-api-key"])
async def test_an_admin_key_reads_the_state(keyed_gateway: GatewayServer, header: str) -> None:
    value = f"Bearer {ADMIN_KEY}" if header == "Authorization" else ADMIN_KEY
    status, body = await get_state(keyed_gateway, {header: value})
    assert status == 200 and body["gateway"]["auth_required"] is True
    assert [p["name"] for p in body["pools"]] == ["qwen3"]


async def test_the_page_itself_is_open_so_that_it_can_ask_for_a_key(keyed_gateway: GatewayServer) -> None:
    url = f"http://127.0.0.1:{keyed_gateway.http_port}/ops/"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200 and 'id="key-form"' in await resp.text()


async def test_without_key_checks_the_state_is_open(start_gateway: StartGateway) -> None:
    gateway: GatewayServer = await start_gateway()  # as `tandem up` runs it
    state = await ops_state(gateway)
    assert state["gateway"]["auth_required"] is False


async def test_an_admin_key_made_by_the_keys_command_reads_the_state_on_redis(
    start_gateway: StartGateway, redis_server: state_tests.RedisServer, prefix: str
) -> None:
    def tandem(*args: str) -> Result:  # the commands run their own event loop: off this one
        env = {"TANDEM_REDIS__KEY_PREFIX": f'"{prefix}"'}
        return CliRunner().invoke(main, [*args, "--redis-url", redis_server.url], env=env)

    async def create(*args: str) -> dict[str, Any]:
        result = await asyncio.to_thread(
            tandem, "gateway", "keys", "create", "--tenant", "ops", *args, "--json"
        )
        assert result.exit_code == 0, result.output
        made: dict[str, Any] = orjson.loads(result.stdout)
        return made

    admin, tenant = await create("--role", "admin"), await create()
    assert (admin["role"], tenant["role"]) == ("admin", "tenant")
    gateway: GatewayServer = await start_gateway(
        redis={"url": redis_server.url, "key_prefix": prefix}, auth={"required": True}
    )
    status, body = await get_state(gateway, {"Authorization": f"Bearer {admin['key']}"})
    assert status == 200 and body["gateway"]["shared_state"] == "redis"
    status, body = await get_state(gateway, {"Authorization": f"Bearer {tenant['key']}"})
    assert status == 403
    listed = await asyncio.to_thread(tandem, "gateway", "keys", "list")
    assert listed.exit_code == 0 and "admin" in listed.output


def test_an_offline_admin_key_says_where_its_digest_goes() -> None:
    result = CliRunner().invoke(
        main, ["gateway", "keys", "create", "--tenant", "ops", "--role", "admin", "--offline"]
    )
    assert result.exit_code == 0, result.output
    key, digest = (line.split()[1] for line in result.stdout.splitlines()[:2])
    assert key_digest(key) == digest and "admin_key_sha256" in result.stderr
