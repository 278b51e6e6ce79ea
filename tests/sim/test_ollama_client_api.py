"""The rest of Ollama's client API in the simulator, through the official `ollama` and `openai`
clients: embeddings (`/api/embed`, `/api/embeddings`, `/v1/embeddings`), load and unload
(an empty generate or chat), and OpenAI's legacy text completions (`/v1/completions`)."""

from __future__ import annotations

import math
from typing import Any

import httpx
import ollama
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError

from simulators import OllamaSimulator
from tests.sim.conftest import LLAMA, QWEN, ollama_config


def client(sim: OllamaSimulator) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=sim.url)


def openai(sim: OllamaSimulator) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="unused", max_retries=0)


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


async def loaded(sim: OllamaSimulator) -> list[str]:
    return [m.model or "" for m in (await client(sim).ps()).models]


# -- /api/embed ------------------------------------------------------------------------------


async def test_embed_gives_one_normalized_vector_per_input_of_the_models_width(
    ollama_sim: OllamaSimulator,
) -> None:
    reply = await client(ollama_sim).embed(model=QWEN, input=["why is the sky blue", "hello"])

    assert reply.model == QWEN
    assert [len(v) for v in reply.embeddings] == [5120, 5120]  # qwen3's embedding_length
    assert all(abs(norm(list(v)) - 1.0) < 1e-6 for v in reply.embeddings)
    assert reply.embeddings[0] != reply.embeddings[1]
    assert reply.prompt_eval_count and reply.prompt_eval_count >= 3
    assert reply.total_duration and reply.load_duration


async def test_embed_is_stable_and_dimensions_cut_and_renormalize(ollama_sim: OllamaSimulator) -> None:
    api = client(ollama_sim)
    full = (await api.embed(model=QWEN, input="same text")).embeddings[0]
    again = (await api.embed(model=QWEN, input="same text")).embeddings[0]
    cut = (await api.embed(model=QWEN, input="same text", dimensions=16)).embeddings[0]

    assert list(full) == list(again)
    assert len(cut) == 16 and abs(norm(list(cut)) - 1.0) < 1e-6
    assert cut[0] / full[0] == pytest.approx(cut[1] / full[1])  # the same direction, rescaled


async def test_embed_without_input_only_loads_the_model(ollama_sim: OllamaSimulator) -> None:
    async with httpx.AsyncClient(base_url=ollama_sim.url) as http:
        resp = await http.post("/api/embed", json={"model": LLAMA})

    assert resp.status_code == 200 and resp.json() == {"model": LLAMA, "embeddings": []}
    assert await loaded(ollama_sim) == [LLAMA]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"model": QWEN, "input": [1, 2]}, 400, "invalid input type"),
        ({"input": "x"}, 400, "model is required"),
        ({"model": "nope", "input": "x"}, 404, 'model "nope" not found, try pulling it first'),
        ({"model": QWEN, "input": "x", "keep_alive": "soon"}, 400, 'time: invalid duration "soon"'),
    ],
)
async def test_embed_refusals_are_ollamas(
    ollama_sim: OllamaSimulator, body: dict[str, Any], status: int, error: str
) -> None:
    async with httpx.AsyncClient(base_url=ollama_sim.url) as http:
        resp = await http.post("/api/embed", json=body)

    assert (resp.status_code, resp.json()) == (status, {"error": error})


async def test_embed_without_truncation_refuses_an_input_beyond_the_context() -> None:
    async with OllamaSimulator(ollama_config(num_ctx=8)) as sim:
        with pytest.raises(ollama.ResponseError) as refused:
            await client(sim).embed(model=QWEN, input="word " * 50, truncate=False)
        truncated = await client(sim).embed(model=QWEN, input="word " * 50)

    assert refused.value.status_code == 400 and "context length" in refused.value.error
    assert truncated.prompt_eval_count == 8


# -- /api/embeddings (the older API) -----------------------------------------------------------


async def test_embeddings_gives_the_raw_vector_and_an_empty_prompt_loads(ollama_sim: OllamaSimulator) -> None:
    api = client(ollama_sim)
    raw = (await api.embeddings(model=QWEN, prompt="same text")).embedding
    normalized = (await api.embed(model=QWEN, input="same text")).embeddings[0]
    empty = await api.embeddings(model=LLAMA, prompt="")

    assert len(raw) == 5120 and abs(norm(list(raw)) - 1.0) > 0.1  # not normalized
    assert [v / norm(list(raw)) for v in raw[:4]] == pytest.approx(list(normalized[:4]))
    assert list(empty.embedding) == [] and LLAMA in await loaded(ollama_sim)


