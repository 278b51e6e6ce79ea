"""The edge agent's HTTP listener limits, on both faces: compressed bodies only where configured
and capped while inflating, nothing inflated for a request that cannot succeed, request ids
that are safe to echo, and connections closed when idle or when their headers trickle."""

from __future__ import annotations

import asyncio
import gzip
import re
import zlib

import aiohttp
import orjson
import pytest

from edge_agent.server import EdgeServer
from tests.edge.conftest import LOCAL, StartEdge

CHAT = orjson.dumps({"model": LOCAL, "messages": [{"role": "user", "content": "hi"}], "think": False})
GZIP = {"listen": {"accepted_encodings": ["gzip"], "max_inflated_bytes": 1024 * 1024}}


def bomb(inflated_mib: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    return b"".join(c.compress(block) for _ in range(inflated_mib)) + c.flush()


async def post(edge: EdgeServer, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.post(f"{edge.url}{path}", data=data, headers=headers) as resp,
    ):
        return resp.status, await resp.read()


async def raw(edge: EdgeServer, request: bytes) -> bytes:
    """Sends `request` as it is and returns everything the agent writes until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
async def test_gzip_body_is_415_naming_the_encoding_by_default(edge: EdgeServer, path: str) -> None:
    status, body = await post(edge, path, gzip.compress(CHAT), {"Content-Encoding": "gzip"})
    assert status == 415 and b"'gzip'" in body


async def test_gzip_body_is_answered_when_configured(start_edge: StartEdge) -> None:
    edge = await start_edge(**GZIP)
    data = orjson.dumps({**orjson.loads(CHAT), "stream": False})
    status, body = await post(edge, "/api/chat", gzip.compress(data), {"Content-Encoding": "gzip"})
    assert status == 200 and orjson.loads(body)["message"]["content"]


async def test_gzip_header_on_a_plain_body_is_400_when_gzip_is_accepted(start_edge: StartEdge) -> None:
    edge = await start_edge(**GZIP)
    status, body = await post(edge, "/v1/chat/completions", b"{}", {"Content-Encoding": "gzip"})
    assert status == 400 and b"not valid gzip" in body


async def test_gzip_bomb_is_413_at_the_inflated_cap(start_edge: StartEdge) -> None:
    edge = await start_edge(**GZIP)
    status, body = await post(edge, "/api/chat", bomb(64), {"Content-Encoding": "gzip"})
    assert status == 413 and b"inflates to more than" in body


async def test_compressed_body_to_a_wrong_method_is_refused_without_being_inflated(edge: EdgeServer) -> None:
    # Pipelined behind it, a health check on the same connection: a body that is not gzip at all
    # leaves the connection usable only if nothing tried to inflate it.
    body = b"\x1f\x8b\x08 not gzip" * 1000
    reply = await raw(
        edge,
        b"PUT /api/chat HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )  # fmt: skip
    got = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]
    assert got == [405, 200]


async def test_request_id_that_is_not_utf8_is_replaced(edge: EdgeServer) -> None:
    data = orjson.dumps({**orjson.loads(CHAT), "stream": False})
    reply = await raw(
        edge,
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-request-id: \xff\r\n"
        b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data,
    )
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200") and b"\xff" not in head


async def test_connection_that_never_sends_a_request_is_closed(start_edge: StartEdge) -> None:
    edge = await start_edge(listen={"idle_timeout_seconds": 0.3})
    assert await raw(edge, b"") == b""


async def test_connection_whose_headers_trickle_is_closed(start_edge: StartEdge) -> None:
    edge = await start_edge(listen={"idle_timeout_seconds": 30, "header_timeout_seconds": 0.3})
    assert await raw(edge, b"POST /api/chat HTTP/1.1\r\nHost: x\r\n") == b""
