"""The metrics ops read: request duration by face and route for every face (HTTP streamed or
not, gRPC), tokens by where they ran, in flight per endpoint and pool, per-tenant series behind
a cap, and each edge's model version."""

from __future__ import annotations

import aiohttp
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.config import EdgeConfig
from edge_agent.service import EdgeService
from gateway.server import GatewayServer
from tandem.metrics import OTHER_TENANTS, Metrics
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc

FAST = [{"role": "user", "content": "Say hello. /no_think"}]


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
    ]


async def scrape(gateway: GatewayServer) -> list[tuple[str, dict[str, str], float]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{gateway.http_port}/metrics") as resp,
    ):
        return samples(await resp.text())


async def test_every_face_records_duration_and_tokens_by_route(
    client: AsyncOpenAI, gateway: GatewayServer, stub: gateway_pb2_grpc.GatewayStub
) -> None:
    await client.chat.completions.create(model="qwen3", messages=FAST)  # HTTP, not streamed
    request = pb.ChatRequest(model="qwen3", messages=[pb.Message(role=pb.ROLE_USER, content="hi /no_think")])
    _ = [chunk async for chunk in stub.Chat(request)]
    found = await scrape(gateway)

    counts = {
        labels["face"]: value
        for name, labels, value in found
        if name == "tandem_gateway_request_seconds_count" and labels["target"] == "cloud"
    }
    assert counts.get("http", 0) >= 1 and counts.get("grpc", 0) >= 1
    tokens = {
        labels["kind"]: value
        for name, labels, value in found
        if name == "tandem_gateway_tokens_total" and labels["pool"] == "qwen3"
    }
    assert tokens["prompt"] > 0 and tokens["completion"] > 0
    # Nothing is in flight any more, on any endpoint or pool.
    assert all(v == 0 for n, _, v in found if n == "tandem_gateway_upstream_in_flight")
    assert any(n == "tandem_gateway_upstream_in_flight" for n, _, _ in found)
    assert [v for n, labels, v in found if n == "tandem_pool_in_flight" and labels["pool"] == "qwen3"] == [0]


def test_tenants_beyond_the_cap_share_one_label() -> None:
    metrics = Metrics("t", max_tenants=2)
    assert [metrics.tenant(name) for name in ("a", "b", "c", "a", "d")] == [
        "a",
        "b",
        OTHER_TENANTS,
        "a",
        OTHER_TENANTS,
    ]
    metrics.answered("http", None, "401", tenant="c")
    metrics.answered("http", None, "401", tenant="d")
    found = samples(metrics.render().decode())
    assert ("t_tenant_requests_total", {"tenant": OTHER_TENANTS, "status": "401"}, 2.0) in found


def test_an_edge_exports_the_model_version_it_serves() -> None:
    service = EdgeService(EdgeConfig())
    service.served_versions = lambda: {"qwen3:14b": ("registry.local/qwen3:2026-12", "sha256:" + "ab" * 32)}
    found = samples(service.metrics.render().decode())
    labels = {
        "model": "qwen3:14b",
        "reference": "registry.local/qwen3:2026-12",
        "digest": "sha256:" + "ab" * 32,
    }
    assert ("tandem_edge_model_version", labels, 1.0) in found