# -- load and unload ---------------------------------------------------------------------------


async def test_an_empty_generate_loads_and_with_keep_alive_zero_unloads(ollama_sim: OllamaSimulator) -> None:
    api = client(ollama_sim)
    load = await api.generate(model=QWEN, prompt="")
    assert (load.done, load.done_reason, load.response) == (True, "load", "")
    assert await loaded(ollama_sim) == [QWEN]

    unload = await api.generate(model=QWEN, prompt="", keep_alive=0)

    assert (unload.done, unload.done_reason) == (True, "unload")
    assert await loaded(ollama_sim) == []


async def test_a_chat_without_messages_loads_and_unloads(ollama_sim: OllamaSimulator) -> None:
    api = client(ollama_sim)
    load = await api.chat(model=LLAMA, messages=[])
    assert (load.done_reason, load.message.role, load.message.content) == ("load", "assistant", "")
    assert await loaded(ollama_sim) == [LLAMA]

    unload = await api.chat(model=LLAMA, messages=[], keep_alive="0s")

    assert unload.done_reason == "unload" and await loaded(ollama_sim) == []


# -- /v1/embeddings ----------------------------------------------------------------------------


async def test_openai_embeddings_in_float_and_base64_agree_with_api_embed(
    ollama_sim: OllamaSimulator,
) -> None:
    native = (await client(ollama_sim).embed(model=QWEN, input=["a", "b"])).embeddings
    async with openai(ollama_sim) as oa:
        floats = await oa.embeddings.create(model=QWEN, input=["a", "b"], encoding_format="float")
        packed = await oa.embeddings.create(model=QWEN, input=["a", "b"])  # the SDK asks for base64

    assert [d.index for d in floats.data] == [0, 1] and floats.model == QWEN
    assert floats.data[0].embedding == pytest.approx(list(native[0]))
    assert packed.data[1].embedding == pytest.approx(list(native[1]), rel=1e-6)  # float32 on the wire
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0


async def test_openai_embeddings_refusals_are_openai_shaped(ollama_sim: OllamaSimulator) -> None:
    async with openai(ollama_sim) as oa:
        with pytest.raises(BadRequestError) as empty:
            await oa.embeddings.create(model=QWEN, input=[])
        with pytest.raises(NotFoundError) as unknown:
            await oa.embeddings.create(model="nope", input="x")

    assert empty.value.body == {
        "message": "invalid input",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert isinstance(unknown.value.body, dict) and unknown.value.body["type"] == "not_found_error"


# -- /v1/completions ---------------------------------------------------------------------------


async def test_openai_completion_is_a_generate_in_text_completion_shape(ollama_sim: OllamaSimulator) -> None:
    async with openai(ollama_sim) as oa:
        done = await oa.completions.create(model=LLAMA, prompt="Once upon a time")
        cut = await oa.completions.create(model=LLAMA, prompt="Once upon a time", max_tokens=3)

    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    assert done.system_fingerprint == "fp_ollama" and done.model == LLAMA
    assert done.choices[0].text and done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens == 8
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 3
    assert ollama_sim.requests[-1]["prompt"] == "Once upon a time"


async def test_openai_completion_stream_ends_with_finish_usage_and_done(ollama_sim: OllamaSimulator) -> None:
    async with openai(ollama_sim) as oa:
        stream = await oa.completions.create(
            model=QWEN, prompt="Once upon a time", stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]

    texts = [c.choices[0].text for c in chunks if c.choices]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    # A thinking model thinks (think is not settable here): its thinking lines carry no text.
    assert texts[:4] == ["", "", "", ""] and "".join(texts)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.completion_tokens == 12


async def test_openai_completion_refusals_are_openai_shaped(ollama_sim: OllamaSimulator) -> None:
    async with openai(ollama_sim) as oa:
        with pytest.raises(NotFoundError) as unknown:
            await oa.completions.create(model="nope", prompt="x")
        with pytest.raises(BadRequestError) as listed:
            await oa.completions.create(model=QWEN, prompt=["a", "b"])

    assert unknown.value.body == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    assert "prompt" in listed.value.message
