"""The whole elastic loop on loopback: the gateway's demand metric drives `Fleet` (KEDA + a
ReplicaSet), which starts real `tandem sim vllm` processes and publishes the ready ones in its
own dnsmasq; the gateway follows that name, holds requests while the pool is at zero and
dispatches them when replicas appear; the pool goes back to zero after the cooldown."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from simulators.autoscaler import ScalingPolicy
from simulators.fleet import Fleet, FleetConfig

SERVED = "Qwen/Qwen3-14B"
COLD_START_S = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def loop_pair() -> AsyncIterator[tuple[Fleet, GatewayServer]]:
    http_port = _free_port()
    fleet = Fleet(
        FleetConfig(
            metrics_urls=(f"http://127.0.0.1:{http_port}/metrics",),
            pool="qwen3",
            policy=ScalingPolicy(target=4, max_replicas=3, cooldown_seconds=2, scale_down_window_seconds=0.5),
            polling_interval=0.2,
            cold_start_seconds=COLD_START_S,
            drain_seconds=0.3,
            vllm_args=("--model", SERVED, "--tokens-per-second", "40", "--output-tokens", "20"),
        ),
        echo=lambda line: None,
    )
    await fleet.start()
    gateway = GatewayServer(
        GatewayConfig.model_validate(
            {
                "grpc": {"port": 0},
                "http": {"port": http_port},
                "auth": {"required": False},
                "pools": [
                    {
                        "name": "qwen3",
                        "discovery": {
                            "name": fleet.config.name,
                            "port": fleet.replica_port,
                            "model": SERVED,
                            "nameserver": fleet.dns.server,
                            "interval_seconds": 0.5,
                        },
                        "cold_start": {"max_pending": 100, "timeout_seconds": 60},
                    }
                ],
                "shutdown_grace_seconds": 1,
            }
        )
    )
    await gateway.start()
    yield fleet, gateway
    await gateway.stop()
    await fleet.stop()


async def _chat(http: aiohttp.ClientSession, port: int) -> tuple[int, str]:
    body = {"model": "qwen3", "messages": [{"role": "user", "content": "Say hello. /no_think"}]}
    async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as resp:
        answer: dict[str, Any] = await resp.json()
        return resp.status, answer["choices"][0]["message"]["content"] if resp.status == 200 else ""


async def _until(check: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 (the fleet's replicas are processes it polls)
            await asyncio.sleep(0.1)


async def test_a_burst_at_zero_scales_the_fleet_up_is_all_answered_and_the_fleet_returns_to_zero(
    loop_pair: tuple[Fleet, GatewayServer],
) -> None:
    fleet, gateway = loop_pair
    assert fleet.autoscaler.replicas == 0 and gateway.service.balancer.upstreams("qwen3") == []
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(fleet.status()["ready"]))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(_chat(http, gateway.http_port) for _ in range(30)))
    watcher.cancel()

    assert [status for status, _ in answers] == [200] * 30  # held through the cold start, none lost
    assert all(content for _, content in answers)
    assert peak == 3  # ceil(30 held / 4 per replica) capped at max_replicas
    await _until(lambda: fleet.autoscaler.replicas == 0 and not fleet.status()["draining"], within=30)
    await _until(lambda: gateway.service.balancer.upstreams("qwen3") == [], within=5)
    reasons = [e["reason"] for e in fleet.status()["events"] if e["kind"] == "scale"]
    assert reasons[0] == "activated" and reasons[-1] == "cooldown"
