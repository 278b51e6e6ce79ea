"""litellm, used as a client of the gateway's HTTP face, sees an OpenAI-compatible server."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
import pytest

from gateway.server import GatewayServer

litellm.suppress_debug_info = True


def base(gateway: GatewayServer) -> str:
    return f"http://127.0.0.1:{gateway.http_port}/v1"


async def test_litellm_gets_reasoning_content_from_a_stream(gateway: GatewayServer) -> None:
    stream = await litellm.acompletion(
        model="openai/qwen3",
        api_base=base(gateway),
        api_key="x",
        stream=True,
        messages=[{"role": "user", "content": "What is 2+2? /think"}],
    )
    reasoning, content = "", ""
    async for chunk in stream:
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
    assert reasoning and content


async def test_litellm_non_streamed_answer_has_reasoning_and_usage(gateway: GatewayServer) -> None:
    resp = await litellm.acompletion(
        model="openai/qwen3",
        api_base=base(gateway),
        api_key="x",
        messages=[{"role": "user", "content": "What is 2+2? /think"}],
    )
    assert resp.choices[0].message.reasoning_content
    assert resp.usage.total_tokens > 0


async def test_litellm_raises_context_window_exceeded(gateway: GatewayServer) -> None:
    with pytest.raises(litellm.ContextWindowExceededError):
        await litellm.acompletion(
            model="openai/qwen3",
            api_base=base(gateway),
            api_key="x",
            max_tokens=50,
            num_retries=0,
            messages=[{"role": "user", "content": "word " * 5000}],
        )
