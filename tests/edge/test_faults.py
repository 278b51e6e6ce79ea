"""The edge agent when its parts fail: the WAN to the gateway (cut loudly or silently, under
both policies, and back), the local Ollama (killed, hung, breaking off mid-stream), the cloud
pool. No request hangs; each gets an answer, a clear 503, or a stream ended by an error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from openai import AsyncOpenAI

from edge_agent.breaker import State
from edge_agent.server import EdgeServer
from simulators import Faults, OllamaSimulator
from tests.edge.conftest import (
    CLOUD,
    LOCAL,
    SLOW,
    TANDEM,
    Cloud,
    Process,
    Routes,
    StartEdge,
    ollama_config,
    parse_route,
    until,
)
from tests.edge.wan import WanProxy

HELLO: list[Any] = [{"role": "user", "content": "Say hello to the line supervisor."}]


async def breaker_becomes(edge: EdgeServer, state: State) -> None:
    breaker = edge.service.breaker
    while breaker.state is not state:
        await breaker.changed()


def client_for(edge: EdgeServer) -> tuple[ollama.AsyncClient, Routes]:
    routes = Routes()
    return ollama.AsyncClient(host=edge.url, event_hooks={"response": [routes.hook]}), routes


@pytest.fixture
def cloud_faults(cloud: Cloud) -> Iterator[Callable[..., None]]:
    """Sets faults on the fast cloud engine (its admin API); reset after the test."""

    def set_faults(**faults: object) -> None:
        httpx.post(f"{cloud.fast_url}/_sim/faults", json=faults).raise_for_status()

    yield set_faults
    httpx.post(f"{cloud.fast_url}/_sim/reset").raise_for_status()


# --- the WAN --------------------------------------------------------------------------------------


async def test_silent_wan_opens_the_breaker_and_degrade_serves_thinking_locally(
    start_edge: StartEdge, wan: WanProxy
) -> None:
    edge = await start_edge(policy={"wan_down": "degrade"})
    client, routes = client_for(edge)
    wan.blackhole()
    await breaker_becomes(edge, State.OPEN)
    reply = await client.chat(model=LOCAL, messages=HELLO, think=True)
    assert reply.message.thinking and reply.message.content
    assert routes.last == {"target": "edge", "mode": "thinking", "reason": "degraded"}


async def test_wan_coming_back_closes_the_breaker_and_thinking_goes_up_again(
    start_edge: StartEdge, wan: WanProxy
) -> None:
    edge = await start_edge()
    client, routes = client_for(edge)
    wan.blackhole()
    await breaker_becomes(edge, State.OPEN)
    wan.pass_through()
    await breaker_becomes(edge, State.CLOSED)
    await client.chat(model=LOCAL, messages=HELLO, think=True)
    assert routes.last == {"target": "cloud", "mode": "thinking", "reason": "explicit"}


async def test_dropped_wan_with_reject_policy_answers_503_with_a_retry_hint(
    start_edge: StartEdge, wan: WanProxy
) -> None:
    edge = await start_edge(policy={"wan_down": "reject"})
    wan.drop()
    await breaker_becomes(edge, State.OPEN)
    async with AsyncOpenAI(base_url=f"{edge.url}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model=CLOUD, messages=HELLO, reasoning_effort="high")
    assert refused.value.status_code == 503
    assert refused.value.response.headers["retry-after"] == "2"
    assert "gateway is unreachable" in refused.value.message


async def test_dropped_wan_recovers_when_the_link_returns(start_edge: StartEdge, wan: WanProxy) -> None:
    edge = await start_edge(policy={"wan_down": "reject"})
    client, routes = client_for(edge)
    wan.drop()
    await breaker_becomes(edge, State.OPEN)
    wan.pass_through()
    await breaker_becomes(edge, State.CLOSED)
    reply = await client.chat(model=LOCAL, messages=HELLO, think=True)
    assert reply.message.thinking and routes.last["target"] == "cloud"


async def test_non_thinking_work_stays_local_while_the_wan_is_down(
    start_edge: StartEdge, wan: WanProxy
) -> None:
    edge = await start_edge(policy={"wan_down": "reject"})
    client, routes = client_for(edge)
    wan.drop()
    await breaker_becomes(edge, State.OPEN)
    reply = await client.chat(model=LOCAL, messages=HELLO, think=False)
    assert reply.message.content and routes.last["target"] == "edge"


async def test_degrade_refuses_what_the_box_cannot_serve(start_edge: StartEdge, wan: WanProxy) -> None:
    edge = await start_edge(policy={"wan_down": "degrade"})
    client, _ = client_for(edge)
    wan.drop()
    await breaker_becomes(edge, State.OPEN)
    with pytest.raises(ollama.ResponseError) as refused:
        await client.chat(model="qwen3-32b", messages=HELLO, think=True)
    assert refused.value.status_code == 503
    assert "not served on this box" in refused.value.error


async def test_forwarded_stream_cut_by_a_silent_wan_ends_with_an_error_event(
    start_edge: StartEdge, wan: WanProxy
) -> None:
    edge = await start_edge()
    async with AsyncOpenAI(base_url=f"{edge.url}/v1", api_key="unused", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=SLOW, messages=HELLO, stream=True, reasoning_effort="high"
        )
        received = [await anext(stream)]
        wan.blackhole()
        with pytest.raises(openai.APIError, match="gateway stream broke off"):
            async for chunk in stream:
                received.append(chunk)
    assert edge.service.breaker.state is State.OPEN


async def test_forwarded_ollama_stream_cut_by_a_silent_wan_ends_with_an_error_line(
    start_edge: StartEdge, wan: WanProxy
) -> None:
    edge = await start_edge()
    client, _ = client_for(edge)
    stream = await client.chat(model=SLOW, messages=HELLO, think=True, stream=True)
    first = await anext(stream)
    assert first.message.thinking
    wan.blackhole()
    with pytest.raises(ollama.ResponseError, match="gateway stream broke off") as broken:
        async for _ in stream:
            pass
    assert broken.value.status_code == -1  # an error line under status 200, as Ollama sends it


async def test_request_waiting_on_a_silent_wan_is_degraded_not_left_hanging(
    start_edge: StartEdge, wan: WanProxy, cloud_faults: Callable[..., None]
) -> None:
    edge = await start_edge(policy={"wan_down": "degrade"})
    client, routes = client_for(edge)
    cloud_faults(slow_start=30)  # the cloud will not answer in this test's lifetime
    waiting = asyncio.create_task(client.chat(model=LOCAL, messages=HELLO, think=True))
    await until(lambda: edge.service.uplink.in_flight == 1 or waiting.done())
    wan.blackhole()
    reply = await waiting
    assert reply.message.thinking and reply.message.content
    assert routes.last == {"target": "edge", "mode": "thinking", "reason": "degraded"}


async def test_cloud_pool_down_degrades_like_a_cut_wan(
    ollama_client: ollama.AsyncClient, routes: Routes, cloud_faults: Callable[..., None]
) -> None:
    cloud_faults(dead=True)
    reply = await ollama_client.chat(model=LOCAL, messages=HELLO, think=True)
    assert reply.message.thinking
    assert routes.last == {"target": "edge", "mode": "thinking", "reason": "degraded"}


# --- the local Ollama -------------------------------------------------------------------------------


@pytest.fixture
async def ollama_process(tmp_path: Path) -> AsyncIterator[Callable[..., Process]]:
    """Starts `tandem sim ollama` processes (so a test can kill one outright)."""
    started: list[Process] = []

    def start(port: int = 0) -> Process:
        proc, _ = Process.start(
            [*TANDEM, "sim", "ollama", "--port", str(port), "--model", LOCAL, "--output-tokens", "8",
             "--reasoning-tokens", "4"],
            tmp_path / f"ollama-{len(started)}.log",
            r"listening on http://\S+",
        )  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def url_of(proc: Process) -> str:
    return proc.wait_for(r"listening on (http://\S+)").group(1)


async def test_killed_ollama_sends_non_thinking_work_to_the_gateway(
    start_edge: StartEdge, ollama_process: Callable[..., Process]
) -> None:
    engine = ollama_process()
    edge = await start_edge(ollama_url=url_of(engine), policy={"ollama_down": "forward"})
    client, routes = client_for(edge)
    engine.kill()
    reply = await client.chat(model=LOCAL, messages=HELLO, think=False)
    assert reply.message.content and not reply.message.thinking
    assert routes.last == {"target": "cloud", "mode": "non_thinking", "reason": "local_unavailable"}


async def test_killed_ollama_with_reject_policy_answers_503(
    start_edge: StartEdge, ollama_process: Callable[..., Process]
) -> None:
    engine = ollama_process()
    edge = await start_edge(ollama_url=url_of(engine), policy={"ollama_down": "reject"})
    client, _ = client_for(edge)
    engine.kill()
    with pytest.raises(ollama.ResponseError) as refused:
        await client.chat(model=LOCAL, messages=HELLO, think=False)
    assert refused.value.status_code == 503
    assert "local Ollama is unavailable" in refused.value.error


async def test_restarted_ollama_is_used_again(
    start_edge: StartEdge, ollama_process: Callable[..., Process]
) -> None:
    engine = ollama_process()
    url = url_of(engine)
    edge = await start_edge(ollama_url=url)
    client, routes = client_for(edge)
    engine.kill()
    await until(lambda: not edge.service.local.available)
    ollama_process(port=int(url.rsplit(":", 1)[1]))
    await until(lambda: edge.service.local.available)
    await client.chat(model=LOCAL, messages=HELLO, think=False)
    assert routes.last["target"] == "edge"


async def test_hung_ollama_is_given_up_and_the_request_forwarded(
    start_edge: StartEdge, local_ollama: OllamaSimulator
) -> None:
    edge = await start_edge(ollama={"first_token_timeout_seconds": 0.5})
    client, routes = client_for(edge)
    local_ollama.set_faults(Faults(hang=True))
    reply = await client.chat(model=LOCAL, messages=HELLO, think=False)
    assert reply.message.content
    assert routes.last == {"target": "cloud", "mode": "non_thinking", "reason": "local_unavailable"}


async def test_ollama_breaking_off_mid_stream_ends_the_stream_with_an_error(start_edge: StartEdge) -> None:
    faults = Faults(error_after=3, error_message="llama runner process has terminated")
    async with OllamaSimulator(ollama_config(tokens_per_second=50, faults=faults)) as paced:
        edge = await start_edge(ollama_url=paced.url)
        client, routes = client_for(edge)
        stream = await client.chat(model=LOCAL, messages=HELLO, think=False, stream=True)
        received = []
        with pytest.raises(ollama.ResponseError, match="runner process has terminated") as broken:
            async for part in stream:
                received.append(part.message.content)
    assert broken.value.status_code == -1 and len(received) == 3
    assert routes.last["target"] == "edge"


async def test_ollama_failing_before_the_first_token_is_not_the_callers_problem(
    openai_client: AsyncOpenAI, local_ollama: OllamaSimulator
) -> None:
    local_ollama.set_faults(Faults(error_rate=1.0, error_status=500))
    raw = await openai_client.chat.completions.with_raw_response.create(
        model=CLOUD, messages=HELLO, extra_body={"mode": "non_thinking"}
    )
    assert raw.parse().choices[0].message.content
    assert parse_route(raw.headers["x-tandem-route"])["reason"] == "local_unavailable"


async def test_a_key_the_gateway_refuses_is_a_401_not_a_dead_wan(start_edge: StartEdge) -> None:
    edge = await start_edge(uplink={"api_key_env": "TANDEM_TEST_NO_SUCH_KEY"})
    client, _ = client_for(edge)
    with pytest.raises(ollama.ResponseError) as refused:
        await client.chat(model=LOCAL, messages=HELLO, think=True)
    assert refused.value.status_code == 401 and "API key" in refused.value.error
    assert edge.service.breaker.state is State.CLOSED
