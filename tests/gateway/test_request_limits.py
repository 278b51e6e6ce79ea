"""The gateway's HTTP listener limits: compressed bodies only where configured and capped while
inflating, nothing inflated for a request that cannot succeed, request ids that are safe to
echo, and connections that are closed when they sit idle or trickle their headers."""

from __future__ import annotations

import asyncio
import gzip
import re
import zlib
from typing import Any

import aiohttp
import orjson

from gateway.server import GatewayServer
from gateway.state.tenants import key_digest
from tests.gateway.conftest import StartGateway

HELLO = orjson.dumps({"model": "qwen3", "messages": [{"role": "user", "content": "hi"}]})
KEY = "tdm-limits-test-key-0123456789abcdefghijklmnopqrstuvwxyz"
GZIP = {"http": {"accepted_encodings": ["gzip", "deflate"], "max_inflated_bytes": 1024 * 1024}}


def bomb(inflated_mib: int) -> bytes:
    """`inflated_mib` MiB of zeros, gzipped (about 1 KiB per MiB)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    return b"".join(c.compress(block) for _ in range(inflated_mib)) + c.flush()


async def post(
    gateway: GatewayServer, data: bytes, headers: dict[str, str], path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.post(
            f"http://127.0.0.1:{gateway.http_port}{path}",
            data=data,
            headers={"Content-Type": "application/json", **headers},
        ) as resp,
    ):
        return resp.status, await resp.json(), {k.lower(): v for k, v in resp.headers.items()}


async def raw(gateway: GatewayServer, request: bytes) -> bytes:
    """Sends `request` as it is and returns everything the server writes until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.http_port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


# --- compressed bodies ----------------------------------------------------------------------------


async def test_gzip_body_is_refused_with_415_naming_the_encoding_by_default(gateway: GatewayServer) -> None:
    status, err, _ = await post(gateway, gzip.compress(HELLO), {"Content-Encoding": "gzip"})
    assert status == 415 and "'gzip'" in err["error"]["message"]


async def test_gzip_header_on_a_plain_body_is_a_4xx_not_a_500(gateway: GatewayServer) -> None:
    status, err, _ = await post(gateway, b"{}", {"Content-Encoding": "gzip"})
    assert status == 415 and "gzip" in err["error"]["message"]


async def test_an_encoding_never_inflated_is_415(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(**GZIP)
    status, err, _ = await post(gateway, HELLO, {"Content-Encoding": "br"})
    assert status == 415 and "'br'" in err["error"]["message"]


async def test_gzip_body_is_answered_when_configured(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(**GZIP)
    status, body, _ = await post(gateway, gzip.compress(HELLO), {"Content-Encoding": "gzip"})
    assert status == 200 and body["choices"][0]["message"]["content"]


async def test_deflate_body_is_answered_when_configured(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(**GZIP)
    status, body, _ = await post(gateway, zlib.compress(HELLO), {"Content-Encoding": "deflate"})
    assert status == 200 and body["choices"][0]["message"]["content"]


async def test_gzip_header_on_a_plain_body_is_400_when_gzip_is_accepted(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(**GZIP)
    status, err, _ = await post(gateway, b"{}", {"Content-Encoding": "gzip"})
    assert status == 400 and "not valid gzip" in err["error"]["message"]


async def test_truncated_gzip_body_is_400(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(**GZIP)
    status, err, _ = await post(gateway, gzip.compress(HELLO)[:-12], {"Content-Encoding": "gzip"})
    assert status == 400 and "not complete gzip" in err["error"]["message"]


async def test_gzip_bomb_is_413_at_the_inflated_cap_and_the_gateway_keeps_serving(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(**GZIP)
    status, err, _ = await post(gateway, bomb(64), {"Content-Encoding": "gzip"})
    assert status == 413 and "inflates to more than" in err["error"]["message"]
    status, body, _ = await post(gateway, HELLO, {})
    assert status == 200 and body["choices"][0]["message"]["content"]


def refused_then_health(request_line: bytes, body: bytes, *, key: str = "") -> bytes:
    """Two pipelined requests on one connection: a compressed body that cannot be accepted,
    then a health check. The first is answered without its body being inflated: a body that
    is not gzip at all then leaves the connection usable (inflating it broke the connection)."""
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n" if key else b""
    return (
        request_line + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth
        + b"Content-Encoding: gzip\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )  # fmt: skip


NOT_GZIP = b"\x1f\x8b\x08 not gzip" * 1000


def statuses(reply: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]


async def test_compressed_body_without_a_key_is_refused_without_being_inflated(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(
        auth={"required": True, "tenants": [{"name": "t", "key_sha256": [key_digest(KEY)]}]}
    )
    reply = await raw(gateway, refused_then_health(b"POST /v1/chat/completions", NOT_GZIP))
    assert statuses(reply) == [401, 200]


async def test_compressed_body_to_an_unknown_path_is_refused_without_being_inflated(
    gateway: GatewayServer,
) -> None:
    reply = await raw(gateway, refused_then_health(b"POST /v1/nope", NOT_GZIP))
    assert statuses(reply) == [404, 200]


async def test_compressed_body_over_the_accepted_encodings_is_refused_without_being_inflated(
    gateway: GatewayServer,
) -> None:
    reply = await raw(gateway, refused_then_health(b"POST /v1/chat/completions", NOT_GZIP))
    assert statuses(reply) == [415, 200]


async def test_body_announced_over_the_limit_is_413_without_waiting_for_it(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(
        auth={"required": True, "tenants": [{"name": "t", "key_sha256": [key_digest(KEY)]}]}
    )
    # Headers that announce 1 GiB and no body at all: the answer comes without waiting for it.
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 1073741824\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.http_port)
    writer.write(head)
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 413")


# --- request ids -----------------------------------------------------------------------------------


async def test_request_id_that_is_not_utf8_is_replaced_by_a_new_one(gateway: GatewayServer) -> None:
    reply = await raw(
        gateway,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nx-request-id: \xff\xfe\r\n"
        b"Content-Length: " + str(len(HELLO)).encode() + b"\r\n\r\n" + HELLO,
    )
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200")
    rid = next(line for line in head.split(b"\r\n") if line.startswith(b"x-request-id:"))
    assert rid.split(b":", 1)[1].strip().isalnum()


async def test_request_id_that_is_too_long_is_replaced(gateway: GatewayServer) -> None:
    status, _, headers = await post(gateway, HELLO, {"x-request-id": "a" * 129})
    assert status == 200 and headers["x-request-id"] != "a" * 129


async def test_valid_request_id_is_kept(gateway: GatewayServer) -> None:
    status, _, headers = await post(gateway, HELLO, {"x-request-id": "job-7/step:2@box=a+b~c"})
    assert status == 200 and headers["x-request-id"] == "job-7/step:2@box=a+b~c"


# --- idle connections ------------------------------------------------------------------------------


async def test_connection_that_never_sends_a_request_is_closed(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(http={"idle_timeout_seconds": 0.3})
    assert await raw(gateway, b"") == b""  # closed by the server, no answer


async def test_connection_idle_after_a_request_is_closed(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(http={"idle_timeout_seconds": 0.3})
    reply = await raw(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b'{"status":"ok"}')


async def test_connection_whose_headers_trickle_is_closed(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(http={"idle_timeout_seconds": 30, "header_timeout_seconds": 0.3})
    assert await raw(gateway, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n") == b""


async def test_a_slow_handler_is_not_cut_by_the_header_timeout(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(http={"header_timeout_seconds": 0.05})
    status, body, _ = await post(gateway, HELLO, {})
    assert status == 200 and body["choices"][0]["message"]["content"]
