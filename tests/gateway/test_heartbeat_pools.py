"""The Heartbeat reply tells the edge each cloud pool's state: warm (it has endpoints) or cold
(none ready), with its endpoints, held requests and an estimated wait."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from gateway.pool.elastic import EXPECTED_COLD_START_S, RECHECK_S, PoolStates, Readiness
from gateway.server import GatewayServer
from simulators.vllm import VllmSimulator
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc
from tests.gateway.conftest import CONTEXT, SERVED, StartGateway

# A name in `.invalid` resolves to nothing (NXDOMAIN): a discovered pool scaled to zero.
NOWHERE = "vllm.tandem.invalid"


def pools(engines: list[VllmSimulator], **cold_start: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": "qwen3",
            "aliases": ["qwen3-14b"],
            "context_length": CONTEXT,
            "endpoints": [{"url": f"{e.url}/v1", "model": SERVED} for e in engines],
        },
        {
            "name": "qwen3-elastic",
            "context_length": CONTEXT,
            "discovery": {"name": NOWHERE, "port": 8000, "model": SERVED},
            **({"cold_start": cold_start} if cold_start else {}),
        },
    ]


@pytest.fixture
async def elastic_gateway(start_gateway: StartGateway, engines: list[VllmSimulator]) -> GatewayServer:
    server: GatewayServer = await start_gateway(
        pools=pools(engines, max_pending=4, timeout_seconds=300), fleet={"heartbeat_seconds": 2}
    )
    return server


async def heartbeat(gateway: GatewayServer) -> dict[str, pb.PoolState]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        reply = await gateway_pb2_grpc.GatewayStub(channel).Heartbeat(
            pb.HeartbeatRequest(edge_id="box-1", healthy=True)
        )
    return {p.name: p for p in reply.pools}


async def test_a_pool_with_endpoints_is_reported_warm(elastic_gateway: GatewayServer) -> None:
    warm = (await heartbeat(elastic_gateway))["qwen3"]
    assert warm.readiness == pb.POOL_READINESS_WARM
    assert list(warm.aliases) == ["qwen3-14b"]
    assert (warm.endpoints, warm.held, warm.cold_seconds, warm.estimated_wait_seconds) == (2, 0, 0, 0)


async def test_a_discovered_pool_without_endpoints_is_reported_cold(elastic_gateway: GatewayServer) -> None:
    cold = (await heartbeat(elastic_gateway))["qwen3-elastic"]
    assert cold.readiness == pb.POOL_READINESS_COLD
    assert (cold.endpoints, cold.held) == (0, 0)
    assert RECHECK_S <= cold.estimated_wait_seconds <= EXPECTED_COLD_START_S


async def test_the_estimated_wait_shrinks_while_the_pool_stays_cold(elastic_gateway: GatewayServer) -> None:
    now = [100.0]
    states = PoolStates(elastic_gateway.service.elastic, clock=lambda: now[0])
    first = {s.name: s for s in states.now()}["qwen3-elastic"]
    now[0] += 20
    later = {s.name: s for s in states.now()}["qwen3-elastic"]
    assert first.readiness is later.readiness is Readiness.COLD
    assert (first.cold_seconds, later.cold_seconds) == (0, 20)
    assert later.estimated_wait_seconds == first.estimated_wait_seconds - 20 == EXPECTED_COLD_START_S - 20
    now[0] += 10 * EXPECTED_COLD_START_S  # longer than expected: still cold, so never "no wait"
    assert {s.name: s for s in states.now()}["qwen3-elastic"].estimated_wait_seconds == RECHECK_S


async def test_the_estimated_wait_is_at_most_the_hold_timeout(
    start_gateway: StartGateway, engines: list[VllmSimulator]
) -> None:
    gateway = await start_gateway(pools=pools(engines, max_pending=4, timeout_seconds=5))
    cold = (await heartbeat(gateway))["qwen3-elastic"]
    assert cold.readiness == pb.POOL_READINESS_COLD and cold.estimated_wait_seconds == 5


async def test_the_estimated_wait_starts_from_the_pools_expected_cold_start(
    start_gateway: StartGateway, engines: list[VllmSimulator]
) -> None:
    gateway = await start_gateway(pools=pools(engines, expected_seconds=25, timeout_seconds=300))
    now = [0.0]
    states = PoolStates(gateway.service.elastic, clock=lambda: now[0])
    assert {s.name: s for s in states.now()}["qwen3-elastic"].estimated_wait_seconds == 25
    now[0] += 10
    assert {s.name: s for s in states.now()}["qwen3-elastic"].estimated_wait_seconds == 15
