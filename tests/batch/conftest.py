"""Batch API tests: real gateways on loopback over two vLLM simulators, the real Redis on
127.0.0.1:6379 (a key prefix of each test's own, removed afterwards), the official `openai`
SDK as the client."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from openai import AsyncOpenAI

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gateway.config import Redis as RedisConfig
from gateway.server import GatewayServer
from gateway.state import RedisState, StateHealth, Tenant
from gateway.state.tenants import RedisTenants
from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tandem.metrics import Metrics
from tests.gateway import conftest as gateway_tests
from tests.gateway.conftest import CONTEXT, SERVED, gateway_config

engines = gateway_tests.engines  # the fixture: two vLLM simulators
pytest_asyncio_loop_factories = gateway_tests.pytest_asyncio_loop_factories


@asynccontextmanager
async def paced_engines(output_tokens: int, tokens_per_second: float) -> AsyncIterator[list[VllmSimulator]]:
    """Two vLLM simulators answering `output_tokens` at `tokens_per_second`, no reasoning: a
    line holds an engine slot for a known time."""
    sims = [
        VllmSimulator(
            VllmSimConfig(
                models=[VllmModel(name=SERVED, max_model_len=CONTEXT)],
                seed=i,
                output_tokens=output_tokens,
                reasoning_tokens=0,
                tokens_per_second=tokens_per_second,
            )
        )
        for i in range(2)
    ]
    for sim in sims:
        await sim.start()
    try:
        yield sims
    finally:
        for sim in sims:
            await sim.stop()


REDIS_URL = os.environ.get("TANDEM_TEST_REDIS", "redis://127.0.0.1:6379")

# Quick settings for tests: lines claimed by a dead replica are taken over after 1.5 s.
BATCH = {"claim_idle_seconds": 1.5, "sweep_seconds": 0.2, "poll_seconds": 0.02, "backoff_seconds": 0.0}


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    value = f"tbatch{uuid.uuid4().hex[:10]}:"
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception:
        pytest.fail(f"these tests need Redis at {REDIS_URL}")
    yield value
    keys = [k async for k in client.scan_iter(match=f"{value}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def redis_section(prefix: str) -> dict[str, Any]:
    # Redis never leaves in these tests: a command may take longer than production's 0.25 s on
    # a loaded 2-core machine (the whole suite at once) without the state going degraded.
    return {"url": REDIS_URL, "key_prefix": prefix, "probe_seconds": 0.1, "timeout_seconds": 2.0}


@pytest.fixture
async def tenants(prefix: str) -> AsyncIterator[RedisTenants]:
    state = RedisState(RedisConfig.model_validate(redis_section(prefix)), StateHealth(Metrics("test")))
    yield RedisTenants(state)
    await state.close()


StartGateway = Callable[..., Awaitable[GatewayServer]]


@pytest.fixture
async def start_gateway(engines: list[VllmSimulator], prefix: str) -> AsyncIterator[StartGateway]:
    """Gateway replicas over the simulators sharing this test's keys in Redis; API keys
    required. Keyword arguments override config sections (`batch` is merged)."""
    started: list[GatewayServer] = []

    async def start(**overrides: Any) -> GatewayServer:
        overrides["batch"] = {**BATCH, **overrides.get("batch", {})}
        overrides.setdefault("redis", redis_section(prefix))
        overrides.setdefault("auth", {"required": True, "cache_seconds": 0.5})
        server = GatewayServer(gateway_config([e.url for e in engines], **overrides))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


async def new_key(tenants: RedisTenants, name: str, **limits: Any) -> str:
    await tenants.set_tenant(Tenant(name, **limits))
    key, _ = await tenants.create_key(name)
    return key


def sdk(server: GatewayServer, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key=key, max_retries=0)


def request_line(custom_id: str, content: str = "Summarise: the line runs. /no_think", **body: Any) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "qwen3", "messages": [{"role": "user", "content": content}], **body},
        }
    )


def jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    """Waits until `check()` is true (polling: the state is in another process or in Redis)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)
