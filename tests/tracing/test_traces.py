"""One trace across a real edge -> gateway -> engine request, recorded with the OpenTelemetry
SDK's in-memory exporter: the caller's `traceparent` is continued by the edge, carried over gRPC
metadata to the gateway and sent on to the engine; and with tracing off nothing is traced and
OpenTelemetry is not imported by the edge."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from edge_agent.config import EdgeConfig
from edge_agent.server import EdgeServer
from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from simulators.ollama import OllamaModel, OllamaSimConfig, OllamaSimulator
from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tandem.tracing import Tracing, TracingConfig

SERVED = "Qwen/Qwen3-14B"
LOCAL = "qwen3:14b"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"
THINK = [{"role": "user", "content": "Prove that the square root of 2 is irrational, step by step."}]
FAST = [{"role": "user", "content": "Say hello. /no_think"}]


@dataclass
class Stack:
    engine: VllmSimulator
    gateway: GatewayServer
    edge: EdgeServer
    spans: InMemorySpanExporter

    def by_name(self) -> dict[str, ReadableSpan]:
        return {s.name: s for s in self.spans.get_finished_spans()}

    async def ended(self, *names: str) -> dict[str, ReadableSpan]:
        """The finished spans once those named have ended: a server span ends after the
        handler returns, which can be just after the caller has read the last byte."""
        async with asyncio.timeout(10):
            while not set(names) <= set(self.by_name()):  # noqa: ASYNC110 (the exporter has no event)
                await asyncio.sleep(0.02)
        return self.by_name()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    spans = InMemorySpanExporter()
    engine = VllmSimulator(VllmSimConfig(models=[VllmModel(name=SERVED)], output_tokens=4))
    await engine.start()
    ollama = OllamaSimulator(OllamaSimConfig(models=[OllamaModel(name=LOCAL)], output_tokens=4))
    await ollama.start()
    gateway = GatewayServer(
        GatewayConfig.model_validate(
            {
                "grpc": {"port": 0},
                "http": {"port": 0},
                "auth": {"required": False},
                "pools": [{"name": "qwen3", "endpoints": [{"url": f"{engine.url}/v1", "model": SERVED}]}],
                "shutdown_grace_seconds": 0,
            }
        )
    )
    gateway.service.tracing = Tracing(None, "tandem-gateway", exporter=spans)
    await gateway.start()
    edge = EdgeServer(
        EdgeConfig.model_validate(
            {
                "listen": {"port": 0},
                "ollama": {"url": ollama.url, "model": LOCAL},
                "uplink": {"address": f"127.0.0.1:{gateway.grpc_port}", "models": {LOCAL: "qwen3"}},
                "edge_id": "edge-trace",
                "shutdown_grace_seconds": 0,
            }
        )
    )
    edge.service.tracing = Tracing(None, "tandem-edge", exporter=spans)
    await edge.start()
    yield Stack(engine, gateway, edge, spans)
    await edge.stop()
    await gateway.stop()
    await ollama.stop()
    await engine.stop()


async def _chat(port: int, messages: list[dict[str, str]], traceparent: str | None = CALLER) -> None:
    headers = {"traceparent": traceparent} if traceparent else {}
    body = {"model": LOCAL, "messages": messages, "stream": True}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        await resp.read()


async def test_a_forwarded_request_is_one_trace_from_the_caller_to_the_engine(stack: Stack) -> None:
    await _chat(stack.edge.port, THINK)
    expected = ("edge.request", "route.decide", "uplink.call", "gateway.request", "limits.admit",
                "pool.choose", "engine.attempt")  # fmt: skip
    spans = await stack.ended(*expected)
    assert {format(s.context.trace_id, "032x") for s in spans.values()} == {CALLER_TRACE}
    parent = {name: s.parent.span_id if s.parent else None for name, s in spans.items()}
    ids = {name: s.context.span_id for name, s in spans.items()}
    assert parent["edge.request"] == int(CALLER.split("-")[2], 16)  # the caller's span
    assert parent["uplink.call"] == ids["edge.request"]
    assert parent["gateway.request"] == ids["uplink.call"]  # carried in gRPC metadata
    assert parent["engine.attempt"] == ids["gateway.request"]
    assert parent["pool.choose"] == ids["gateway.request"]
    assert spans["gateway.request"].attributes is not None
    assert spans["gateway.request"].attributes["tandem.face"] == "grpc"
    assert str(spans["edge.request"].attributes["tandem.route"]).startswith("target=cloud")
    # The engine got the attempt's traceparent: vLLM's own spans would continue the trace.
    sent = stack.engine.traceparents[-1]
    assert sent is not None and sent.split("-")[1:3] == [CALLER_TRACE, format(ids["engine.attempt"], "016x")]
    # Every span of the stream ended after the answer's last byte (none left open).
    assert all(s.end_time is not None for s in spans.values())


async def test_a_local_request_has_an_ollama_call_and_no_gateway_spans(stack: Stack) -> None:
    await _chat(stack.edge.port, FAST, traceparent=None)
    names = set(await stack.ended("edge.request", "ollama.call"))
    assert {"edge.request", "route.decide", "ollama.call"} <= names
    assert not names & {"uplink.call", "gateway.request", "engine.attempt"}


async def test_an_engine_failure_marks_the_attempt_span_failed(stack: Stack) -> None:
    await stack.engine.stop()
    body = {"model": "qwen3", "messages": THINK}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{stack.gateway.http_port}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status >= 500
    await stack.ended("gateway.request")
    attempts = [s for s in stack.spans.get_finished_spans() if s.name == "engine.attempt"]
    assert attempts and all(not s.status.is_ok for s in attempts)
    request = next(s for s in stack.spans.get_finished_spans() if s.name == "gateway.request")
    assert request.attributes is not None and request.attributes["tandem.face"] == "http"
    assert not request.status.is_ok


def test_tracing_is_off_unless_an_endpoint_is_configured() -> None:
    assert not Tracing(TracingConfig(), "x").enabled
    assert Tracing(TracingConfig(otlp_endpoint="http://127.0.0.1:4318/v1/traces"), "x").enabled
    with pytest.raises(ValueError, match="http"):
        TracingConfig(otlp_endpoint="127.0.0.1:4317")


def test_with_tracing_off_the_edge_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, asyncio\n"
        "from edge_agent.config import EdgeConfig\n"
        "from edge_agent.server import EdgeServer\n"
        "EdgeServer(EdgeConfig())\n"
        "print(any(m.startswith('opentelemetry') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
