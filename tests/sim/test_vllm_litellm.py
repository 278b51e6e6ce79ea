"""litellm (what the gateway's pool drives) sees the vLLM simulator as it sees vLLM."""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before the import: no network here

import litellm  # imported once per module: it takes seconds
import pytest

from simulators import VllmSimulator
from tests.sim.conftest import VLLM_MODEL

HI = [{"role": "user", "content": "Why is the sky blue?"}]


def call(sim: VllmSimulator, **kwargs: object) -> dict[str, object]:
    return {"model": f"hosted_vllm/{VLLM_MODEL}", "api_base": sim.url + "/v1", "messages": HI, **kwargs}


async def test_reasoning_arrives_as_reasoning_content(vllm_sim: VllmSimulator) -> None:
    reply = await litellm.acompletion(**call(vllm_sim))

    message = reply.choices[0].message
    assert message.reasoning_content
    assert message.content
    assert reply.usage.completion_tokens == 12


async def test_thinking_off_through_chat_template_kwargs_has_no_reasoning(vllm_sim: VllmSimulator) -> None:
    reply = await litellm.acompletion(
        **call(vllm_sim, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    )

    assert not getattr(reply.choices[0].message, "reasoning_content", None)
    assert vllm_sim.requests[-1]["chat_template_kwargs"] == {"enable_thinking": False}


async def test_streamed_reasoning_arrives_as_reasoning_content_with_usage(vllm_sim: VllmSimulator) -> None:
    stream = await litellm.acompletion(**call(vllm_sim, stream=True, stream_options={"include_usage": True}))
    received = [chunk async for chunk in stream]

    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in received if c.choices
    )
    content = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    usage = [c.usage for c in received if getattr(c, "usage", None)]
    assert reasoning and content
    assert usage and usage[-1].completion_tokens == 12


async def test_a_too_long_prompt_raises_context_window_exceeded(vllm_sim: VllmSimulator) -> None:
    with pytest.raises(litellm.ContextWindowExceededError):
        await litellm.acompletion(**call(vllm_sim, messages=[{"role": "user", "content": "hello " * 5000}]))
