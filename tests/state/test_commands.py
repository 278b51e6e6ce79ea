"""The operator's commands: `tandem gateway keys|tenants`, `tandem model rollout|rollback`,
`tandem fleet ls`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import yaml
from click.testing import CliRunner, Result

from cli.main import main
from gateway.fleet import EdgeStatus, ServedModel
from gateway.state import Principal
from gateway.state.fleet_redis import RedisFleet
from gateway.state.tenants import key_digest
from tests.state.conftest import RedisServer, make_state

ROOT = Path(__file__).resolve().parents[2]
Tandem = Callable[..., Result]
V1 = "registry.local:5000/models/qwen3:v1"
V2 = "registry.local:5000/models/qwen3:v2"


@pytest.fixture
def tandem(redis_server: RedisServer, prefix: str) -> Tandem:
    """`tandem(*args)`: the command, in this process, against this test's Redis and prefix."""

    def run(*args: str) -> Result:
        return CliRunner().invoke(
            # Quoted: overrides are read as YAML, where a bare `t1234:` is a mapping.
            main,
            [*args, "--redis-url", redis_server.url],
            env={"TANDEM_REDIS__KEY_PREFIX": f'"{prefix}"'},
        )

    return run


def lookup(server: RedisServer, prefix: str, key: str) -> Principal | None:
    async def go() -> Principal | None:
        from gateway.state.tenants import RedisTenants

        state = make_state(server, prefix)
        try:
            return await RedisTenants(state).lookup(key_digest(key))
        finally:
            await state.close()

    return asyncio.run(go())


def test_keys_create_prints_the_key_once_and_stores_only_its_digest(
    tandem: Tandem, redis_server: RedisServer, prefix: str
) -> None:
    made = tandem("gateway", "keys", "create", "--tenant", "acme", "--models", "qwen3", "--rpm", "60")
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("tdm-") and "only time the key is shown" in made.stderr
    found = lookup(redis_server, prefix, key)
    assert found is not None and found.role == "tenant"
    assert found.tenant.rpm == 60 and found.tenant.models == frozenset({"qwen3"})
    listed = tandem("gateway", "keys", "list")
    assert "acme" in listed.stdout and key not in listed.stdout and key_digest(key)[:12] in listed.stdout


def test_keys_revoke_by_id_stops_the_key(tandem: Tandem, redis_server: RedisServer, prefix: str) -> None:
    made = orjson.loads(tandem("gateway", "keys", "create", "--tenant", "acme", "--json").stdout)
    revoked = tandem("gateway", "keys", "revoke", made["id"])
    assert revoked.exit_code == 0 and made["id"] in revoked.stdout
    assert lookup(redis_server, prefix, made["key"]) is None
    assert "revoked" in tandem("gateway", "keys", "list", "--all").stdout
    assert made["id"] not in tandem("gateway", "keys", "list").stdout


def test_revoking_an_unknown_key_fails_saying_so(tandem: Tandem) -> None:
    result = tandem("gateway", "keys", "revoke", "000000000000")
    assert result.exit_code == 1 and "no such key" in result.stderr


def test_tenants_set_changes_only_the_limits_given(tandem: Tandem) -> None:
    tandem("gateway", "tenants", "set", "acme", "--models", "qwen3,qwen3-32b", "--rpm", "60")
    tandem("gateway", "tenants", "set", "acme", "--tpm", "5000")
    shown = orjson.loads(tandem("gateway", "tenants", "ls", "--json").stdout)
    assert shown["tenants"] == [
        {
            "name": "acme",
            "models": ["qwen3", "qwen3-32b"],
            "rpm": 60,
            "tpm": 5000,
            "streams": 0,
            "live_keys": 0,
        }
    ]


def test_offline_keys_print_the_digest_for_a_gateway_without_redis() -> None:
    result = CliRunner().invoke(
        main, ["gateway", "keys", "create", "--tenant", "acme", "--offline", "--json"]
    )
    made = orjson.loads(result.stdout)
    assert key_digest(made["key"]) == made["sha256"]


def test_commands_without_redis_say_how_to_give_it() -> None:
    result = CliRunner().invoke(main, ["gateway", "keys", "list"], env={"TANDEM_REDIS__URL": ""})
    assert result.exit_code == 2 and "--redis-url" in result.stderr


def test_an_unreachable_redis_is_an_error_naming_it_without_its_password() -> None:
    result = CliRunner().invoke(main, ["fleet", "ls", "--redis-url", "redis://:hunter2@127.0.0.1:1"])
    assert result.exit_code == 1 and "127.0.0.1:1" in result.stderr and "hunter2" not in result.stderr


def test_model_rollout_and_rollback_come_with_the_model_group(tandem: Tandem) -> None:
    assert tandem("model", "rollout", V1, "--group", "line-a").exit_code == 0
    canary = tandem("model", "rollout", V2, "--group", "line-a", "--canary", "20")
    assert canary.exit_code == 0 and "20% of edges" in canary.stdout and V1 in canary.stdout
    back = orjson.loads(tandem("model", "rollback", "--group", "line-a", "--json").stdout)
    assert (back["reference"], back["canary_percent"]) == (V1, 100)
    again = tandem("model", "rollback", "--group", "line-a")
    assert again.exit_code == 1 and "no earlier version" in again.stderr


def test_a_rollout_of_something_that_is_no_reference_is_refused(tandem: Tandem) -> None:
    result = tandem("model", "rollout", "qwen3:latest", "--group", "line-a")
    assert result.exit_code == 2 and "not a model reference" in result.stderr


def test_fleet_ls_shows_each_edge_its_versions_last_heartbeat_and_whether_it_matches(
    tandem: Tandem, redis_server: RedisServer, prefix: str
) -> None:
    async def heartbeats() -> None:
        state = make_state(redis_server, prefix)
        store = RedisFleet(state)
        await store.heartbeat(EdgeStatus("edge-ok", "line-a", [ServedModel("qwen3", "sha256:aa", V2)]))
        await store.heartbeat(EdgeStatus("edge-old", "line-a", [ServedModel("qwen3", "sha256:bb", V1)]))
        await store.heartbeat(EdgeStatus("edge-b", "line-b", [ServedModel("qwen3", "sha256:bb", V1)]))
        await state.close()

    asyncio.run(heartbeats())
    tandem("model", "rollout", V2, "--group", "line-a")
    shown = orjson.loads(tandem("fleet", "ls", "--json").stdout)
    by_id = {e["edge_id"]: e for e in shown["edges"]}
    assert by_id["edge-ok"]["matches"] is True and by_id["edge-old"]["matches"] is False
    assert by_id["edge-b"]["matches"] is None and by_id["edge-ok"]["desired_reference"] == V2
    assert by_id["edge-ok"]["last_seen"] > 0
    table = tandem("fleet", "ls", "--group", "line-a").stdout
    assert "edge-old" in table and "edge-b" not in table and "HEARD" in table


def test_the_registry_owns_model_and_never_imports_the_gateway() -> None:
    code = (
        "import sys, registry.cli\nassert not [m for m in sys.modules if m.startswith('gateway')], 'gateway'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)


def test_gateway_serve_refuses_to_start_when_keys_are_required_but_cannot_exist(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {"pools": [{"name": "q", "endpoints": [{"url": "http://127.0.0.1:9/v1", "model": "m"}]}]}
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cli.main import main; main()",
            "gateway",
            "serve",
            "--config",
            str(config),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "auth.required" in result.stderr and "redis.url" in result.stderr
