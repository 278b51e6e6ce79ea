"""Engine dialects and the engine answers that are not what they seem, against the simulated vLLM.

The real llama.cpp server's side of the same rules is tested in tests/engine/.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from gateway.server import GatewayServer
from gateway.usage import UsageCounter
from simulators.faults import Faults
from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tandem.chat import ChatRequest, Chunk, Message, ToolCall
from tandem.routing.estimate import estimate_text, exact_prompt_tokens
from tandem.routing.tokens import count_text
from tests.gateway.conftest import CONTEXT, SERVED, StartGateway, chat_requests, gateway_config

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _pool(urls: list[str], *, kind: str, context_length: int = CONTEXT) -> list[dict[str, Any]]:
    return [
        {
            "name": "qwen3",
            "context_length": context_length,
            "endpoints": [{"url": f"{u}/v1", "model": SERVED, "kind": kind} for u in urls],
        }
    ]


async def _post(gateway: GatewayServer, body: dict[str, Any], **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions", json=body, headers=headers
        )


ASKED = {
    "model": "qwen3",
    "messages": [{"role": "user", "content": "Which city is the capital of France?"}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}},
    "repetition_penalty": 1.1,
    "max_tokens": 8,
}


async def test_a_llama_cpp_endpoint_gets_its_dialect(
    engines: list[VllmSimulator], start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(pools=_pool([e.url for e in engines], kind="llama-cpp"))
    resp = await _post(gateway, ASKED, **{"x-tandem-mode": "non_thinking"})
    assert resp.status_code == 200, resp.text
    (sent,) = chat_requests(engines)
    assert sent["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert sent["repeat_penalty"] == 1.1 and "repetition_penalty" not in sent
    # Qwen3's thinking switch in the prompt: llama-cpp-python has no per-request template switch.
    assert sent["messages"][-1]["content"].endswith(" /no_think")
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}


async def test_a_vllm_endpoint_gets_the_body_as_built(
    engines: list[VllmSimulator], start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(pools=_pool([e.url for e in engines], kind="vllm"))
    resp = await _post(gateway, ASKED, **{"x-tandem-mode": "non_thinking"})
    assert resp.status_code == 200, resp.text
    (sent,) = chat_requests(engines)
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
    assert sent["repetition_penalty"] == 1.1 and "repeat_penalty" not in sent
    assert sent["messages"][-1]["content"] == ASKED["messages"][0]["content"]


def test_an_unknown_endpoint_kind_is_refused_naming_it() -> None:
    from gateway.config import GatewayConfig

    with pytest.raises(ValueError, match=r"kind"):
        GatewayConfig.model_validate(
            {"pools": [{"name": "p", "endpoints": [{"url": "http://e/v1", "model": "m", "kind": "tgi"}]}]}
        )


HELLO = {"model": "qwen3", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}


async def test_a_stream_ended_without_a_finish_reason_is_retried_elsewhere(
    engines: list[VllmSimulator], start_gateway: StartGateway
) -> None:
    gateway = await start_gateway()
    engines[0].set_faults(Faults(cut_after=0))
    for _ in range(4):
        resp = await _post(gateway, {**HELLO, "stream": False})
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert answer["choices"][0]["finish_reason"] in ("stop", "length") and answer["choices"][0]["message"]
    assert engines[1].requests, "the requests the cut engine failed went to the other one"


async def test_a_stream_every_engine_cuts_short_is_a_failure_not_an_empty_answer(
    engines: list[VllmSimulator], start_gateway: StartGateway
) -> None:
    gateway = await start_gateway()
    for e in engines:
        e.set_faults(Faults(cut_after=0))
    resp = await _post(gateway, {**HELLO, "stream": True})
    assert resp.status_code == 503
    assert "without a finish_reason" in resp.json()["error"]["message"]


async def test_a_stream_cut_short_after_its_first_tokens_ends_in_an_error_event() -> None:
    # Paced, so that the first tokens reach the caller before the cut.
    sim = VllmSimulator(VllmSimConfig(models=[VllmModel(name=SERVED)], tokens_per_second=50, output_tokens=8))
    await sim.start()
    gateway = GatewayServer(gateway_config([sim.url]))
    await gateway.start()
    try:
        sim.set_faults(Faults(cut_after=4))
        resp = await _post(gateway, {**HELLO, "stream": True})
    finally:
        await gateway.stop()
        await sim.stop()
    assert resp.status_code == 200
    events = [line[6:] for line in resp.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = orjson.loads(events[-2])
    assert "without a finish_reason" in last["error"]["message"]
    assert len(events) > 3, "tokens came before the cut"
    assert not any(c["finish_reason"] for e in events[:-2] for c in orjson.loads(e).get("choices", [])), (
        "no chunk claimed the answer was finished"
    )


async def test_an_engines_over_context_refusal_is_context_length_exceeded_and_not_its_fault(
    engines: list[VllmSimulator], start_gateway: StartGateway
) -> None:
    # The pool claims more context than the engines have, so the gateway's own check passes and
    # the engine is the one to refuse.
    urls = [e.url for e in engines]
    gateway = await start_gateway(pools=_pool(urls, kind="vllm", context_length=CONTEXT * 8))
    engines[1].config.legacy_errors = True  # older vLLM's flat error body: the same answer
    long = {**HELLO, "messages": [{"role": "user", "content": "word " * (CONTEXT + 500)}]}
    for _ in range(4):
        resp = await _post(gateway, long)
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["code"] == "context_length_exceeded" and err["type"] == "context_length_exceeded"
        assert "maximum context length" in err["message"]
    assert len(chat_requests(engines)) == 4, "refused once each: not retried on another endpoint"
    metrics = gateway.service.metrics.render().decode()
    assert not [
        line for line in metrics.splitlines() if line.startswith("tandem_gateway_upstream_failures_total{")
    ], "an over-context refusal is not the endpoint's failure"
    assert (await _post(gateway, HELLO)).status_code == 200


async def test_an_unknown_route_says_its_own_status_in_the_body(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"http://127.0.0.1:{gateway.http_port}/v1/nothing-here")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == 404


def _request(text: str) -> ChatRequest:
    return ChatRequest(model="qwen3", messages=[Message(role="user", content=text)])


def test_usage_is_counted_with_qwens_tokenizer_for_a_qwen_model() -> None:
    req = _request("What is the capital of France?")
    counter = UsageCounter(req, "Qwen/Qwen3-0.6B-GGUF")
    answer = ["The capital", " of France", " is Paris."]
    counter.add([Chunk(content=answer[0]), Chunk(content=answer[1])])
    counter.add([Chunk(content=answer[2], finish_reason="stop")])
    assert counter.missing
    usage = counter.count()
    assert usage.counted and not counter.missing
    assert usage.completion_tokens == count_text("".join(answer))
    assert usage.prompt_tokens == exact_prompt_tokens(req)


def test_usage_is_estimated_for_another_model_and_tool_calls_count() -> None:
    req = _request("Weather in Paris?")
    counter = UsageCounter(req, "gemma-3-270m")
    call = ToolCall(id="c1", name="get_weather", arguments='{"city": "Paris"}')
    counter.add([Chunk(tool_calls=[call], finish_reason="tool_calls")])
    usage = counter.count()
    assert usage.counted
    assert usage.completion_tokens == estimate_text('get_weather{"city": "Paris"}')


def test_an_engines_usage_is_not_counted_again() -> None:
    from tandem.chat import Usage

    counter = UsageCounter(_request("hi"), SERVED)
    counter.add([Chunk(content="hello", finish_reason="stop"), Chunk(usage=Usage(3, 1))])
    assert not counter.missing
