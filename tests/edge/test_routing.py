"""Where a request runs, seen through the official `ollama` and `openai` clients: non-thinking
work that fits on the box runs on the local Ollama with thinking off; everything else goes to
the real gateway, and every answer says where it ran and why."""

from __future__ import annotations

from typing import Any

import ollama
from openai import AsyncOpenAI

from edge_agent.server import EdgeServer
from simulators import OllamaSimulator
from tests.edge.conftest import (
    CLOUD,
    CLOUD_ONLY,
    LOCAL,
    LOCAL_CONTEXT,
    PLAIN,
    Routes,
    StartEdge,
    ollama_config,
    parse_route,
    until,
)

HELLO: list[Any] = [{"role": "user", "content": "Say hello to the line supervisor."}]


def inference_bodies(sim: OllamaSimulator) -> list[dict[str, object]]:
    """What the local Ollama was asked to generate (warm-ups, which carry no prompt, left out)."""
    return [b for b in sim.requests if b.get("messages") or b.get("prompt")]


async def test_non_thinking_chat_runs_locally_with_thinking_off(
    ollama_client: ollama.AsyncClient, routes: Routes, local_ollama: OllamaSimulator
) -> None:
    reply = await ollama_client.chat(model=LOCAL, messages=HELLO, think=False)
    assert reply.message.content and not reply.message.thinking
    assert routes.last == {"target": "edge", "mode": "non_thinking", "reason": "explicit"}
    [body] = inference_bodies(local_ollama)
    assert body["think"] is False and body["model"] == LOCAL


async def test_classifier_keeps_a_simple_openai_chat_local(
    openai_client: AsyncOpenAI, local_ollama: OllamaSimulator
) -> None:
    raw = await openai_client.chat.completions.with_raw_response.create(model=CLOUD, messages=HELLO)
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert parse_route(raw.headers["x-tandem-route"]) == {
        "target": "edge",
        "mode": "non_thinking",
        "reason": "classifier",
    }
    [body] = inference_bodies(local_ollama)
    assert body["model"] == LOCAL  # the alias was resolved to the Ollama name


async def test_think_true_is_forwarded_and_streams_reasoning_apart(
    ollama_client: ollama.AsyncClient, routes: Routes, local_ollama: OllamaSimulator
) -> None:
    thinking, content = [], []
    async for part in await ollama_client.chat(model=LOCAL, messages=HELLO, think=True, stream=True):
        thinking.append(part.message.thinking or "")
        content.append(part.message.content or "")
        last = part
    assert "".join(thinking) and "".join(content)
    assert last.done and last.done_reason == "stop" and last.eval_count
    assert routes.last == {"target": "cloud", "mode": "thinking", "reason": "explicit"}
    assert inference_bodies(local_ollama) == []


async def test_reasoning_effort_is_forwarded(openai_client: AsyncOpenAI) -> None:
    raw = await openai_client.chat.completions.with_raw_response.create(
        model=CLOUD, messages=HELLO, reasoning_effort="high"
    )
    message = raw.parse().choices[0].message
    assert message.content and message.model_extra and message.model_extra.get("reasoning_content")
    assert parse_route(raw.headers["x-tandem-route"])["target"] == "cloud"


async def test_soft_switch_think_is_forwarded(ollama_client: ollama.AsyncClient, routes: Routes) -> None:
    reply = await ollama_client.chat(
        model=LOCAL, messages=[{"role": "user", "content": "Plan the shift /think"}]
    )
    assert reply.message.thinking
    assert routes.last == {"target": "cloud", "mode": "thinking", "reason": "soft_switch"}


