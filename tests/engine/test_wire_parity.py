"""The vLLM simulator and the real engine answer the same requests in the same wire shape.

The simulators stay for faults and speed; this keeps them honest. Both are asked directly (no
gateway between), and their answers are reduced to shapes: every JSON path with the type of its
value (`choices[].delta.content: str`). Paths both have must agree in type; the paths the
gateway reads (`gateway/relay.py`) must be in both. Where the engines genuinely differ, the
difference is named below (`KNOWN`), and asserted, so that it cannot change unnoticed either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tests.engine.conftest import ENGINE_CONTEXT
from tests.engine.llama_server import SERVED, LlamaServer

SIM_MODEL = "Qwen/Qwen3-14B"

# What the relay reads from a stream event, and the faces from a whole answer.
STREAM_READ = {
    "id: str",
    "object: str",
    "created: int",
    "model: str",
    "choices[].index: int",
    "choices[].delta.role: str",
    "choices[].delta.content: str",
    "choices[].finish_reason: str",
}
WHOLE_READ = {
    "id: str",
    "object: str",
    "created: int",
    "model: str",
    "choices[].index: int",
    "choices[].message.role: str",
    "choices[].message.content: str",
    "choices[].finish_reason: str",
    "usage.prompt_tokens: int",
    "usage.completion_tokens: int",
    "usage.total_tokens: int",
}
TOOL_READ = {
    "choices[].message.tool_calls[].id: str",
    "choices[].message.tool_calls[].type: str",
    "choices[].message.tool_calls[].function.name: str",
    "choices[].message.tool_calls[].function.arguments: str",
}
ERROR_READ = {"error.message: str", "error.type: str"}


def shape(value: Any, path: str = "") -> set[str]:
    """Every leaf path of a JSON value with its type; null leaves are left out (absent and null
    are the same to a reader)."""
    if isinstance(value, dict):
        out: set[str] = set()
        for key, item in value.items():
            out |= shape(item, f"{path}.{key}" if path else key)
        return out
    if isinstance(value, list):
        out = set()
        for item in value:
            out |= shape(item, f"{path}[]")
        return out or {f"{path}: list"}
    if value is None:
        return set()
    kind = "bool" if isinstance(value, bool) else type(value).__name__
    return {f"{path}: {kind}"}


def types_agree(a: set[str], b: set[str]) -> list[str]:
    """Paths both shapes have, with different types."""
    ta = dict(p.rsplit(": ", 1) for p in a)
    tb = dict(p.rsplit(": ", 1) for p in b)
    return [f"{p}: {ta[p]} vs {tb[p]}" for p in ta.keys() & tb.keys() if ta[p] != tb[p]]


@pytest.fixture
async def both(engine: LlamaServer) -> AsyncIterator[dict[str, str]]:
    sim = VllmSimulator(
        VllmSimConfig(models=[VllmModel(name=SIM_MODEL, max_model_len=ENGINE_CONTEXT)], output_tokens=8)
    )
    await sim.start()
    yield {"sim": sim.url, "real": engine.url}
    await sim.stop()


async def ask_real(both: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120) as http:
        return await http.post(f"{both['real']}/v1/chat/completions", json={**body, "model": SERVED})


async def ask_both(both: dict[str, str], body: dict[str, Any]) -> tuple[httpx.Response, httpx.Response]:
    """The same request to both; the simulated Qwen3 with thinking off, as SmolLM2 cannot think."""
    async with httpx.AsyncClient(timeout=120) as http:
        sim = await http.post(
            f"{both['sim']}/v1/chat/completions",
            json={**body, "model": SIM_MODEL, "chat_template_kwargs": {"enable_thinking": False}},
        )
    return sim, await ask_real(both, body)


def events(resp: httpx.Response) -> list[Any]:
    data = [line[6:] for line in resp.text.split("\n") if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]", "both end a stream with [DONE]"
    return [orjson.loads(d) for d in data[:-1]]


HELLO = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}


async def test_whole_answers_have_the_same_shape(both: dict[str, str]) -> None:
    sim, real = await ask_both(both, HELLO)
    assert sim.status_code == real.status_code == 200
    s, r = shape(sim.json()), shape(real.json())
    assert not (WHOLE_READ - s) and not (WHOLE_READ - r), (WHOLE_READ - s, WHOLE_READ - r)
    assert not types_agree(s, r)
    for body in (sim.json(), real.json()):
        assert body["object"] == "chat.completion"
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert body["choices"][0]["finish_reason"] in ("stop", "length")


async def test_streams_have_the_same_chunk_structure(both: dict[str, str]) -> None:
    sim, real = await ask_both(both, {**HELLO, "stream": True, "stream_options": {"include_usage": True}})
    assert sim.status_code == real.status_code == 200
    assert sim.headers["content-type"].startswith("text/event-stream")
    assert real.headers["content-type"].startswith("text/event-stream")
    shapes = {}
    for name, resp in (("sim", sim), ("real", real)):
        evs = events(resp)
        with_choices = [e for e in evs if e["choices"]]
        # One id for the whole stream; the role first; exactly one finish_reason, on the last
        # chunk that has choices.
        assert len({e["id"] for e in evs}) == 1, name
        assert all(e["object"] == "chat.completion.chunk" for e in evs), name
        assert with_choices[0]["choices"][0]["delta"].get("role") == "assistant", name
        finishes = [
            e["choices"][0]["finish_reason"] for e in with_choices if e["choices"][0]["finish_reason"]
        ]
        assert len(finishes) == 1 and with_choices[-1]["choices"][0]["finish_reason"] == finishes[0], name
        shapes[name] = set().union(*(shape(e) for e in with_choices))
    assert not STREAM_READ - (shapes["sim"] & shapes["real"]), STREAM_READ - (shapes["sim"] & shapes["real"])
    assert not types_agree(shapes["sim"], shapes["real"])
    # KNOWN: vLLM ends with a usage event (choices: []) when asked; llama-cpp-python's server
    # ignores stream_options, so the gateway counts the answer itself (gateway/usage.py).
    assert events(sim)[-1]["choices"] == [] and "usage" in events(sim)[-1]
    assert not any(e.get("usage") for e in events(real))


async def test_a_length_cut_says_length_in_both(both: dict[str, str]) -> None:
    sim, real = await ask_both(
        both, {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 2}
    )
    assert sim.json()["choices"][0]["finish_reason"] == real.json()["choices"][0]["finish_reason"] == "length"
    assert sim.json()["usage"]["completion_tokens"] == real.json()["usage"]["completion_tokens"] == 2


async def test_tool_calls_have_the_same_shape(both: dict[str, str]) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    body = {
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 40,
    }
    sim, real = await ask_both(both, body)
    assert sim.status_code == real.status_code == 200
    s, r = shape(sim.json()), shape(real.json())
    assert not (TOOL_READ - s) and not (TOOL_READ - r), (TOOL_READ - s, TOOL_READ - r)
    assert not types_agree(s, r)
    for answer in (sim.json(), real.json()):
        assert answer["choices"][0]["finish_reason"] == "tool_calls"
        orjson.loads(answer["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])


async def test_over_context_errors_have_the_same_body(both: dict[str, str]) -> None:
    long = {"messages": [{"role": "user", "content": "word " * (ENGINE_CONTEXT + 200)}], "max_tokens": 8}
    sim, real = await ask_both(both, long)
    assert sim.status_code == real.status_code == 400
    s, r = shape(sim.json()), shape(real.json())
    assert not (ERROR_READ - s) and not (ERROR_READ - r)
    assert "maximum context length" in sim.json()["error"]["message"]
    assert "maximum context length" in real.json()["error"]["message"]
    # KNOWN: vLLM's code is the status (400); llama-cpp-python says OpenAI's
    # "context_length_exceeded". The gateway answers the latter for both (tandem/wire/dialects.py).
    assert sim.json()["error"]["code"] == 400
    assert real.json()["error"]["code"] == "context_length_exceeded"


async def test_known_difference_structured_output(both: dict[str, str]) -> None:
    # KNOWN: vLLM takes json_schema; llama-cpp-python's server refuses it (500) and takes
    # json_object + schema: the llama-cpp dialect maps it (tandem/wire/dialects.py).
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = {
        "messages": [{"role": "user", "content": "A city, as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        "max_tokens": 30,
    }
    sim, real = await ask_both(both, body)
    assert sim.status_code == 200 and real.status_code == 500
    mapped = await ask_real(both, {**body, "response_format": {"type": "json_object", "schema": schema}})
    assert mapped.status_code == 200
    assert isinstance(orjson.loads(mapped.json()["choices"][0]["message"]["content"])["city"], str)
