"""The vLLM simulator speaks vLLM's OpenAI-compatible API as the `openai` SDK expects it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from simulators import Faults, VllmSimulator
from tests.sim.conftest import TOOLS, VLLM_MODEL, until, vllm_config

HI = [{"role": "user", "content": "Why is the sky blue?"}]
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


def client(sim: VllmSimulator, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="sim", max_retries=0, **kwargs)


def body_of(error: openai.APIStatusError) -> dict[str, Any]:
    """The `error` object of an error answer (the SDK unwraps it)."""
    assert isinstance(error.body, dict)
    return error.body


async def chat(sim: VllmSimulator, **kwargs: Any) -> Any:
    kwargs.setdefault("model", VLLM_MODEL)
    kwargs.setdefault("messages", HI)
    return await client(sim).chat.completions.create(**kwargs)


async def chunks(sim: VllmSimulator, **kwargs: Any) -> list[Any]:
    stream = await chat(sim, stream=True, **kwargs)
    return [chunk async for chunk in stream]


# -- non-streamed ----------------------------------------------------------------------------


async def test_a_thinking_model_returns_reasoning_beside_the_answer(vllm_sim: VllmSimulator) -> None:
    reply = await chat(vllm_sim)
    message = reply.choices[0].message

    assert message.model_extra["reasoning"]
    assert message.content
    assert reply.choices[0].finish_reason == "stop"


async def test_enable_thinking_false_returns_no_reasoning(vllm_sim: VllmSimulator) -> None:
    reply = await chat(vllm_sim, extra_body=NO_THINKING)

    assert reply.choices[0].message.model_extra.get("reasoning") is None
    assert reply.usage.completion_tokens == 8


async def test_usage_counts_reasoning_and_answer_tokens(vllm_sim: VllmSimulator) -> None:
    reply = await chat(vllm_sim)

    assert reply.usage.completion_tokens == 4 + 8
    assert reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_prompt_tokens_are_counted_over_the_qwen_chat_template(vllm_sim: VllmSimulator) -> None:
    from tandem.routing.tokens import count_text

    reply = await chat(vllm_sim, messages=[{"role": "user", "content": "hello"}])

    assert reply.usage.prompt_tokens == count_text(
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    )


async def test_reasoning_can_be_sent_as_reasoning_content() -> None:
    async with VllmSimulator(vllm_config(reasoning_field="reasoning_content")) as sim:
        reply = await chat(sim)

    extra = reply.choices[0].message.model_extra
    assert extra["reasoning_content"] and "reasoning" not in extra


async def test_a_no_think_soft_switch_turns_thinking_off(vllm_sim: VllmSimulator) -> None:
    reply = await chat(vllm_sim, messages=[{"role": "user", "content": "Be quick. /no_think"}])

    assert reply.choices[0].message.model_extra.get("reasoning") is None


async def test_an_instruct_model_never_thinks_and_a_thinking_model_always_does(
    vllm_sim: VllmSimulator,
) -> None:
    instruct = await chat(vllm_sim, model="Qwen/Qwen3-4B-Instruct-2507")
    thinking = await chat(vllm_sim, model="Qwen/Qwen3-4B-Thinking-2507", extra_body=NO_THINKING)

    assert instruct.choices[0].message.model_extra.get("reasoning") is None
    assert thinking.choices[0].message.model_extra.get("reasoning")


async def test_max_tokens_caps_the_output_with_finish_reason_length(vllm_sim: VllmSimulator) -> None:
    reply = await chat(vllm_sim, max_tokens=6)

    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 6


async def test_a_requested_tool_is_called(vllm_sim: VllmSimulator) -> None:
    messages = [{"role": "user", "content": "Call get_weather for Paris."}]
    reply = await chat(vllm_sim, messages=messages, tools=TOOLS, extra_body=NO_THINKING)
    choice = reply.choices[0]

    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert "city" in json.loads(choice.message.tool_calls[0].function.arguments)


async def test_json_response_format_answers_json(vllm_sim: VllmSimulator) -> None:
    reply = await chat(vllm_sim, response_format={"type": "json_object"}, extra_body=NO_THINKING)

    assert isinstance(json.loads(reply.choices[0].message.content), dict)


async def test_json_schema_response_format_answers_a_matching_object(vllm_sim: VllmSimulator) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}

    reply = await chat(vllm_sim, response_format=response_format, extra_body=NO_THINKING)

    assert json.loads(reply.choices[0].message.content) == {"answer": 1}


async def test_sampling_extensions_are_accepted_and_recorded(vllm_sim: VllmSimulator) -> None:
    await chat(vllm_sim, temperature=0.6, top_p=0.95, extra_body={"top_k": 20, "min_p": 0.0, **NO_THINKING})

    body = vllm_sim.requests[-1]
    assert (body["top_k"], body["min_p"], body["chat_template_kwargs"]) == (
        20,
        0.0,
        {"enable_thinking": False},
    )


async def test_same_seed_and_prompt_give_the_same_answer() -> None:
    async with VllmSimulator(vllm_config(seed=3)) as one, VllmSimulator(vllm_config(seed=3)) as two:
        a = await chat(one)
        b = await chat(two)

    assert a.choices[0].message.content == b.choices[0].message.content


async def test_a_different_seed_gives_a_different_answer() -> None:
    async with VllmSimulator(vllm_config(seed=3)) as one, VllmSimulator(vllm_config(seed=4)) as two:
        a = await chat(one)
        b = await chat(two)

    assert a.choices[0].message.content != b.choices[0].message.content


# -- streamed --------------------------------------------------------------------------------


async def test_a_stream_starts_with_the_role_then_reasoning_then_content(vllm_sim: VllmSimulator) -> None:
    received = await chunks(vllm_sim)
    deltas = [c.choices[0].delta for c in received]

    assert deltas[0].role == "assistant" and deltas[0].content == ""
    reasoning = [i for i, d in enumerate(deltas) if (d.model_extra or {}).get("reasoning")]
    content = [i for i, d in enumerate(deltas) if d.content]
    assert len(reasoning) == 4 and len(content) == 8
    assert max(reasoning) < min(content)
    assert received[-1].choices[0].finish_reason == "stop"


async def test_a_stream_without_thinking_has_no_reasoning(vllm_sim: VllmSimulator) -> None:
    received = await chunks(vllm_sim, extra_body=NO_THINKING)

    assert not any((c.choices[0].delta.model_extra or {}).get("reasoning") for c in received)


async def test_usage_arrives_in_a_last_chunk_without_choices_when_asked(vllm_sim: VllmSimulator) -> None:
    received = await chunks(vllm_sim, stream_options={"include_usage": True})
    streamed = sum(
        1 for c in received if c.choices and (c.choices[0].delta.content or c.choices[0].delta.model_extra)
    )

    assert received[-1].choices == []
    assert received[-1].usage.completion_tokens == streamed == 12
    assert all(c.usage is None for c in received[:-1])


async def test_no_usage_chunk_unless_asked(vllm_sim: VllmSimulator) -> None:
    received = await chunks(vllm_sim)

    assert all(c.choices and c.usage is None for c in received)


async def test_the_sse_wire_ends_with_a_stop_reason_chunk_and_done(vllm_sim: VllmSimulator) -> None:
    body = {"model": VLLM_MODEL, "messages": HI, "stream": True}
    async with httpx.AsyncClient() as http:
        response = await http.post(vllm_sim.url + "/v1/chat/completions", json=body)
    events = [e for e in response.text.split("\n\n") if e]

    assert response.headers["content-type"].startswith("text/event-stream")
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])["choices"][0]
    assert last["finish_reason"] == "stop" and "stop_reason" in last


async def test_a_slow_stream_still_arrives_whole(vllm_sim: VllmSimulator) -> None:
    async with VllmSimulator(vllm_config(tokens_per_second=500, time_to_first_token=0.01)) as sim:
        received = await chunks(sim, stream_options={"include_usage": True})

    assert received[-1].usage.completion_tokens == 12


# -- errors ----------------------------------------------------------------------------------


async def test_an_unknown_model_is_404_with_vllms_message(vllm_sim: VllmSimulator) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await chat(vllm_sim, model="nope")

    assert err.value.status_code == 404
    assert body_of(err.value)["message"] == "The model `nope` does not exist."


async def test_a_prompt_beyond_the_context_is_400_with_vllms_message(vllm_sim: VllmSimulator) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await chat(vllm_sim, messages=[{"role": "user", "content": "hello " * 5000}])

    assert body_of(err.value)["message"].startswith(
        "This model's maximum context length is 4096 tokens. However, you requested 0 output tokens "
        "and your prompt contains at least 4097 input tokens"
    )
    assert body_of(err.value)["param"] == "input_tokens"


async def test_prompt_plus_max_tokens_beyond_the_context_is_400(vllm_sim: VllmSimulator) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await chat(vllm_sim, max_tokens=4090)

    assert "you requested 4090 output tokens" in body_of(err.value)["message"]


async def test_legacy_error_bodies_are_flat() -> None:
    async with VllmSimulator(vllm_config(legacy_errors=True)) as sim, httpx.AsyncClient() as http:
        response = await http.post(sim.url + "/v1/chat/completions", json={"model": "nope", "messages": HI})

    assert response.json() == {
        "object": "error", "message": "The model `nope` does not exist.", "type": "NotFoundError",
        "param": "model", "code": 404,
    }  # fmt: skip


async def test_malformed_json_is_400(vllm_sim: VllmSimulator) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(vllm_sim.url + "/v1/chat/completions", content=b"{nope")

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "BadRequestError"


async def test_stream_options_without_stream_is_400(vllm_sim: VllmSimulator) -> None:
    with pytest.raises(openai.BadRequestError):
        await chat(vllm_sim, stream_options={"include_usage": True})


async def test_error_rate_one_answers_every_request_with_the_status(vllm_sim: VllmSimulator) -> None:
    vllm_sim.set_faults(Faults(error_rate=1.0, error_status=503))

    with pytest.raises(openai.APIStatusError) as err:
        await chat(vllm_sim)

    assert err.value.status_code == 503
    assert body_of(err.value)["code"] == 503


async def test_error_rate_is_deterministic_for_a_seed() -> None:
    async def outcomes(seed: int) -> list[bool]:
        async with VllmSimulator(vllm_config(seed=seed, faults=Faults(error_rate=0.5))) as sim:
            results = []
            for _ in range(12):
                try:
                    await chat(sim)
                    results.append(True)
                except openai.APIStatusError:
                    results.append(False)
            return results

    first, second = await outcomes(11), await outcomes(11)

    assert first == second
    assert True in first and False in first


async def test_an_error_mid_stream_is_a_data_event_then_done(vllm_sim: VllmSimulator) -> None:
    vllm_sim.set_faults(Faults(error_after=3))
    received = []

    with pytest.raises(openai.APIError) as err:
        async for chunk in await chat(vllm_sim, stream=True):
            received.append(chunk)

    assert len(received) == 3
    assert "EngineCore" in err.value.message


async def test_a_disconnect_mid_stream_cuts_the_connection(vllm_sim: VllmSimulator) -> None:
    vllm_sim.set_faults(Faults(disconnect_after=2))
    received = []

    with pytest.raises(openai.APIConnectionError):
        async for chunk in await chat(vllm_sim, stream=True):
            received.append(chunk)

    assert len(received) == 2


async def test_a_disconnect_drops_a_non_streamed_request(vllm_sim: VllmSimulator) -> None:
    vllm_sim.set_faults(Faults(disconnect_after=0))

    with pytest.raises(openai.APIConnectionError):
        await chat(vllm_sim)


async def test_a_hung_server_times_the_client_out(vllm_sim: VllmSimulator) -> None:
    vllm_sim.set_faults(Faults(hang=True))

    with pytest.raises(openai.APITimeoutError):
        await client(vllm_sim, timeout=0.3).chat.completions.create(model=VLLM_MODEL, messages=HI)  # type: ignore[arg-type]


async def test_a_slow_start_still_answers(vllm_sim: VllmSimulator) -> None:
    vllm_sim.set_faults(Faults(slow_start=0.05))

    assert (await chat(vllm_sim)).choices[0].message.content


# -- models, health, metrics -----------------------------------------------------------------


async def test_models_lists_served_names_with_max_model_len(vllm_sim: VllmSimulator) -> None:
    models = await client(vllm_sim).models.list()

    first = models.data[0]
    assert first.id == VLLM_MODEL and first.owned_by == "vllm"
    assert (first.model_extra or {})["max_model_len"] == 4096


async def test_health_is_200_empty_and_503_when_dead(vllm_sim: VllmSimulator) -> None:
    async with httpx.AsyncClient() as http:
        healthy = await http.get(vllm_sim.url + "/health")
        vllm_sim.set_faults(Faults(dead=True))
        dead = await http.get(vllm_sim.url + "/health")

    assert (healthy.status_code, healthy.content) == (200, b"")
    assert dead.status_code == 503


async def test_metrics_use_vllms_names_and_model_name_label(vllm_sim: VllmSimulator) -> None:
    await chat(vllm_sim)
    async with httpx.AsyncClient() as http:
        text = (await http.get(vllm_sim.url + "/metrics")).text

    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ):
        assert f"\n{name}{{" in text, name
    assert f'vllm:generation_tokens_total{{engine="0",model_name="{VLLM_MODEL}"}} 12.0' in text


async def test_metrics_count_running_requests() -> None:
    async with VllmSimulator(vllm_config(time_to_first_token=60)) as sim, httpx.AsyncClient() as http:
        task = asyncio.create_task(chat(sim))
        await until(lambda: sim.running == 1)
        text = (await http.get(sim.url + "/metrics")).text
        task.cancel()

    assert f'vllm:num_requests_running{{engine="0",model_name="{VLLM_MODEL}"}} 1.0' in text


# -- admin API -------------------------------------------------------------------------------


async def test_faults_can_be_set_over_http(vllm_sim: VllmSimulator) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(vllm_sim.url + "/_sim/faults", json={"error_rate": 1.0, "error_status": 429})

    assert answer.status_code == 200
    with pytest.raises(openai.RateLimitError):
        await chat(vllm_sim)


async def test_unknown_fault_fields_are_rejected(vllm_sim: VllmSimulator) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(vllm_sim.url + "/_sim/faults", json={"eror_rate": 1.0})

    assert answer.status_code == 400
    assert "eror_rate" in answer.json()["error"]


async def test_recent_requests_are_visible_over_http_and_reset_clears_them(vllm_sim: VllmSimulator) -> None:
    await chat(vllm_sim, max_tokens=9)
    async with httpx.AsyncClient() as http:
        seen = (await http.get(vllm_sim.url + "/_sim/requests")).json()
        await http.post(vllm_sim.url + "/_sim/faults", json={"hang": True})
        await http.post(vllm_sim.url + "/_sim/reset")
        after = (await http.get(vllm_sim.url + "/_sim/requests")).json()

    assert seen[-1]["max_tokens"] == 9
    assert after == []
    assert vllm_sim.faults == Faults()


async def test_the_request_log_is_bounded() -> None:
    async with VllmSimulator(vllm_config(max_recorded=3)) as sim:
        for n in range(5):
            await chat(sim, max_tokens=n + 1)

    assert [r["max_tokens"] for r in sim.requests] == [3, 4, 5]


async def test_a_stopped_simulator_restarts_on_the_same_port() -> None:
    sim = VllmSimulator(vllm_config())
    await sim.start()
    url = sim.url
    await sim.stop()
    with pytest.raises(openai.APIConnectionError):
        await chat(sim)

    await sim.start()
    try:
        reply = await chat(sim)
    finally:
        await sim.stop()

    assert sim.url == url
    assert reply.choices[0].message.content
