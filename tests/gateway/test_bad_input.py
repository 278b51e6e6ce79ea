"""Malformed, oversized or hostile input gets a 4xx naming the problem; the gateway keeps serving."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.server import GatewayServer


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
