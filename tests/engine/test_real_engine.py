"""End to end through the gateway (HTTP and gRPC) against a real llama.cpp server."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import orjson
import pytest

from gateway.server import GatewayServer
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc
from tests.engine.conftest import ENGINE_CONTEXT, POOL
from tests.engine.llama_server import LlamaServer

HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# Over the engine's 2048-token context, under the pool's: the engine is the one to refuse.
TOO_LONG = [{"role": "user", "content": "word " * (ENGINE_CONTEXT + 200)}]


def chat_url(gateway: GatewayServer) -> str:
    return f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions"


async def post(gateway: GatewayServer, **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120) as http:
        return await http.post(chat_url(gateway), json={"model": POOL, "max_tokens": 16, **body})


def sse_events(text: str) -> list[Any]:
    data = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]", "the stream ends with [DONE]"
    return [orjson.loads(d) for d in data[:-1]]


async def test_a_whole_answer(gateway: GatewayServer) -> None:
    resp = await post(gateway, messages=HELLO)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    choice = answer["choices"][0]
    assert choice["message"]["content"].strip() and choice["finish_reason"] in ("stop", "length")
    usage = answer["usage"]
    # llama-cpp-python's server sends no usage in a stream (the gateway always streams from the
    # engine): the gateway counted it, and says so.
    assert usage["tandem_counted"] is True
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 20
    assert resp.headers["x-tandem-route"].startswith("target=cloud")


async def test_a_stream_ends_with_a_finish_reason_and_counted_usage(gateway: GatewayServer) -> None:
    resp = await post(gateway, messages=HELLO, stream=True, stream_options={"include_usage": True})
    assert resp.status_code == 200, resp.text
    events = sse_events(resp.text)
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert text.strip() and finishes in (["stop"], ["length"])
    assert events[-1]["choices"] == [] and events[-1]["usage"]["tandem_counted"] is True
    assert events[-1]["usage"]["completion_tokens"] > 0


async def test_grpc_stream_and_its_counted_usage(stub: gateway_pb2_grpc.GatewayStub) -> None:
    request = pb.ChatRequest(
        model=POOL, messages=[pb.Message(role=pb.ROLE_USER, content=HELLO[0]["content"])], max_tokens=16
    )
    chunks = [c async for c in stub.Chat(request)]
    assert "".join(c.content for c in chunks).strip()
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length")
    assert last.usage.counted and last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0


async def test_a_named_tool_is_called(gateway: GatewayServer) -> None:
    resp = await post(
        gateway,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=40,
    )
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(orjson.loads(call["function"]["arguments"])["city"], str)
    assert choice["finish_reason"] == "tool_calls"


async def test_structured_output_follows_the_json_schema(gateway: GatewayServer) -> None:
    # llama-cpp-python's server answers `json_schema` with 500; the llama-cpp dialect sends the
    # schema as `json_object` + `schema`, which it constrains the output with.
    resp = await post(
        gateway,
        messages=[{"role": "user", "content": "Name a city and its country, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}},
        max_tokens=60,
    )
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "stop", "the whole object fitted in max_tokens"
    place = orjson.loads(choice["message"]["content"])
    assert isinstance(place["city"], str) and isinstance(place["country"], str)


async def test_sampling_under_vllms_names_reaches_the_engine(gateway: GatewayServer) -> None:
    # repetition_penalty is repeat_penalty to llama.cpp; a value it rejects shows it arrived.
    resp = await post(gateway, messages=HELLO, repetition_penalty=1.3, temperature=0.0, seed=3)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("stream", [False, True])
async def test_over_context_is_openais_400_and_not_the_endpoints_fault(
    gateway: GatewayServer, stream: bool
) -> None:
    resp = await post(gateway, messages=TOO_LONG, stream=stream)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == "context_length_exceeded" and "context length" in err["message"]
    metrics = gateway.service.metrics.render().decode()
    assert "tandem_gateway_upstream_failures_total{" not in metrics
    assert (await post(gateway, messages=HELLO)).status_code == 200, "the endpoint is not cooling down"


async def test_over_context_over_grpc_is_invalid_argument(stub: gateway_pb2_grpc.GatewayStub) -> None:
    request = pb.ChatRequest(
        model=POOL, messages=[pb.Message(role=pb.ROLE_USER, content=TOO_LONG[0]["content"])], max_tokens=8
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _ = [c async for c in stub.Chat(request)]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context length" in str(refused.value.details())


async def test_concurrent_streams_all_complete(gateway: GatewayServer) -> None:
    async def one(i: int) -> list[Any]:
        asked = [{"role": "user", "content": f"Say a word about {i}."}]
        resp = await post(gateway, messages=asked, stream=True)
        assert resp.status_code == 200, resp.text
        return sse_events(resp.text)

    streams = await asyncio.gather(*(one(i) for i in range(6)))
    for events in streams:
        finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
        assert len(finishes) == 1, "each stream finished once, with its own answer"


async def test_streams_an_interrupting_engine_cuts_are_never_passed_on_as_answers(
    start_gateway: Any, tmp_path: Any
) -> None:
    # llama-cpp-python's default: a new request ends the running stream with a bare [DONE].
    engine = LlamaServer(tmp_path / "llama.log", n_ctx=ENGINE_CONTEXT, interrupt_requests=True)
    engine.start()
    try:
        gateway = await start_gateway([engine.url], num_retries=0)

        async def one(i: int) -> tuple[int, list[Any] | str]:
            resp = await post(gateway, messages=HELLO, stream=True, max_tokens=24)
            if resp.status_code != 200:
                return resp.status_code, resp.text
            return 200, sse_events(resp.text)

        results = await asyncio.gather(*(one(i) for i in range(4)))
    finally:
        engine.stop()
    failed = 0
    for status, events in results:
        if status != 200:
            failed += 1
            assert status == 503 and "finish_reason" in str(events)
            continue
        assert isinstance(events, list)
        errors = [e for e in events if "error" in e]
        finishes = [c["finish_reason"] for e in events for c in e.get("choices", []) if c["finish_reason"]]
        if errors:
            failed += 1
            assert "without a finish_reason" in errors[0]["error"]["message"] and not finishes
        else:
            assert finishes, "a stream passed on as complete has its finish_reason"
    assert failed >= 1, "the engine interrupted at least one stream, and it was reported as failed"


async def test_an_engine_killed_and_restarted_is_served_again(start_gateway: Any, tmp_path: Any) -> None:
    engine = LlamaServer(tmp_path / "llama.log", n_ctx=ENGINE_CONTEXT)
    engine.start()
    try:
        gateway = await start_gateway([engine.url])
        assert (await post(gateway, messages=HELLO)).status_code == 200
        engine.kill()
        down = await post(gateway, messages=HELLO)
        assert down.status_code == 503 and down.json()["error"]["type"] == "upstream_unavailable"
        restart_s = engine.start()
        for _ in range(50):  # its cooldown (1 s) passes, or the last-resort retry takes it
            back = await post(gateway, messages=HELLO)
            if back.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert back.status_code == 200, back.text
        assert back.json()["choices"][0]["message"]["content"].strip()
        assert restart_s < 30
    finally:
        engine.stop()
