"""Malformed, oversized and hostile input: a 4xx in the face's own error shape that names the
problem, and the agent keeps serving."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ollama
import orjson
import pytest
from openai import AsyncOpenAI, BadRequestError

from edge_agent.server import EdgeServer
from tests.edge.conftest import LOCAL

HELLO: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def http(edge: EdgeServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=edge.url) as session:
        yield session


async def post(http: aiohttp.ClientSession, path: str, data: bytes) -> tuple[int, dict[str, object]]:
    async with http.post(path, data=data, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_ollama_chat_without_a_body_is_400(http: aiohttp.ClientSession) -> None:
    assert await post(http, "/api/chat", b"") == (400, {"error": "missing request body"})


async def test_ollama_chat_with_broken_json_names_the_problem(http: aiohttp.ClientSession) -> None:
    status, body = await post(http, "/api/chat", b'{"model": "qwen3:14b", "messages": [')
    assert status == 400 and "not valid JSON" in str(body["error"])


async def test_ollama_chat_without_a_model_says_so(http: aiohttp.ClientSession) -> None:
    assert await post(http, "/api/chat", b'{"messages": []}') == (400, {"error": "model is required"})


async def test_ollama_bad_think_value_names_the_field(ollama_client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        await ollama_client.chat(model=LOCAL, messages=HELLO, think="maximum")
    assert refused.value.status_code == 400 and "think" in refused.value.error


async def test_ollama_load_with_a_bad_keep_alive_names_it(http: aiohttp.ClientSession) -> None:
    # A generate without a prompt is a load (tests/edge/test_client_api.py); its keep_alive is read.
    status, body = await post(http, "/api/generate", b'{"model": "qwen3:14b", "keep_alive": "soon"}')
    assert status == 400 and "keep_alive" in str(body["error"])


async def test_openai_bad_field_names_the_field(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(BadRequestError) as refused:
        await openai_client.chat.completions.create(model=LOCAL, messages=HELLO, temperature=7)
    assert refused.value.status_code == 400 and "temperature" in refused.value.message


async def test_oversized_body_is_413_before_it_is_read(http: aiohttp.ClientSession) -> None:
    status, body = await post(http, "/v1/chat/completions", b"x" * (512 * 1024))
    assert status == 413 and "limit" in str(body["error"]["message"])  # type: ignore[index]


async def test_bad_mode_header_is_400(http: aiohttp.ClientSession) -> None:
    data = b'{"model": "qwen3:14b", "messages": [{"role": "user", "content": "hi"}]}'
    async with http.post("/api/chat", data=data, headers={"x-tandem-mode": "turbo"}) as resp:
        assert resp.status == 400 and "x-tandem-mode" in (await resp.json())["error"]


async def test_unknown_ollama_route_answers_in_ollama_shape(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/no-such-endpoint", data=b"{}") as resp:
        assert (
            resp.status == 404
            and "error" in await resp.json()
            and "/api/no-such-endpoint" in (await resp.json())["error"]
        )


async def test_wrong_method_answers_in_openai_shape(http: aiohttp.ClientSession) -> None:
    async with http.get("/v1/chat/completions") as resp:
        assert resp.status == 405 and (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_the_agent_keeps_serving_after_bad_input(
    http: aiohttp.ClientSession, ollama_client: ollama.AsyncClient
) -> None:
    for junk in (b"\xff\xfe", b"[]", b'{"model": 5}', b'{"model": "m", "messages": "x"}'):
        status, _ = await post(http, "/api/chat", junk)
        assert status == 400
    reply = await ollama_client.chat(model=LOCAL, messages=HELLO, think=False)
    assert reply.message.content


HUGE = 123456789012345678901234567890
OPENAI = "/v1/chat/completions"
OLLAMA = "/api/chat"


def body(path: str, content: Any = "hi", **fields: Any) -> bytes:
    """A chat body for the face at `path`; sampling fields go under `options` on Ollama."""
    base: dict[str, Any] = {"model": LOCAL, "messages": [{"role": "user", "content": content}]}
    # json, not orjson: the test sends integers beyond 64 bits.
    if path == OLLAMA:
        return json.dumps({**base, "stream": False, "options": fields} if fields else base).encode()
    return json.dumps({**base, **fields}).encode()


def message(status_body: tuple[int, dict[str, Any]]) -> tuple[int, str]:
    status, parsed = status_body
    err = parsed["error"]
    return status, err if isinstance(err, str) else err["message"]


async def post_json(http: aiohttp.ClientSession, path: str, data: bytes) -> tuple[int, str]:
    async with http.post(path, data=data, headers={"Content-Type": "application/json"}) as resp:
        return message((resp.status, await resp.json(content_type=None)))


@pytest.mark.parametrize("path", [OPENAI, OLLAMA])
@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"seed": HUGE}, "seed'"),
        ({"seed": -HUGE}, "seed'"),
        ({"top_k": HUGE}, "top_k'"),
        ({"temperature": -5}, "temperature'"),
        ({"top_p": 7}, "top_p'"),
    ],
)
async def test_out_of_range_sampling_is_400_naming_the_field(
    http: aiohttp.ClientSession, path: str, fields: dict[str, Any], fragment: str
) -> None:
    status, text = await post_json(http, path, body(path, **fields))
    assert status == 400 and fragment in text


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (body(OPENAI, [{"type": "text", "text": 5}]), "part 0 (text)"),
        (body(OPENAI, [{"type": "text", "text": None}]), "part 0 (text)"),
        (
            body(OPENAI, [{"type": "image_url", "image_url": "data:image/png;base64,AA"}]),
            "part 0 (image_url)",
        ),
        (body(OPENAI, tool_choice={"type": "function", "function": "f"}), "tool_choice"),
        (
            body(OPENAI, response_format={"type": "json_schema", "json_schema": {"schema": 5}}),
            "json_schema.schema",
        ),
        (body(OPENAI, n=2), "'n'"),
    ],
)
async def test_malformed_openai_field_is_400_naming_it(
    http: aiohttp.ClientSession, data: bytes, fragment: str
) -> None:
    status, text = await post_json(http, OPENAI, data)
    assert status == 400 and fragment in text


async def test_max_tokens_beyond_any_context_is_a_context_length_error_not_500(
    http: aiohttp.ClientSession,
) -> None:
    async with http.post(OPENAI, data=body(OPENAI, max_tokens=99999999999)) as resp:
        err = (await resp.json())["error"]
    assert resp.status == 400 and err["type"] == "context_length_exceeded" and "max_tokens" in err["message"]


async def test_num_predict_beyond_any_context_is_400_naming_it(http: aiohttp.ClientSession) -> None:
    status, text = await post_json(http, OLLAMA, body(OLLAMA, num_predict=99999999999))
    assert status == 400 and "options.num_predict" in text


async def test_ollama_format_with_a_huge_integer_is_400(http: aiohttp.ClientSession) -> None:
    data = orjson.dumps({"model": LOCAL, "messages": HELLO, "format": {"maxLength": 1}})
    status, text = await post_json(http, OLLAMA, data.replace(b":1}", b":" + str(HUGE).encode() + b"}"))
    assert status == 400 and "format" in text and "64 bits" in text
