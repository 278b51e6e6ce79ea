"""The gateway's gRPC face: tandem.v1.Gateway, health and reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.server import GatewayServer
from simulators.vllm import VllmSimulator
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc
from tests.gateway.conftest import chat_requests


def request(text: str, **kwargs: object) -> pb.ChatRequest:
    return pb.ChatRequest(model="qwen3", messages=[pb.Message(role=pb.ROLE_USER, content=text)], **kwargs)


async def test_chat_streams_reasoning_and_answer_apart_and_ends_with_usage_and_route(
    stub: gateway_pb2_grpc.GatewayStub,
) -> None:
    call = stub.Chat(request("What is 2+2?", mode=pb.MODE_THINKING))
    chunks = [c async for c in call]
    reasoning = "".join(c.reasoning for c in chunks)
    content = "".join(c.content for c in chunks)
    last = chunks[-1]
    assert reasoning and content
    assert (
        last.route.reason == "explicit"
        and last.route.mode == pb.MODE_THINKING
        and last.route.target == "cloud"
    )
    assert last.usage.total_tokens > 0 and last.finish_reason == "stop"
    trailers = dict(await call.trailing_metadata())
    assert trailers["x-tandem-route"] == "target=cloud; mode=thinking; reason=explicit"


async def test_chat_sends_non_thinking_with_thinking_off(
    stub: gateway_pb2_grpc.GatewayStub, engines: list[VllmSimulator]
) -> None:
    chunks = [c async for c in stub.Chat(request("hello", mode=pb.MODE_NON_THINKING))]
    assert not any(c.reasoning for c in chunks)
    assert chat_requests(engines)[0]["chat_template_kwargs"] == {"enable_thinking": False}


async def test_classify_decides_without_running(
    stub: gateway_pb2_grpc.GatewayStub, engines: list[VllmSimulator]
) -> None:
    decision = await stub.Classify(request("Say hi /no_think"))
    assert decision.mode == pb.MODE_NON_THINKING and decision.reason == "soft_switch"
    assert decision.estimated_tokens > 0 and decision.pool == "qwen3"
    assert chat_requests(engines) == []


async def test_classify_returns_the_classifiers_terms(stub: gateway_pb2_grpc.GatewayStub) -> None:
    decision = await stub.Classify(request("Prove that the product of two odd integers is odd."))
    terms = decision.classifier
    assert decision.reason == "classifier" and decision.mode == pb.MODE_THINKING
    assert terms.rules > 0 and terms.model > 0 and terms.prefer == 0
    assert terms.rules + terms.model + terms.bias + terms.prefer > 0
    assert "proof" in terms.signals
    switched = await stub.Classify(request("Prove it /no_think"))
    assert not switched.HasField("classifier")  # the soft switch decided: no classifier terms


async def test_list_models(stub: gateway_pb2_grpc.GatewayStub) -> None:
    models = await stub.ListModels(pb.ListModelsRequest())
    assert [m.id for m in models.models] == ["qwen3", "qwen3-14b"]
    assert models.models[0].context_length == 4096 and "thinking" in models.models[0].capabilities


@pytest.mark.parametrize(
    ("req", "code"),
    [
        (pb.ChatRequest(model="qwen3"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.ChatRequest(messages=[pb.Message(role=pb.ROLE_USER, content="x")]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.ChatRequest(model="nope", messages=[pb.Message(role=pb.ROLE_USER, content="x")]),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            pb.ChatRequest(model="qwen3", messages=[pb.Message(content="no role")]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (request("word " * 5000, max_tokens=10), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_requests_get_the_matching_status(
    stub: gateway_pb2_grpc.GatewayStub, req: pb.ChatRequest, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [c async for c in stub.Chat(req)]
    assert err.value.code() == code and err.value.details()


async def test_pool_down_is_unavailable_with_retry_hint(
    stub: gateway_pb2_grpc.GatewayStub, engines: list[VllmSimulator]
) -> None:
    for e in engines:
        await e.stop()
    call = stub.Chat(request("hello /no_think"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [c async for c in call]
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(err.value.trailing_metadata() or ())["retry-after"]


async def test_health_service_reports_serving(gateway: GatewayServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        resp = await health.Check(health_pb2.HealthCheckRequest(service="tandem.v1.Gateway"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_gateway_service(gateway: GatewayServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for r in responses for s in r.list_services_response.service]
    assert "tandem.v1.Gateway" in names and "grpc.health.v1.Health" in names


async def test_heartbeat_is_recorded_and_answered(
    stub: gateway_pb2_grpc.GatewayStub, gateway: GatewayServer
) -> None:
    resp = await stub.Heartbeat(
        pb.HeartbeatRequest(
            edge_id="box-1",
            group="line-a",
            healthy=True,
            models=[pb.ServedModel(name="qwen3:14b", digest="sha256:ab")],
        )
    )
    assert resp.interval_seconds > 0 and resp.desired_reference == ""
    (edge,) = await gateway.fleet.edges()
    assert (edge.edge_id, edge.group, edge.models[0].name) == ("box-1", "line-a", "qwen3:14b")
