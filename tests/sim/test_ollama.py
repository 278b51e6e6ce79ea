"""The Ollama simulator speaks Ollama's API as the official `ollama` client expects it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from simulators import OllamaSimulator
from tests.sim.conftest import LLAMA, QWEN, TOOLS, ollama_config, until

HI = [{"role": "user", "content": "Why is the sky blue?"}]


def client(sim: OllamaSimulator, **kwargs: Any) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=sim.url, **kwargs)


# -- chat ------------------------------------------------------------------------------------


async def test_chat_with_a_thinking_model_thinks_when_think_is_absent(ollama_sim: OllamaSimulator) -> None:
    reply = await client(ollama_sim).chat(model=QWEN, messages=HI)

    assert reply.message.role == "assistant"
    assert reply.message.thinking
    assert reply.message.content
    assert reply.done is True
    assert reply.done_reason == "stop"


async def test_chat_with_think_false_does_not_think(ollama_sim: OllamaSimulator) -> None:
    reply = await client(ollama_sim).chat(model=QWEN, messages=HI, think=False)

    assert not reply.message.thinking
    assert reply.message.content


async def test_chat_accepts_think_levels(ollama_sim: OllamaSimulator) -> None:
    low = await client(ollama_sim).chat(model=QWEN, messages=HI, think="low")
    high = await client(ollama_sim).chat(model=QWEN, messages=HI, think="high")

    assert low.message.thinking and high.message.thinking
    assert len(high.message.thinking) > len(low.message.thinking)


async def test_chat_reports_metrics_counting_thinking_and_content_tokens(ollama_sim: OllamaSimulator) -> None:
    reply = await client(ollama_sim).chat(model=QWEN, messages=HI)

    assert reply.eval_count == 8 + 4
    assert reply.prompt_eval_count and reply.prompt_eval_count > 5
    assert reply.total_duration and reply.load_duration and reply.eval_duration and reply.prompt_eval_duration


async def test_streamed_chat_sends_thinking_then_content_then_a_final_done_object(
    ollama_sim: OllamaSimulator,
) -> None:
    parts = [part async for part in await client(ollama_sim).chat(model=QWEN, messages=HI, stream=True)]

    thinking = [p for p in parts if p.message.thinking]
    content = [p for p in parts if p.message.content]
    assert len(thinking) == 4 and len(content) == 8
    assert parts.index(thinking[-1]) < parts.index(content[0])
    assert [p.done for p in parts] == [False] * 12 + [True]
    assert parts[-1].done_reason == "stop"
    assert parts[-1].eval_count == 12


async def test_stream_is_ndjson_with_metrics_only_on_the_final_line(ollama_sim: OllamaSimulator) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(ollama_sim.url + "/api/chat", json={"model": QWEN, "messages": HI})
    lines = [json.loads(line) for line in response.text.splitlines()]

    assert response.headers["content-type"] == "application/x-ndjson"
    assert all(set(line) == {"model", "created_at", "message", "done"} for line in lines[:-1])
    assert set(lines[-1]) == {
        "model", "created_at", "message", "done", "done_reason", "total_duration", "load_duration",
        "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration",
    }  # fmt: skip
    assert lines[0]["message"] == {
        "role": "assistant",
        "content": "",
        "thinking": lines[0]["message"]["thinking"],
    }


async def test_num_predict_caps_the_output_with_done_reason_length(ollama_sim: OllamaSimulator) -> None:
    reply = await client(ollama_sim).chat(model=QWEN, messages=HI, options={"num_predict": 6})

    assert reply.done_reason == "length"
    assert reply.eval_count == 6


async def test_same_seed_and_prompt_give_the_same_answer() -> None:
    async with OllamaSimulator(ollama_config(seed=7)) as one, OllamaSimulator(ollama_config(seed=7)) as two:
        a = await client(one).chat(model=QWEN, messages=HI)
        b = await client(two).chat(model=QWEN, messages=HI)

    assert (a.message.content, a.message.thinking) == (b.message.content, b.message.thinking)


async def test_different_prompts_give_different_answers(ollama_sim: OllamaSimulator) -> None:
    a = await client(ollama_sim).chat(model=QWEN, messages=HI)
    b = await client(ollama_sim).chat(model=QWEN, messages=[{"role": "user", "content": "Name a prime."}])

    assert a.message.content != b.message.content


async def test_chat_calls_a_tool_the_user_asks_for(ollama_sim: OllamaSimulator) -> None:
    messages = [{"role": "user", "content": "Use get_weather for Paris."}]
    reply = await client(ollama_sim).chat(model=QWEN, messages=messages, tools=TOOLS)

    assert reply.message.tool_calls
    call = reply.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments["city"], str)


async def test_chat_with_format_json_answers_json(ollama_sim: OllamaSimulator) -> None:
    reply = await client(ollama_sim).chat(model=QWEN, messages=HI, format="json", think=False)

    assert isinstance(json.loads(reply.message.content or ""), dict)


async def test_chat_with_a_json_schema_format_answers_a_matching_object(ollama_sim: OllamaSimulator) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    reply = await client(ollama_sim).chat(model=QWEN, messages=HI, format=schema, think=False)

    assert json.loads(reply.message.content or "") == {"n": 1}


async def test_chat_without_messages_loads_the_model(ollama_sim: OllamaSimulator) -> None:
    reply = await client(ollama_sim).chat(model=QWEN, messages=[])

    assert reply.done_reason == "load"
    assert [m.model for m in (await client(ollama_sim).ps()).models] == [QWEN]


# -- generate --------------------------------------------------------------------------------


async def test_generate_answers_response_and_thinking(ollama_sim: OllamaSimulator) -> None:
    reply = await client(ollama_sim).generate(model=QWEN, prompt="Why is the sky blue?")

    assert reply.response and reply.thinking
    assert reply.done_reason == "stop"
    assert reply.context


async def test_streamed_generate_ends_with_done(ollama_sim: OllamaSimulator) -> None:
    stream = await client(ollama_sim).generate(model=QWEN, prompt="hi", stream=True, think=False)
    parts = [part async for part in stream]

    assert "".join(p.response or "" for p in parts)
    assert parts[-1].done and parts[-1].eval_count == 8


# -- errors ----------------------------------------------------------------------------------


async def test_unknown_model_is_404(ollama_sim: OllamaSimulator) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client(ollama_sim).chat(model="nope:1b", messages=HI)

    assert err.value.status_code == 404
    assert err.value.error == "model 'nope:1b' not found"


async def test_unknown_model_in_a_stream_is_404_at_the_first_iteration(ollama_sim: OllamaSimulator) -> None:
    stream = await client(ollama_sim).chat(model="nope", messages=HI, stream=True)

    with pytest.raises(ollama.ResponseError) as err:
        await anext(stream)

    assert err.value.status_code == 404


async def test_think_on_a_model_without_thinking_is_400(ollama_sim: OllamaSimulator) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client(ollama_sim).chat(model=LLAMA, messages=HI, think=True)

    assert err.value.status_code == 400
    assert err.value.error == f'"{LLAMA}" does not support thinking'


async def test_tools_on_a_model_without_tools_is_400(ollama_sim: OllamaSimulator) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client(ollama_sim).chat(model=LLAMA, messages=HI, tools=TOOLS)

    assert err.value.status_code == 400
    assert err.value.error == f"registry.ollama.ai/library/{LLAMA} does not support tools"


async def test_invalid_think_value_is_400(ollama_sim: OllamaSimulator) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            ollama_sim.url + "/api/chat", json={"model": QWEN, "messages": HI, "think": "max"}
        )

    assert response.status_code == 400
    assert response.json()["error"].startswith('invalid think value: "max"')


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/show", "/api/create"])
async def test_an_empty_body_is_400_missing_request_body(ollama_sim: OllamaSimulator, path: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(ollama_sim.url + path)

    assert response.status_code == 400
    assert response.json() == {"error": "missing request body"}


async def test_malformed_json_is_400(ollama_sim: OllamaSimulator) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(ollama_sim.url + "/api/chat", content=b"{not json")

    assert response.status_code == 400
    assert "error" in response.json()


# -- library ---------------------------------------------------------------------------------


async def test_root_says_ollama_is_running(ollama_sim: OllamaSimulator) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(ollama_sim.url + "/")

    assert response.text == "Ollama is running"


async def test_version_is_reported(ollama_sim: OllamaSimulator) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(ollama_sim.url + "/api/version")

    assert response.json() == {"version": ollama_sim.config.version}


async def test_list_shows_every_model_with_details(ollama_sim: OllamaSimulator) -> None:
    listing = await client(ollama_sim).list()

    assert sorted(m.model or "" for m in listing.models) == sorted([QWEN, LLAMA])
    qwen = next(m for m in listing.models if m.model == QWEN)
    assert qwen.details and qwen.details.family == "qwen3"
    assert qwen.digest and len(qwen.digest) == 64


async def test_show_reports_model_info_capabilities_template_and_parameters(
    ollama_sim: OllamaSimulator,
) -> None:
    shown = await client(ollama_sim).show(QWEN)

    assert shown.capabilities == ["completion", "tools", "thinking"]
    assert shown.modelinfo and shown.modelinfo["qwen3.context_length"] == 40960
    assert shown.template and "<|im_start|>" in shown.template
    assert shown.parameters and "temperature" in shown.parameters
    assert shown.modelfile and shown.modelfile.startswith('# Modelfile generated by "ollama show"')
    assert shown.details and shown.details.quantization_level == "Q4_K_M"


async def test_show_of_an_unknown_model_is_404(ollama_sim: OllamaSimulator) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client(ollama_sim).show("nope")

    assert err.value.status_code == 404


async def test_a_model_name_without_tag_means_latest() -> None:
    async with OllamaSimulator(ollama_config(models=["qwen3"])) as sim:
        listing = await client(sim).list()
        reply = await client(sim).chat(model="qwen3:latest", messages=HI)

    assert [m.model for m in listing.models] == ["qwen3:latest"]
    assert reply.model == "qwen3:latest"


async def test_ps_lists_loaded_models_with_expiry_and_context_length(ollama_sim: OllamaSimulator) -> None:
    assert (await client(ollama_sim).ps()).models == []

    await client(ollama_sim).chat(model=QWEN, messages=HI)
    loaded = (await client(ollama_sim).ps()).models

    assert [m.model for m in loaded] == [QWEN]
    assert loaded[0].expires_at is not None
    assert loaded[0].context_length == 32768


async def test_keep_alive_zero_unloads_after_the_request(ollama_sim: OllamaSimulator) -> None:
    await client(ollama_sim).chat(model=QWEN, messages=HI, keep_alive=0)

    assert (await client(ollama_sim).ps()).models == []


async def test_an_unloaded_model_pays_the_cold_load_and_a_loaded_one_does_not() -> None:
    async with OllamaSimulator(ollama_config(load_duration=0.2)) as sim:
        cold = await client(sim).chat(model=QWEN, messages=HI)
        warm = await client(sim).chat(model=QWEN, messages=HI)

    assert cold.load_duration is not None and cold.load_duration >= 180_000_000
    assert warm.load_duration is not None and warm.load_duration < cold.load_duration


async def test_invalid_keep_alive_is_400(ollama_sim: OllamaSimulator) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client(ollama_sim).chat(model=QWEN, messages=HI, keep_alive="soon")

    assert err.value.status_code == 400


async def test_copy_then_delete(ollama_sim: OllamaSimulator) -> None:
    await client(ollama_sim).copy(QWEN, "mine:v1")
    assert (await client(ollama_sim).chat(model="mine:v1", messages=HI)).message.content

    await client(ollama_sim).delete("mine:v1")

    assert "mine:v1" not in [m.model for m in (await client(ollama_sim).list()).models]


async def test_delete_of_an_unknown_model_is_404(ollama_sim: OllamaSimulator) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client(ollama_sim).delete("nope")

    assert err.value.status_code == 404


# -- blobs and create ------------------------------------------------------------------------


def make_gguf(path: Path, *, context_length: int = 8192) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_context_length(context_length)
    writer.add_file_type(15)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


async def test_create_blob_stores_a_blob_that_head_then_finds(
    ollama_sim: OllamaSimulator, tmp_path: Path
) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights" * 1_000_000)  # several MiB: streamed and hashed in batches

    digest = await client(ollama_sim).create_blob(path)

    assert digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    async with httpx.AsyncClient() as http:
        assert (await http.head(f"{ollama_sim.url}/api/blobs/{digest}")).status_code == 200
        assert (await http.head(f"{ollama_sim.url}/api/blobs/sha256:{'0' * 64}")).status_code == 404


async def test_a_new_blob_is_201_and_a_known_one_200(ollama_sim: OllamaSimulator) -> None:
    data = b"layer"
    url = f"{ollama_sim.url}/api/blobs/sha256:{hashlib.sha256(data).hexdigest()}"
    async with httpx.AsyncClient() as http:
        first = await http.post(url, content=data)
        second = await http.post(url, content=data)

    assert (first.status_code, second.status_code) == (201, 200)


async def test_a_blob_whose_content_does_not_match_its_digest_is_400(ollama_sim: OllamaSimulator) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{ollama_sim.url}/api/blobs/sha256:{'a' * 64}", content=b"other bytes")

    assert response.status_code == 400
    assert response.json()["error"].startswith(f'digest mismatch, expected "sha256:{"a" * 64}"')
    assert not list(ollama_sim.blobs_dir.iterdir())


async def test_a_malformed_digest_is_400(ollama_sim: OllamaSimulator) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{ollama_sim.url}/api/blobs/sha256:xyz", content=b"x")

    assert response.status_code == 400
    assert response.json() == {"error": "invalid digest format"}


async def test_create_from_a_gguf_blob_registers_a_servable_model(
    ollama_sim: OllamaSimulator, tmp_path: Path
) -> None:
    api = client(ollama_sim)
    digest = await api.create_blob(make_gguf(tmp_path / "model.gguf", context_length=8192))

    statuses = [s.status async for s in await api.create(model="edge/qwen3:v2", files={"model.gguf": digest},
                                                          system="Be brief.", parameters={"temperature": 0.7},
                                                          stream=True)]  # fmt: skip

    assert statuses[0] == "parsing GGUF" and statuses[-2:] == ["writing manifest", "success"]
    listed = {m.model: m for m in (await api.list()).models}
    assert "edge/qwen3:v2" in listed and listed["edge/qwen3:v2"].digest
    shown = await api.show("edge/qwen3:v2")
    assert shown.modelinfo and shown.modelinfo["qwen3.context_length"] == 8192
    assert shown.capabilities == ["completion", "tools", "thinking"]
    assert shown.parameters and "0.7" in shown.parameters
    assert (await api.chat(model="edge/qwen3:v2", messages=HI)).message.content


async def test_create_with_a_missing_blob_fails(ollama_sim: OllamaSimulator) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client(ollama_sim).create(model="broken:v1", files={"weights": "sha256:" + "b" * 64})

    assert err.value.status_code == 400
    assert "blob not found" in err.value.error


async def test_create_of_a_missing_gguf_reports_the_error_in_the_stream(ollama_sim: OllamaSimulator) -> None:
    stream = await client(ollama_sim).create(
        model="broken:v1", files={"m.gguf": "sha256:" + "b" * 64}, stream=True
    )

    with pytest.raises(ollama.ResponseError) as err:
        _ = [s async for s in stream]

    assert err.value.status_code == -1


async def test_create_from_an_existing_model_changes_its_settings(ollama_sim: OllamaSimulator) -> None:
    result = await client(ollama_sim).create(model="terse:v1", from_=QWEN, system="Answer in one word.")

    assert result.status == "success"
    shown = await client(ollama_sim).show("terse:v1")
    assert shown.modelfile and 'SYSTEM """Answer in one word."""' in shown.modelfile


# -- faults and the queue --------------------------------------------------------------------


async def test_error_rate_one_answers_every_request_with_the_status(ollama_sim: OllamaSimulator) -> None:
    from simulators import Faults

    ollama_sim.set_faults(Faults(error_rate=1.0, error_status=503))

    with pytest.raises(ollama.ResponseError) as err:
        await client(ollama_sim).chat(model=QWEN, messages=HI)

    assert err.value.status_code == 503
    assert err.value.error == "server busy, please try again.  maximum pending requests exceeded"


async def test_an_error_mid_stream_is_an_ndjson_error_line(ollama_sim: OllamaSimulator) -> None:
    from simulators import Faults

    ollama_sim.set_faults(Faults(error_after=3, error_message="runner crashed"))
    received = []

    with pytest.raises(ollama.ResponseError) as err:
        async for part in await client(ollama_sim).chat(model=QWEN, messages=HI, stream=True):
            received.append(part)

    assert err.value.status_code == -1
    assert err.value.error == "runner crashed"
    assert len(received) == 3


async def test_a_disconnect_mid_stream_cuts_the_connection(ollama_sim: OllamaSimulator) -> None:
    from simulators import Faults

    ollama_sim.set_faults(Faults(disconnect_after=2))
    received = []

    with pytest.raises(httpx.RemoteProtocolError):
        async for part in await client(ollama_sim).chat(model=QWEN, messages=HI, stream=True):
            received.append(part)

    assert len(received) == 2


async def test_a_hung_server_times_the_client_out(ollama_sim: OllamaSimulator) -> None:
    from simulators import Faults

    ollama_sim.set_faults(Faults(hang=True))

    with pytest.raises(httpx.TimeoutException):
        await client(ollama_sim, timeout=0.3).chat(model=QWEN, messages=HI)


async def test_requests_beyond_the_queue_get_503() -> None:
    import asyncio

    async with OllamaSimulator(ollama_config(max_queue=1, time_to_first_token=60)) as sim:
        api = client(sim)
        running = asyncio.create_task(api.chat(model=QWEN, messages=HI))
        await until(lambda: sim.running == 1)
        queued = asyncio.create_task(api.chat(model=QWEN, messages=HI))
        await until(lambda: sim.waiting == 1)

        with pytest.raises(ollama.ResponseError) as err:
            await api.chat(model=QWEN, messages=HI)

        for task in (running, queued):
            task.cancel()
    assert err.value.status_code == 503
    assert err.value.error == "server busy, please try again.  maximum pending requests exceeded"


async def test_the_request_log_keeps_the_bodies_sent(ollama_sim: OllamaSimulator) -> None:
    await client(ollama_sim).chat(model=QWEN, messages=HI, think=False, options={"temperature": 0.1})

    body = ollama_sim.requests[-1]
    assert body["model"] == QWEN and body["think"] is False and body["options"] == {"temperature": 0.1}


async def test_a_restarted_server_keeps_created_models_but_has_nothing_loaded() -> None:
    sim = OllamaSimulator(ollama_config())
    await sim.start()
    try:
        await client(sim).copy(QWEN, "kept:v1")
        await client(sim).chat(model=QWEN, messages=HI)
        await sim.stop()
        await sim.start()

        names = [m.model for m in (await client(sim).list()).models]
        loaded = (await client(sim).ps()).models
    finally:
        await sim.stop()

    assert "kept:v1" in names
    assert loaded == []
