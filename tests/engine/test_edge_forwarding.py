"""An edge agent forwarding to the gateway, which runs the work on the real llama.cpp server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import ollama
import pytest
from openai import AsyncOpenAI

from edge_agent.server import EdgeServer
from gateway.server import GatewayServer
from simulators import OllamaSimulator
from tests.edge.conftest import edge_config, ollama_config
from tests.engine.conftest import POOL


@pytest.fixture
async def edge(gateway: GatewayServer) -> AsyncIterator[EdgeServer]:
    # The box's own Ollama (simulated) does not have the model: the edge forwards it uplink.
    async with OllamaSimulator(ollama_config()) as local:
        config = edge_config(
            local.url,
            f"127.0.0.1:{gateway.grpc_port}",
            uplink={"api_key_env": None, "models": {}, "first_chunk_timeout_seconds": 60},
        )
        server = EdgeServer(config)
        await server.start()
        yield server
        await server.stop()


async def test_an_ollama_chat_forwarded_by_the_edge_reports_counted_tokens(edge: EdgeServer) -> None:
    client = ollama.AsyncClient(host=edge.url)
    reply = await client.chat(
        model=POOL, messages=[{"role": "user", "content": "Say hello."}], options={"num_predict": 12}
    )
    assert reply.message.content.strip() and reply.done_reason in ("stop", "length")
    # The engine reports no usage in streams: the gateway counted it, so the edge has numbers.
    assert (reply.eval_count or 0) > 0 and (reply.prompt_eval_count or 0) > 0


async def test_an_ollama_stream_forwarded_by_the_edge(edge: EdgeServer) -> None:
    client = ollama.AsyncClient(host=edge.url)
    parts = [
        part
        async for part in await client.chat(
            model=POOL,
            messages=[{"role": "user", "content": "Write one sentence about rivers."}],
            options={"num_predict": 16},
            stream=True,
        )
    ]
    assert "".join(p.message.content for p in parts).strip()
    assert parts[-1].done and (parts[-1].eval_count or 0) > 0


async def test_an_openai_stream_through_the_edge(edge: EdgeServer) -> None:
    async with AsyncOpenAI(base_url=f"{edge.url}/v1", api_key="unused", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=POOL,
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.strip() and finishes in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