async def test_prompt_too_long_for_the_local_context_is_forwarded(
    openai_client: AsyncOpenAI, local_ollama: OllamaSimulator
) -> None:
    long_text = "Summarize the maintenance log entries below. " + "Spindle 4 vibration nominal. " * 400
    raw = await openai_client.chat.completions.with_raw_response.create(
        model=CLOUD,
        messages=[{"role": "user", "content": long_text}],
        max_tokens=LOCAL_CONTEXT // 2,
        extra_body={"mode": "non_thinking"},
    )
    assert raw.parse().choices[0].message.content
    route = parse_route(raw.headers["x-tandem-route"])
    assert route == {"target": "cloud", "mode": "non_thinking", "reason": "context_length"}
    assert inference_bodies(local_ollama) == []


async def test_model_the_box_lacks_is_forwarded(ollama_client: ollama.AsyncClient, routes: Routes) -> None:
    reply = await ollama_client.chat(model=CLOUD_ONLY, messages=HELLO, think=False)
    assert reply.message.content
    assert routes.last == {"target": "cloud", "mode": "non_thinking", "reason": "model_unavailable"}


async def test_unknown_everywhere_is_404_in_ollama_words(ollama_client: ollama.AsyncClient) -> None:
    try:
        await ollama_client.chat(model="no-such-model", messages=HELLO, think=False)
    except ollama.ResponseError as exc:
        assert exc.status_code == 404
        assert exc.error == "model 'no-such-model' not found"
    else:
        raise AssertionError("expected a 404")


async def test_work_beyond_the_local_queue_spills_over(start_edge: StartEdge) -> None:
    # One request at a time locally (a slow one is running), none may wait: the next goes up.
    async with OllamaSimulator(ollama_config(tokens_per_second=10, output_tokens=64)) as slow_local:
        edge: EdgeServer = await start_edge(
            ollama_url=slow_local.url, ollama={"num_parallel": 1, "max_queue": 0}
        )
        routes = Routes()
        client = ollama.AsyncClient(host=edge.url, event_hooks={"response": [routes.hook]})
        running = await client.chat(model=LOCAL, messages=HELLO, think=False, stream=True)
        first = await anext(running)
        assert first.message.content and routes.last["target"] == "edge"
        spilled = await client.chat(model=LOCAL, messages=HELLO, think=False)
        assert spilled.message.content
        assert routes.last == {"target": "cloud", "mode": "non_thinking", "reason": "saturated"}
        await running.aclose()  # type: ignore[attr-defined]


async def test_local_model_without_thinking_is_served_locally(
    ollama_client: ollama.AsyncClient, routes: Routes, local_ollama: OllamaSimulator
) -> None:
    reply = await ollama_client.generate(model=PLAIN, prompt="Name one safety rule.", think=False)
    assert reply.response
    assert routes.last["target"] == "edge"
    [body] = inference_bodies(local_ollama)
    assert body["prompt"] == "Name one safety rule." and body["model"] == PLAIN


async def test_openai_stream_passes_reasoning_and_answer_apart(openai_client: AsyncOpenAI) -> None:
    reasoning, content, finish = [], [], None
    stream = await openai_client.chat.completions.create(
        model=CLOUD,
        messages=HELLO,
        stream=True,
        reasoning_effort="medium",
        stream_options={"include_usage": True},
    )
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            reasoning.append(extra.get("reasoning_content") or "")
            content.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(reasoning) and "".join(content)
    assert finish == "stop" and usage is not None and usage.completion_tokens > 0


async def test_local_stream_arrives_in_pieces(ollama_client: ollama.AsyncClient) -> None:
    parts = [p async for p in await ollama_client.chat(model=LOCAL, messages=HELLO, think=False, stream=True)]
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts)


async def test_keeps_the_configured_model_warm(edge: EdgeServer, local_ollama: OllamaSimulator) -> None:
    await until(lambda: edge.service.local.warm)
    warmups = [b for b in local_ollama.requests if not b.get("prompt") and not b.get("messages")]
    assert warmups and warmups[0]["model"] == LOCAL and warmups[0]["keep_alive"] == "30m"
    assert warmups[0]["options"] == {"num_ctx": LOCAL_CONTEXT}
