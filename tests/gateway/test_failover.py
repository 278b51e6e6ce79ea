"""Faults in the cloud pool: retries before the first token, clear errors after it, cooldowns."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai import AsyncOpenAI

from gateway.server import GatewayServer
from simulators.faults import Faults
from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tests.gateway.conftest import CONTEXT, SERVED, StartGateway, gateway_config

PROMPT = [{"role": "user", "content": "Say hello. /no_think"}]


async def test_endpoint_killed_before_requests_is_routed_around(
    client: AsyncOpenAI, engines: list[VllmSimulator]
) -> None:
    await engines[0].stop()
    answers = await asyncio.gather(
        *[client.chat.completions.create(model="qwen3", messages=PROMPT) for _ in range(10)]
    )
    assert all(a.choices[0].message.content for a in answers)
    assert len(engines[1].requests) == 10


async def test_streams_are_routed_around_an_endpoint_failing_before_the_first_token(
    client: AsyncOpenAI, engines: list[VllmSimulator]
) -> None:
    engines[0].set_faults(Faults(error_rate=1.0, error_status=503))
    for _ in range(6):
        stream = await client.chat.completions.create(model="qwen3", messages=PROMPT, stream=True)
        text = "".join([ch.delta.content or "" async for c in stream for ch in c.choices])
        assert text


async def test_failing_endpoint_cools_down(
    gateway: GatewayServer, client: AsyncOpenAI, engines: list[VllmSimulator]
) -> None:
    engines[0].set_faults(Faults(error_rate=1.0, error_status=500))
    sent = 0
    # The choice is random: send until the endpoint has failed allowed_fails + 1 = 2 times.
    while len(engines[0].requests) < 2 and sent < 200:
        await client.chat.completions.create(model="qwen3", messages=PROMPT)
        sent += 1
    tried_while_failing = len(engines[0].requests)
    assert tried_while_failing == 2
    for _ in range(16):
        await client.chat.completions.create(model="qwen3", messages=PROMPT)
    # Once cooled down (allowed_fails=1, cooldown 30 s) the failing endpoint is not tried again.
    assert len(engines[0].requests) == tried_while_failing
    assert len(engines[1].requests) == sent + 16


async def test_endpoint_dying_mid_stream_ends_the_stream_with_an_error_event(
    gateway: GatewayServer, engines: list[VllmSimulator]
) -> None:
    for e in engines:
        e.set_faults(Faults(disconnect_after=3))
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions",
            json={"model": "qwen3", "messages": PROMPT, "stream": True},
        ) as resp,
    ):
        body = await resp.read()
    events = [e[len(b"data: ") :] for e in body.split(b"\n\n") if e.startswith(b"data: ")]
    assert resp.status == 200
    assert events[-1] == b"[DONE]"
    error = orjson.loads(events[-2])["error"]
    assert error["type"] == "upstream_error" and "mid-stream" in error["message"]


async def test_whole_pool_down_is_503_with_retry_hint(
    client: AsyncOpenAI, engines: list[VllmSimulator]
) -> None:
    for e in engines:
        await e.stop()
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(model="qwen3", messages=PROMPT)
    assert err.value.status_code == 503
    assert int(err.value.response.headers["retry-after"]) >= 1


async def test_fallback_pool_takes_over_when_a_pool_is_down(
    start_gateway: StartGateway, engines: list[VllmSimulator]
) -> None:
    pools = [
        {
            "name": "primary",
            "endpoints": [{"url": f"{engines[0].url}/v1", "model": "Qwen/Qwen3-14B"}],
            "fallbacks": ["backup"],
            "context_length": 4096,
        },
        {
            "name": "backup",
            "endpoints": [{"url": f"{engines[1].url}/v1", "model": "Qwen/Qwen3-14B"}],
            "context_length": 4096,
        },
    ]
    server = await start_gateway(pools=pools)
    await engines[0].stop()
    async with AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="x", max_retries=0
    ) as c:
        resp = await c.chat.completions.with_raw_response.create(model="primary", messages=PROMPT)
    assert resp.parse().choices[0].message.content
    assert len(engines[1].requests) == 1


async def test_over_the_in_flight_bound_is_429_with_retry_after(
    start_gateway: StartGateway, engines: list[VllmSimulator]
) -> None:
    for e in engines:
        e.set_faults(Faults(slow_start=1.0))
    server = await start_gateway(limits={"max_in_flight": 2, "retry_after_seconds": 2})
    async with AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="x", max_retries=0
    ) as c:
        results = await asyncio.gather(
            *[c.chat.completions.create(model="qwen3", messages=PROMPT) for _ in range(5)],
            return_exceptions=True,
        )
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(limited) == 3 and sum(not isinstance(r, Exception) for r in results) == 2
    assert limited[0].response.headers["retry-after"] == "2"
    assert "max_in_flight" in limited[0].message


@pytest.fixture
async def four_engines() -> AsyncIterator[list[VllmSimulator]]:
    sims = [
        VllmSimulator(
            VllmSimConfig(models=[VllmModel(name=SERVED, max_model_len=CONTEXT)], seed=i, output_tokens=4)
        )
        for i in range(4)
    ]
    for sim in sims:
        await sim.start()
    yield sims
    for sim in sims:
        await sim.stop()


async def send_in_turn(engines: list[VllmSimulator], count: int, **router: Any) -> int:
    """Sends `count` requests one after another through a gateway over `engines`; the failures."""
    server = GatewayServer(gateway_config([e.url for e in engines], router=router))
    await server.start()
    failed = 0
    try:
        async with AsyncOpenAI(
            base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="x", max_retries=0
        ) as c:
            for _ in range(count):
                try:
                    await c.chat.completions.create(model="qwen3", messages=PROMPT)
                except openai.APIStatusError:
                    failed += 1
    finally:
        await server.stop()
    return failed


async def test_retries_keep_the_callers_error_rate_far_below_the_engines(
    four_engines: list[VllmSimulator],
) -> None:
    random.seed(15)  # the balancer's picks; the engines' error draws are seeded by theirs
    for engine in four_engines:
        engine.set_faults(Faults(error_rate=0.3, error_status=500))
    # Cooldowns as eager as they come (allowed_fails=1, 30 s): still fewer than 1 in 5 fail.
    failed = await send_in_turn(four_engines, 100)
    assert failed < 20


async def test_in_an_outage_retries_add_no_more_than_the_retry_budget(
    four_engines: list[VllmSimulator],
) -> None:
    for engine in four_engines:
        engine.set_faults(Faults(error_rate=1.0, error_status=503))
    failed = await send_in_turn(
        four_engines, 100, cooldown_seconds=0, retry_budget_ratio=0.2, retry_budget_min_retries=5
    )
    assert failed == 100
    assert sum(len(e.requests) for e in four_engines) <= 100 + 20 + 5


async def test_cooldowns_never_empty_a_pool_that_still_answers(
    start_gateway: StartGateway, engines: list[VllmSimulator]
) -> None:
    server = await start_gateway(router={"allowed_fails": 0, "cooldown_seconds": 60})
    for engine in engines:
        engine.set_faults(Faults(error_rate=1.0, error_status=503))
    async with AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="x", max_retries=0
    ) as c:
        with pytest.raises(openai.APIStatusError):
            await c.chat.completions.create(model="qwen3", messages=PROMPT)
        assert [len(e.requests) for e in engines] == [1, 1]  # both cooling down now
        for engine in engines:
            engine.set_faults(Faults())
        answer = await c.chat.completions.create(model="qwen3", messages=PROMPT)
    assert answer.choices[0].message.content


async def test_a_hung_engine_holds_a_whole_answer_only_until_the_first_token_deadline(
    start_gateway: StartGateway, engines: list[VllmSimulator]
) -> None:
    engines[0].set_faults(Faults(hang=True))
    server = await start_gateway(router={"first_token_timeout_seconds": 0.5, "timeout_seconds": 120})
    async with AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="x", max_retries=0
    ) as c:
        while not engines[0].requests:
            # Far below timeout_seconds: the hung engine must be left after 0.5 s.
            async with asyncio.timeout(20):
                answer = await c.chat.completions.create(model="qwen3", messages=PROMPT)
            assert answer.choices[0].message.content
    assert engines[1].requests
