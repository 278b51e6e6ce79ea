"""The gateway keeps its connections to the engines: a stream read to `[DONE]` is also read
to the end of its chunked body, so the next request reuses the connection instead of paying a
new TCP (and, over TLS, a handshake) per stream."""

from __future__ import annotations

from openai import AsyncOpenAI

from gateway.server import GatewayServer

FAST_PROMPT = [{"role": "user", "content": "Say hello. /no_think"}]


async def test_a_hundred_streams_open_at_most_one_connection_per_engine(
    client: AsyncOpenAI, gateway: GatewayServer
) -> None:
    for _ in range(100):
        stream = await client.chat.completions.create(model="qwen3", messages=FAST_PROMPT, stream=True)
        assert [chunk async for chunk in stream]
    assert gateway.service.transport.connections_opened <= 2  # two engines in the pool


async def test_a_hundred_answers_open_at_most_one_connection_per_engine(
    client: AsyncOpenAI, gateway: GatewayServer
) -> None:
    for _ in range(100):
        answer = await client.chat.completions.create(model="qwen3", messages=FAST_PROMPT)
        assert answer.choices[0].message.content
    assert gateway.service.transport.connections_opened <= 2
