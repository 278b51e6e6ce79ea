"""What the gateway shows outside names no engine host or port: `/metrics` labels and the
route's `deployment` carry the pool and a digest of the endpoint's URL."""

from __future__ import annotations

import re

import aiohttp
from openai import AsyncOpenAI
from yarl import URL

from gateway.server import GatewayServer
from simulators.vllm import VllmSimulator
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc

FAST = [{"role": "user", "content": "Say hello. /no_think"}]


async def test_metrics_name_no_engine_address(
    client: AsyncOpenAI, gateway: GatewayServer, engines: list[VllmSimulator]
) -> None:
    engines[0].faults.error_rate = 1.0  # failures are counted per endpoint
    for _ in range(4):
        await client.chat.completions.create(model="qwen3", messages=FAST)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{gateway.http_port}/metrics") as resp,
    ):
        text = await resp.text()
    assert re.search(
        r'tandem_gateway_upstream_failures_total\{status="500",upstream="qwen3/[0-9a-f]{8}"\}', text
    )
    for engine in engines:
        port = str(URL(engine.url).port)
        assert f"_{port}" not in text and f":{port}" not in text


async def test_the_route_names_the_endpoint_by_its_digest(stub: gateway_pb2_grpc.GatewayStub) -> None:
    request = pb.ChatRequest(model="qwen3", messages=[pb.Message(role=pb.ROLE_USER, content="hi /no_think")])
    chunks = [chunk async for chunk in stub.Chat(request)]
    assert re.fullmatch(r"qwen3/[0-9a-f]{8}", chunks[-1].route.deployment)
