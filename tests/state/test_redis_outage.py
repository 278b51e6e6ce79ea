"""Redis dies under load and comes back: the gateway keeps serving every request, says so in its
metrics and logs, and returns to shared state when Redis returns."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from structlog.testing import capture_logs

from gateway.server import GatewayServer
from gateway.state import RedisState, Tenant
from gateway.state.tenants import RedisTenants
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc
from tests.state.conftest import RedisServer, StartGateway, make_state

FAST = [{"role": "user", "content": "Say hello. /no_think"}]
# Limits that are checked on every request but that this load never reaches.
ROOMY = Tenant("acme", rpm=1_000_000, tpm=100_000_000, streams=1_000)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis with an append-only file: keys and settings survive a crash, as in production."""
    server = RedisServer(tmp_path, persist=True)
    server.start()
    yield server
    server.stop()


async def http_worker(
    session: aiohttp.ClientSession, key: str, stop: asyncio.Event, outcomes: Counter[str], stream: bool
) -> None:
    body = {"model": "qwen3", "messages": FAST, "stream": stream}
    while not stop.is_set():
        try:
            async with session.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            ) as resp:
                text = await resp.text()
                ok = resp.status == 200 and ("[DONE]" in text if stream else '"choices"' in text)
                outcomes["ok" if ok else f"http {resp.status}: {text[:200]}"] += 1
        except aiohttp.ClientError as exc:
            outcomes[f"client error {exc!r}"] += 1


async def grpc_worker(
    stub: gateway_pb2_grpc.GatewayStub, key: str, stop: asyncio.Event, outcomes: Counter[str]
) -> None:
    request = pb.ChatRequest(model="qwen3", messages=[pb.Message(role=pb.ROLE_USER, content="hi /no_think")])
    while not stop.is_set():
        try:
            chunks = [c async for c in stub.Chat(request, metadata=(("authorization", f"Bearer {key}"),))]
            outcomes["ok" if chunks and chunks[-1].finish_reason else "grpc: no last chunk"] += 1
        except grpc.aio.AioRpcError as exc:
            outcomes[f"grpc {exc.code().name}: {exc.details()}"] += 1


async def run_load(
    gateway: GatewayServer, key: str, redis: RedisServer, *, workers: int = 12
) -> tuple[Counter[str], list[tuple[float, float]]]:
    """Load for ~3.5 s; Redis is killed at 0.8 s and started again at 2 s. Returns the outcomes
    and samples of the `state_degraded` gauge (time, value)."""
    stop = asyncio.Event()
    outcomes: Counter[str] = Counter()
    gauge: list[tuple[float, float]] = []
    metrics = gateway.service.metrics
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel,
    ):
        stub = gateway_pb2_grpc.GatewayStub(channel)
        tasks = [
            *(
                asyncio.create_task(http_worker(session, key, stop, outcomes, i % 2 == 0))
                for i in range(workers)
            ),
            *(asyncio.create_task(grpc_worker(stub, key, stop, outcomes)) for _ in range(workers // 3)),
        ]
        started = time.monotonic()

        async def sample_until(t: float) -> None:
            while time.monotonic() - started < t:
                gauge.append((time.monotonic() - started, metrics.state_degraded._value.get()))
                await asyncio.sleep(0.05)

        await sample_until(0.8)
        await asyncio.to_thread(redis.kill)
        await sample_until(2.0)
        await asyncio.to_thread(redis.start)
        await sample_until(3.5)
        stop.set()
        await asyncio.gather(*tasks)
    return outcomes, gauge


async def test_redis_killed_and_restarted_under_load_fails_no_request(
    start_gateway: StartGateway, redis_server: RedisServer, redis_state: RedisState, prefix: str
) -> None:
    tenants = RedisTenants(redis_state)
    await tenants.set_tenant(ROOMY)
    key, _ = await tenants.create_key("acme")
    gateway = await start_gateway(redis={"on_failure": "open"}, auth={"cache_seconds": 0.3})
    with capture_logs() as logs:
        outcomes, gauge = await run_load(gateway, key, redis_server)
    assert set(outcomes) == {"ok"}, outcomes.most_common(5)
    assert outcomes["ok"] > 100
    # The outage showed in the gauge, and the gauge went back once Redis returned.
    assert any(v == 1 for t, v in gauge if 1.0 < t < 2.0)
    assert gauge[-1][1] == 0
    transitions = [e for e in logs if e["event"] in ("state_degraded", "state_recovered")]
    # Once per transition, not per request.
    assert [e["event"] for e in transitions] == ["state_degraded", "state_recovered"], transitions
    # Limits are back on Redis: the tenant's buckets live there again.
    fresh = make_state(redis_server, prefix)
    try:
        async with (
            aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as session,
            session.post(
                "/v1/chat/completions",
                json={"model": "qwen3", "messages": FAST},
                headers={"Authorization": f"Bearer {key}"},
            ) as resp,
        ):
            assert resp.status == 200
        assert await fresh.client.exists(f"{prefix}lim:{{acme}}:rpm")
    finally:
        await fresh.close()


async def test_with_fail_closed_a_limited_tenant_is_refused_503_while_redis_is_away(
    start_gateway: StartGateway, redis_server: RedisServer, redis_state: RedisState
) -> None:
    tenants = RedisTenants(redis_state)
    await tenants.set_tenant(ROOMY)
    key, _ = await tenants.create_key("acme")
    gateway = await start_gateway(redis={"on_failure": "closed"})
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as session:

        async def status() -> tuple[int, str, str | None]:
            async with session.post(
                "/v1/chat/completions",
                json={"model": "qwen3", "messages": FAST},
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                return resp.status, await resp.text(), resp.headers.get("Retry-After")

        assert (await status())[0] == 200
        redis_server.kill()
        code, text, retry_after = await status()
        assert code == 503 and "on_failure=closed" in text and retry_after
        redis_server.start()
        for _ in range(60):
            if (await status())[0] == 200:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the gateway did not return to Redis")


async def test_a_gateway_started_while_redis_is_down_serves_and_joins_later(
    engines: object, start_gateway: StartGateway, redis_server: RedisServer, redis_state: RedisState
) -> None:
    tenants = RedisTenants(redis_state)
    key, _ = await tenants.create_key("acme")
    redis_server.kill()
    # No key can be checked yet: the gateway starts anyway, degraded, and says so.
    gateway = await start_gateway(auth={"required": False})
    assert gateway.service.state.health.degraded
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as session:
        async with session.post("/v1/chat/completions", json={"model": "qwen3", "messages": FAST}) as resp:
            assert resp.status == 200
        redis_server.start()
        for _ in range(60):
            if not gateway.service.state.health.degraded:
                break
            await asyncio.sleep(0.05)
        assert not gateway.service.state.health.degraded
    assert key  # (the key itself is used by the other tests; here only the start matters)
