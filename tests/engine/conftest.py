"""A real engine (llama.cpp's server with SmolLM2-135M-Instruct) behind a real gateway, both
faces, on loopback; an edge agent in front of the gateway where a test asks for one."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import grpc
import pytest

from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from tandem.v1 import gateway_pb2_grpc
from tests.engine.llama_server import SERVED, LlamaServer

POOL = "smol"
ENGINE_CONTEXT = 2048
# The pool claims more context than the engine was started with, so that prompts the gateway
# lets through can be over the engine's context: the engine's refusal is what is tested.
POOL_CONTEXT = 32768


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The session's engine: requests queue for it one at a time, as its server does."""
    server = LlamaServer(tmp_path_factory.mktemp("engine") / "llama.log", n_ctx=ENGINE_CONTEXT)
    server.start()
    yield server
    server.stop()


def engine_gateway_config(urls: list[str], **router: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "grpc": {"port": 0},
            "http": {"port": 0, "sse_heartbeat_seconds": 1},
            "pools": [
                {
                    "name": POOL,
                    "context_length": POOL_CONTEXT,
                    "endpoints": [
                        {"url": f"{u}/v1", "model": SERVED, "kind": "llama-cpp", "max_concurrency": 64}
                        for u in urls
                    ],
                    # SmolLM2 has no thinking switch.
                    "supports_thinking_switch": False,
                }
            ],
            "router": {
                "num_retries": 2,
                "cooldown_seconds": 1,
                "allowed_fails": 1,
                "first_token_timeout_seconds": 60,
                "timeout_seconds": 120,
                **router,
            },
            "shutdown_grace_seconds": 2,
        }
    )


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[..., Any]]:
    started: list[GatewayServer] = []

    async def start(urls: list[str], **router: Any) -> GatewayServer:
        server = GatewayServer(engine_gateway_config(urls, **router))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def gateway(engine: LlamaServer, start_gateway: Callable[..., Any]) -> GatewayServer:
    server: GatewayServer = await start_gateway([engine.url])
    return server


@pytest.fixture
async def stub(gateway: GatewayServer) -> AsyncIterator[gateway_pb2_grpc.GatewayStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)


@pytest.fixture
def engine_log_dir(tmp_path: Path) -> Path:
    return tmp_path
