"""The edge keeps one connection to its Ollama: NDJSON streams are read to the end of their
chunked body before the connection goes back to the pool."""

from __future__ import annotations

import ollama

from edge_agent.server import EdgeServer


async def test_a_hundred_local_streams_reuse_the_connection_to_ollama(
    edge: EdgeServer, ollama_client: ollama.AsyncClient
) -> None:
    before = edge.service.transport.connections_opened
    for _ in range(100):
        parts = [
            part
            async for part in await ollama_client.chat(
                model="qwen3:14b", messages=[{"role": "user", "content": "Say hello /no_think"}], stream=True
            )
        ]
        assert parts[-1].done
    # One connection, and one more at most if a background refresh held it at the moment.
    assert edge.service.transport.connections_opened - before <= 2
