"""The gateway's OpenAI HTTP face, driven by the official openai SDK and raw HTTP."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from gateway.server import GatewayServer
from simulators.vllm import VllmSimulator
from tests.gateway.conftest import chat_requests

THINK_PROMPT = [{"role": "user", "content": "What is 2+2? /think"}]
FAST_PROMPT = [{"role": "user", "content": "Say hello. /no_think"}]


async def test_thinking_request_reaches_vllm_with_thinking_on_and_qwen3_thinking_sampling(
    client: AsyncOpenAI, engines: list[VllmSimulator]
) -> None:
    await client.chat.completions.create(model="qwen3", messages=THINK_PROMPT)
    (body,) = chat_requests(engines)
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert (body["temperature"], body["top_p"], body["top_k"], body["min_p"]) == (0.6, 0.95, 20, 0.0)
    assert body["model"] == "Qwen/Qwen3-14B"


async def test_non_thinking_request_reaches_vllm_with_thinking_off_and_its_sampling(
    client: AsyncOpenAI, engines: list[VllmSimulator]
) -> None:
    await client.chat.completions.create(model="qwen3", messages=FAST_PROMPT)
    (body,) = chat_requests(engines)
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.7, 0.8, 20)


async def test_callers_own_sampling_is_kept(client: AsyncOpenAI, engines: list[VllmSimulator]) -> None:
    await client.chat.completions.create(model="qwen3", messages=FAST_PROMPT, temperature=0.1)
    (body,) = chat_requests(engines)
    assert body["temperature"] == 0.1 and "top_k" not in body


async def test_non_streamed_answer_keeps_reasoning_apart_from_content(client: AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(model="qwen3", messages=THINK_PROMPT)
    message = resp.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning_content")
    assert reasoning and message.content and reasoning not in message.content
    assert resp.usage is not None and resp.usage.completion_tokens > 0


async def test_streamed_reasoning_and_answer_arrive_in_separate_fields_then_usage(
    client: AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="qwen3",
        messages=THINK_PROMPT,
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning, content, usage, finish = [], [], None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            if extra.get("reasoning_content"):
                reasoning.append(extra["reasoning_content"])
            if choice.delta.content:
                content.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert reasoning and content and finish == "stop"
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_non_thinking_stream_has_no_reasoning(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="qwen3", messages=FAST_PROMPT, stream=True)
    chunks = [c async for c in stream]
    assert not any((ch.delta.model_extra or {}).get("reasoning_content") for c in chunks for ch in c.choices)
    assert "".join(ch.delta.content or "" for c in chunks for ch in c.choices)


@pytest.mark.parametrize(
    ("kwargs", "headers", "route"),
    [
        ({"reasoning_effort": "high"}, {}, "target=cloud; mode=thinking; reason=explicit"),
        ({}, {"x-tandem-mode": "non_thinking"}, "target=cloud; mode=non_thinking; reason=explicit"),
        ({"extra_body": {"mode": "thinking"}}, {}, "target=cloud; mode=thinking; reason=explicit"),
    ],
)
async def test_explicit_mode_decides_the_route(
    client: AsyncOpenAI, kwargs: dict, headers: dict, route: str
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="qwen3", messages=[{"role": "user", "content": "hi"}], extra_headers=headers, **kwargs
    )
    assert raw.headers["x-tandem-route"] == route


async def test_soft_switch_decides_the_route(client: AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(model="qwen3", messages=THINK_PROMPT)
    assert raw.headers["x-tandem-route"] == "target=cloud; mode=thinking; reason=soft_switch"


async def test_classifier_decides_the_route_when_nothing_is_explicit(client: AsyncOpenAI) -> None:
    hard = (
        "Prove that the square root of 2 is irrational, then derive how many steps a binary search "
        "needs on a sorted list of 1,000,000 items and explain why."
    )
    raw = await client.chat.completions.with_raw_response.create(
        model="qwen3", messages=[{"role": "user", "content": hard}]
    )
    assert raw.headers["x-tandem-route"] == "target=cloud; mode=thinking; reason=classifier"
    raw = await client.chat.completions.with_raw_response.create(
        model="qwen3", messages=[{"role": "user", "content": "Translate 'good morning' into French."}]
    )
    assert raw.headers["x-tandem-route"] == "target=cloud; mode=non_thinking; reason=classifier"


async def test_streams_carry_the_route_header(gateway: GatewayServer) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions",
            json={"model": "qwen3", "messages": THINK_PROMPT, "stream": True},
        ) as resp,
    ):
        body = await resp.text()
    assert resp.headers["x-tandem-route"] == "target=cloud; mode=thinking; reason=soft_switch"
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert body.rstrip().endswith("data: [DONE]")


async def test_aliases_reach_the_same_pool(client: AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(model="qwen3-14b", messages=FAST_PROMPT)
    assert resp.model == "qwen3-14b"


async def test_models_lists_pools_and_aliases(client: AsyncOpenAI) -> None:
    ids = [m.id async for m in client.models.list()]
    assert ids == ["qwen3", "qwen3-14b"]


async def test_context_too_long_is_400_naming_limit_and_count(client: AsyncOpenAI) -> None:
    long = "word " * 5000
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="qwen3", messages=[{"role": "user", "content": long}], max_tokens=100
        )
    message = err.value.body["message"]
    assert "maximum context length is 4096 tokens" in message and "100 output tokens" in message


async def test_unknown_model_is_404(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="gpt-9"):
        await client.chat.completions.create(model="gpt-9", messages=FAST_PROMPT)


async def test_health_ready_and_metrics(gateway: GatewayServer, client: AsyncOpenAI) -> None:
    await client.chat.completions.create(model="qwen3", messages=FAST_PROMPT)
    base = f"http://127.0.0.1:{gateway.http_port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with s.get(f"{base}/readyz") as r:
            assert r.status == 200
        async with s.get(f"{base}/metrics") as r:
            text = await r.text()
    assert 'tandem_gateway_requests_total{face="http",mode="non_thinking",reason="soft_switch"' in text
