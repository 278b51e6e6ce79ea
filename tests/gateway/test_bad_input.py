"""Malformed, oversized or hostile input gets a 4xx naming the problem; the gateway keeps serving."""

from __future__ import annotations

from typing import Any

import aiohttp
import grpc
import orjson
import pytest

from gateway.server import GatewayServer
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc


async def post(
    gateway: GatewayServer,
    data: bytes,
    headers: dict[str, str] | None = None,
    path: str = "/v1/chat/completions",
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{gateway.http_port}{path}",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        ) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"", 400, "missing request body"),
        (b"{not json", 400, "not valid JSON"),
        (b'{"model": "qwen3"}', 400, "'messages'"),
        (b'{"model": "qwen3", "messages": []}', 400, "'messages'"),
        (b'{"model": "qwen3", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages.0.role"),
        (
            b'{"model": "qwen3", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            400,
            "'temperature'",
        ),
        (
            b'{"model": "qwen3", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
            400,
            "'max_tokens'",
        ),
        (b"[1, 2, 3]", 400, "invalid"),
    ],
)
async def test_malformed_body_is_400_naming_the_problem(
    gateway: GatewayServer, body: bytes, status: int, fragment: str
) -> None:
    got, err = await post(gateway, body)
    assert got == status
    assert fragment in err["error"]["message"]


async def test_oversized_body_is_413(gateway: GatewayServer) -> None:
    content = "x" * (300 * 1024)
    body = b'{"model": "qwen3", "messages": [{"role": "user", "content": "' + content.encode() + b'"}]}'
    status, err = await post(gateway, body)
    assert status == 413 and "limit" in err["error"]["message"]


async def test_bad_mode_header_is_400(gateway: GatewayServer) -> None:
    status, err = await post(
        gateway,
        b'{"model": "qwen3", "messages": [{"role": "user", "content": "x"}]}',
        {"x-tandem-mode": "turbo"},
    )
    assert status == 400 and "x-tandem-mode" in err["error"]["message"]


async def test_unknown_path_is_404_json(gateway: GatewayServer) -> None:
    status, err = await post(gateway, b"{}", path="/v1/nope")
    assert status == 404 and "error" in err


async def test_gateway_keeps_serving_after_bad_input(gateway: GatewayServer) -> None:
    for _ in range(3):
        await post(gateway, b"\xff\xfe garbage")
    status, body = await post(gateway, b'{"model": "qwen3", "messages": [{"role": "user", "content": "hi"}]}')
    assert status == 200 and body["choices"][0]["message"]["content"]


def chat(**fields: Any) -> bytes:
    return orjson.dumps({"model": "qwen3", "messages": [{"role": "user", "content": "hi"}], **fields})


def chat_with_content(content: Any) -> bytes:
    return orjson.dumps({"model": "qwen3", "messages": [{"role": "user", "content": content}]})


HUGE = b"123456789012345678901234567890"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (chat(seed=1).replace(b'"seed":1', b'"seed":' + HUGE), "'seed'"),
        (chat(seed=1).replace(b'"seed":1', b'"seed":-' + HUGE), "'seed'"),
        (chat(top_k=1).replace(b'"top_k":1', b'"top_k":' + HUGE), "'top_k'"),
        (chat(top_k=-2), "'top_k'"),
        (chat(n=100), "'n'"),
        (chat(temperature=-5), "'temperature'"),
        (chat(top_p=7), "'top_p'"),
        (chat(repetition_penalty=1).replace(b":1}", b":1e999}"), "'repetition_penalty'"),
        (chat_with_content([{"type": "text", "text": 5}]), "part 0 (text)"),
        (chat_with_content([{"type": "text", "text": None}]), "part 0 (text)"),
        (chat_with_content([{"type": "image_url", "image_url": "http://x/y.png"}]), "part 0 (image_url)"),
        (chat_with_content([{"text": "no type"}]), "part 0 needs a string 'type'"),
        (chat(tool_choice={"type": "function", "function": "f"}), "'tool_choice"),
        (chat(tool_choice="sometimes"), "'tool_choice'"),
        (
            chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}),
            "'response_format.json_schema.schema'",
        ),
        (chat(response_format={"type": "json_schema", "json_schema": 5}), "'response_format.json_schema'"),
        (
            chat(tools=[{"function": {"name": "f", "parameters": {"x": 1}}}]).replace(
                b'"x":1', b'"x":' + HUGE
            ),
            "64 bits",
        ),
        (chat(stream_options={"include_usage": "maybe"}), "'stream_options.include_usage'"),
    ],
)
async def test_malformed_field_is_400_naming_it_not_500(
    gateway: GatewayServer, body: bytes, fragment: str
) -> None:
    status, err = await post(gateway, body)
    assert status == 400 and fragment in err["error"]["message"], err


async def test_max_tokens_beyond_any_context_is_a_context_length_error(gateway: GatewayServer) -> None:
    status, err = await post(gateway, chat(max_tokens=99999999999))
    assert status == 400 and err["error"]["type"] == "context_length_exceeded"
    # OpenAI names this error in `code` (clients match on it), not the status.
    assert err["error"]["code"] == "context_length_exceeded" and "max_tokens" in err["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"n": 100}, "n"),
        ({"sampling": pb.Sampling(temperature=-5)}, "temperature"),
        ({"sampling": pb.Sampling(top_p=7)}, "top_p"),
        ({"sampling": pb.Sampling(min_p=float("nan"))}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tool_choice": pb.ToolChoice(mode="sometimes")}, "tool_choice"),
    ],
)
async def test_grpc_refuses_what_the_http_face_refuses(
    gateway: GatewayServer, stub: gateway_pb2_grpc.GatewayStub, fields: dict[str, Any], field: str
) -> None:
    request = pb.ChatRequest(model="qwen3", messages=[pb.Message(role=pb.ROLE_USER, content="hi")], **fields)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.Chat(request):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"'{field}'" in str(
        refused.value.details()
    )
