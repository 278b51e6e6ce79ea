"""The committed generated code must match the .proto contract."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

from tandem.v1 import gateway_pb2, gateway_pb2_grpc

# proto/ holds the contract and its build script, not an importable package.
_spec = importlib.util.spec_from_file_location(
    "proto_build", Path(__file__).parents[2] / "proto" / "build.py"
)
assert _spec and _spec.loader
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


def test_generated_code_is_current(tmp_path: Path) -> None:
    build.generate(tmp_path)
    for proto in build.PROTOS:
        stem = proto.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            fresh, committed = tmp_path / f"{stem}{suffix}", build.ROOT / f"{stem}{suffix}"
            assert filecmp.cmp(fresh, committed, shallow=False), (
                f"{committed} is stale against {proto}: run `python proto/build.py`"
            )


def test_contract_declares_the_gateway_service() -> None:
    service = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Chat", "Classify", "ListModels", "Heartbeat"}
    assert methods["Chat"].server_streaming and not methods["Classify"].server_streaming
    assert service.full_name == "tandem.v1.Gateway"
    assert hasattr(gateway_pb2_grpc, "GatewayStub")


def test_chunk_keeps_answer_reasoning_tools_usage_and_route_apart() -> None:
    chunk = gateway_pb2.ChatChunk(
        content="4",
        reasoning="2+2",
        tool_calls=[gateway_pb2.ToolCall(id="c1", name="f", arguments_json="{}")],
        finish_reason="stop",
        usage=gateway_pb2.Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
        route=gateway_pb2.RouteDecision(mode=gateway_pb2.MODE_THINKING, target="cloud", reason="explicit"),
    )
    back = gateway_pb2.ChatChunk.FromString(chunk.SerializeToString())
    assert (back.content, back.reasoning, back.tool_calls[0].name) == ("4", "2+2", "f")
    assert back.usage.total_tokens == 5 and back.route.reason == "explicit"


def test_request_carries_what_openai_and_ollama_requests_carry() -> None:
    fields = set(gateway_pb2.ChatRequest.DESCRIPTOR.fields_by_name)
    for needed in (
        "messages",
        "mode",
        "reasoning_effort",
        "sampling",
        "max_tokens",
        "stop",
        "response_format",
        "tools",
        "tool_choice",
        "tenant",
        "request_id",
        "metadata",
    ):
        assert needed in fields


def test_generated_code_imports_under_the_tandem_package() -> None:
    # `proto` is also proto-plus's top-level module; the contract must not claim that name.
    assert gateway_pb2.__name__ == "tandem.v1.gateway_pb2"
    assert gateway_pb2.DESCRIPTOR.name == "tandem/v1/gateway.proto"
