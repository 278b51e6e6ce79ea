"""With a token delay, every chunk is written as it is produced (real chunked streaming)."""

from __future__ import annotations

import httpx

from simulators import OllamaSimulator, VllmSimulator
from tests.sim.conftest import QWEN, VLLM_MODEL, ollama_config, vllm_config

HI = [{"role": "user", "content": "hi"}]


async def reads(url: str, body: dict[str, object]) -> tuple[list[bytes], httpx.Headers]:
    async with httpx.AsyncClient() as http, http.stream("POST", url, json=body) as response:
        return [chunk async for chunk in response.aiter_raw()], response.headers


async def test_a_paced_vllm_stream_arrives_chunk_by_chunk() -> None:
    config = vllm_config(tokens_per_second=20, output_tokens=4, reasoning_tokens=0)
    async with VllmSimulator(config) as sim:
        received, headers = await reads(
            sim.url + "/v1/chat/completions", {"model": VLLM_MODEL, "messages": HI, "stream": True}
        )

    assert headers["transfer-encoding"] == "chunked"
    # Four tokens (the first with the role chunk) and the finish chunk are written 50 ms apart.
    assert len(received) >= 3


async def test_a_paced_ollama_stream_arrives_line_by_line() -> None:
    config = ollama_config(tokens_per_second=20, output_tokens=4, reasoning_tokens=0)
    async with OllamaSimulator(config) as sim:
        received, headers = await reads(
            sim.url + "/api/chat", {"model": QWEN, "messages": HI, "think": False}
        )

    assert headers["transfer-encoding"] == "chunked"
    assert len(received) >= 3
    assert all(chunk.endswith(b"\n") for chunk in received)


async def test_an_unpaced_stream_is_written_at_once() -> None:
    async with VllmSimulator(vllm_config(output_tokens=200)) as sim:
        received, _ = await reads(
            sim.url + "/v1/chat/completions", {"model": VLLM_MODEL, "messages": HI, "stream": True}
        )

    assert b"".join(received).endswith(b"data: [DONE]\n\n")
    assert b"".join(received).count(b"\n\ndata: ") >= 200
