"""A real gateway (both faces) in front of two simulated vLLM endpoints, all on loopback."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import grpc
import pytest
from openai import AsyncOpenAI

from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tandem.v1 import gateway_pb2_grpc

SERVED = "Qwen/Qwen3-14B"
CONTEXT = 4096


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """The gateway's tests run on asyncio's loop."""
    return {"asyncio": asyncio.new_event_loop}


def gateway_config(urls: list[str], **overrides: Any) -> GatewayConfig:
    data: dict[str, Any] = {
        "grpc": {"port": 0},
        "http": {"port": 0, "max_body_bytes": 256 * 1024, "sse_heartbeat_seconds": 0.2},
        "pools": [
            {
                "name": "qwen3",
                "aliases": ["qwen3-14b"],
                "context_length": CONTEXT,
                "endpoints": [{"url": f"{u}/v1", "model": SERVED, "max_concurrency": 32} for u in urls],
            }
        ],
        "router": {
            "num_retries": 2,
            "cooldown_seconds": 30,
            "allowed_fails": 1,
            "first_token_timeout_seconds": 5,
            "timeout_seconds": 30,
        },
        "shutdown_grace_seconds": 5,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return GatewayConfig.model_validate(data)


@pytest.fixture
async def engines() -> AsyncIterator[list[VllmSimulator]]:
    sims = [
        VllmSimulator(
            VllmSimConfig(
                models=[VllmModel(name=SERVED, max_model_len=CONTEXT)],
                seed=i,
                output_tokens=8,
                reasoning_tokens=6,
            )
        )
        for i in range(2)
    ]
    for sim in sims:
        await sim.start()
    yield sims
    for sim in sims:
        await sim.stop()


StartGateway = Callable[..., Any]


@pytest.fixture
async def start_gateway(engines: list[VllmSimulator]) -> AsyncIterator[StartGateway]:
    """Starts a gateway over the simulators; keyword arguments override config sections."""
    started: list[GatewayServer] = []

    async def start(**overrides: Any) -> GatewayServer:
        server = GatewayServer(gateway_config([e.url for e in engines], **overrides))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> GatewayServer:
    server: GatewayServer = await start_gateway()
    return server


@pytest.fixture
async def client(gateway: GatewayServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(
        base_url=f"http://127.0.0.1:{gateway.http_port}/v1", api_key="unused", max_retries=0
    ) as c:
        yield c


@pytest.fixture
async def stub(gateway: GatewayServer) -> AsyncIterator[gateway_pb2_grpc.GatewayStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)


def chat_requests(engines: list[VllmSimulator]) -> list[dict[str, Any]]:
    return [body for e in engines for body in e.requests]
