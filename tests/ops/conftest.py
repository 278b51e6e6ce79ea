"""A real gateway (both faces) over two simulated vLLM engines, and edges that heartbeat to it
over real gRPC: simulated ones (`SimEdge`: what an edge agent reports, on a timer) and, where a
test needs one, a real edge agent over a simulated Ollama."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import grpc
import pytest

from gateway.server import GatewayServer
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc
from tests.gateway import conftest as gateway_tests

pytest_asyncio_loop_factories = gateway_tests.pytest_asyncio_loop_factories
engines = gateway_tests.engines  # the fixture: two vLLM simulators
start_gateway = gateway_tests.start_gateway  # the fixture: starts gateways over them

REFERENCE = "registry.local:5000/models/qwen3:14b"
NEXT = "registry.local:5000/models/qwen3:14b-v2"
# Heartbeats every second, forgotten after three: an edge that stops is late after 2.5 s and
# down after 3 s.
FLEET = {"heartbeat_seconds": 1, "ttl_seconds": 3}


class SimEdge:
    """An edge as the gateway sees it: a heartbeat every `interval_s` over a real gRPC channel,
    with the counts and state a real edge agent reports. `stop()` is the edge going down."""

    def __init__(
        self,
        grpc_address: str,
        edge_id: str,
        *,
        group: str = "default",
        reference: str = REFERENCE,
        version: str = "0.9.0",
        breaker: str = "closed",
        interval_s: float = 0.3,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.address = grpc_address
        self.edge_id = edge_id
        self.group = group
        self.reference = reference
        self.version = version
        self.breaker = breaker
        self.interval_s = interval_s
        self.metadata = metadata
        self.routes = pb.RouteCounts()
        self.replies: list[pb.HeartbeatResponse] = []
        self._task: asyncio.Task[None] | None = None

    def request(self) -> pb.HeartbeatRequest:
        return pb.HeartbeatRequest(
            edge_id=self.edge_id,
            group=self.group,
            models=[pb.ServedModel(name="qwen3:14b", reference=self.reference)],
            healthy=True,
            version=self.version,
            breaker=self.breaker,
            routes=self.routes,
        )

    async def beat(self) -> pb.HeartbeatResponse:
        async with grpc.aio.insecure_channel(self.address) as channel:
            reply: pb.HeartbeatResponse = await gateway_pb2_grpc.GatewayStub(channel).Heartbeat(
                self.request(), metadata=self.metadata
            )
        self.replies.append(reply)
        return reply

    async def _run(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        await self.beat()  # the gateway knows it before start() returns
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


StartEdges = Callable[..., Any]


@pytest.fixture
async def sim_edges() -> AsyncIterator[Callable[..., Any]]:
    """Starts simulated edges (`await sim_edges(gateway, "box-1", ...)`); stops them after the test."""
    started: list[SimEdge] = []

    async def start(gateway: GatewayServer, *edge_ids: str, **kwargs: Any) -> list[SimEdge]:
        made = [SimEdge(f"127.0.0.1:{gateway.grpc_port}", edge_id, **kwargs) for edge_id in edge_ids]
        for edge in made:
            await edge.start()
            started.append(edge)
        return made

    yield start
    for edge in started:
        await edge.stop()


async def ops_state(gateway: GatewayServer, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """GET /ops/api/state; asserts it answered 200."""
    url = f"http://127.0.0.1:{gateway.http_port}/ops/api/state"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body


async def until_state(
    gateway: GatewayServer, check: Callable[[dict[str, Any]], bool], within_s: float = 15.0
) -> dict[str, Any]:
    """Polls /ops/api/state (as the page does) until `check` holds; returns that state."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        state = await ops_state(gateway)
        if check(state):
            return state
        assert asyncio.get_running_loop().time() < deadline, f"not reached within {within_s}s: {state}"
        await asyncio.sleep(0.1)


def edges_by_id(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in state["fleet"]}
