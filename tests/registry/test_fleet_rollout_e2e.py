"""Rollout end to end: ops set a group's version on the gateway; the edge learns it from its
heartbeat reply, pulls it from the registry, registers it with Ollama and switches; a rollback
brings the previous version back. Real registry, real gateway and edge servers, Ollama simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edge_agent.config import EdgeConfig
from edge_agent.server import EdgeServer
from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from registry.reference import Reference
from simulators.ollama import OllamaSimConfig, OllamaSimulator
from tests.registry.conftest import make_gguf
from tests.registry.helpers import push, text_file

SERVED = "tiny:edge"
GROUP = "line-a"


async def eventually(check: Callable[[], object], what: str, timeout_s: float = 60) -> None:
    for _ in range(int(timeout_s * 10)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[GatewayServer, EdgeServer]]:
    gateway = GatewayServer(
        GatewayConfig.model_validate(
            {
                "grpc": {"port": 0},
                "http": {"port": 0},
                "auth": {"required": False},
                "fleet": {"heartbeat_seconds": 1},
                # No request goes to this pool; the test is about the fleet.
                "pools": [
                    {
                        "name": "qwen3",
                        "endpoints": [{"url": "http://127.0.0.1:9/v1", "model": "Qwen/Qwen3-14B"}],
                    }
                ],
            }
        )
    )
    await gateway.start()
    ollama = OllamaSimulator(OllamaSimConfig(models=[]))
    await ollama.start()
    edge = EdgeServer(
        EdgeConfig.model_validate(
            {
                "listen": {"port": 0},
                "ollama": {"url": ollama.url, "refresh_seconds": 0.5},
                "uplink": {"address": f"127.0.0.1:{gateway.grpc_port}"},
                "edge_id": "box-7",
                "group": GROUP,
                "heartbeat_seconds": 1,
                "model_sync": {
                    "served_name": SERVED,
                    "store_dir": str(tmp_path / "store"),
                    "plain_http": True,
                    "retry_initial_seconds": 0.05,
                    "retry_max_seconds": 0.5,
                },
            }
        )
    )
    await edge.start()
    yield gateway, edge
    await edge.stop()
    await ollama.stop()
    await gateway.stop()


@pytest.mark.timeout(180)
async def test_rollout_reaches_the_edge_and_rollback_restores_the_previous_version(
    stack: tuple[GatewayServer, EdgeServer], model_ref: Reference, tmp_path: Path
) -> None:
    gateway, edge = stack
    gguf = make_gguf(tmp_path / "m.gguf")
    push(model_ref, gguf, template=text_file(tmp_path / "t1", "T1 {{ .Prompt }}"))
    v2 = model_ref.with_tag("v2")
    push(v2, gguf, template=text_file(tmp_path / "t2", "T2 {{ .Prompt }}"))
    sync = edge.model_sync
    assert sync is not None
    assert sync.transport is edge.service.transport  # the edge's one outbound transport

    def serving(ref: Reference) -> bool:
        current = sync.state.current
        return current is not None and current.reference.split("@")[0] == str(ref)

    await gateway.fleet.rollout(GROUP, str(model_ref))
    await eventually(lambda: serving(model_ref), "the edge to serve v1")

    async def fleet_sees(ref: Reference) -> bool:
        edges = {e.edge_id: e for e in await gateway.fleet.edges()}
        box = edges.get("box-7")
        return box is not None and any(
            m.name.startswith(SERVED) and m.reference.startswith(str(ref)) for m in box.models
        )

    for _ in range(100):  # the next heartbeats report the version the edge now serves
        if await fleet_sees(model_ref):
            break
        await asyncio.sleep(0.1)
    assert await fleet_sees(model_ref)

    await gateway.fleet.rollout(GROUP, str(v2))
    await eventually(lambda: serving(v2), "the edge to serve v2")
    assert sync.state.previous is not None and sync.state.previous.reference.split("@")[0] == str(model_ref)

    await gateway.fleet.rollback(GROUP)
    await eventually(lambda: serving(model_ref), "the rollback to v1")
