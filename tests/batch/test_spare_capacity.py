"""Batch lines run on spare capacity only: a share of the pool's endpoint concurrency, none
while interactive traffic is high; and the backlog counts in the pool's demand metric."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.server import GatewayServer
from gateway.state.tenants import RedisTenants
from simulators.vllm import VllmSimulator
from tests.batch.conftest import StartGateway, jsonl, new_key, paced_engines, request_line, sdk, until
from tests.batch.test_api import wait_done

# gateway_config gives each of the two endpoints max_concurrency 32: the pool's capacity is 64.
CAPACITY = 64


@pytest.fixture
async def engines() -> AsyncIterator[list[VllmSimulator]]:
    """Two engines answering 10 tokens at 20 tokens/s: a request takes about half a second."""
    async with paced_engines(output_tokens=10, tokens_per_second=20) as sims:
        yield sims


async def submit(gateway: GatewayServer, key: str, n: int) -> str:
    async with sdk(gateway, key) as client:
        uploaded = await client.files.create(
            file=("in.jsonl", jsonl([request_line(f"l{i}") for i in range(n)])), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        return batch.id


@pytest.mark.parametrize(
    ("share", "reserve", "most"),
    [(0.1, 0, 6), (1.0, 60, 4)],  # the pool's share: 6 of 64 slots; the last 60 free slots kept
    ids=["share", "reserve"],
)
async def test_batch_lines_in_flight_stay_within_the_share_and_off_the_last_slots(
    start_gateway: StartGateway,
    tenants: RedisTenants,
    engines: list[VllmSimulator],
    share: float,
    reserve: int,
    most: int,
) -> None:
    gateway = await start_gateway(batch={"share": share, "reserve_slots": reserve})
    key = await new_key(tenants, "acme")
    batch_id = await submit(gateway, key, 30)
    peak = 0
    async with sdk(gateway, key) as client:
        done_task = asyncio.ensure_future(wait_done(client, batch_id))
        while not done_task.done():
            peak = max(peak, sum(e.running for e in engines))
            await asyncio.sleep(0.005)
        done = done_task.result()
    assert done.status == "completed"
    assert 2 <= peak <= most


async def test_batch_lines_wait_while_interactive_traffic_is_high(
    start_gateway: StartGateway, tenants: RedisTenants, engines: list[VllmSimulator]
) -> None:
    # Interactive requests filling a quarter of the pool hold every batch line back.
    gateway = await start_gateway(batch={"backoff_at": 0.25, "backoff_seconds": 0.5})
    key = await new_key(tenants, "acme")
    url = f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions"
    body = {"model": "qwen3", "messages": [{"role": "user", "content": "hi /no_think"}]}
    busy = asyncio.Event()
    stop = asyncio.Event()

    async def interactive(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 200
                await r.read()
            busy.set()

    async with aiohttp.ClientSession() as session:
        users = [asyncio.ensure_future(interactive(session)) for _ in range(20)]
        await asyncio.sleep(0.1)
        batch_id = await submit(gateway, key, 10)
        async with sdk(gateway, key) as client:
            for _ in range(20):  # two seconds of high interactive traffic
                await asyncio.sleep(0.1)
                counts = (await client.batches.retrieve(batch_id)).request_counts
                assert counts is not None and counts.completed == 0
                assert sum(e.running for e in engines) <= 20
            stop.set()
            await asyncio.gather(*users)
            done = await wait_done(client, batch_id)
    assert busy.is_set()
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == 10


def demand(page: str) -> float:
    match = re.search(r'^tandem_pool_demand\{pool="qwen3"\} (\S+)$', page, re.M)
    assert match, "tandem_pool_demand is missing"
    return float(match.group(1))


async def test_the_backlog_counts_in_the_pools_demand_until_the_batch_ends(
    start_gateway: StartGateway, tenants: RedisTenants
) -> None:
    # No slot to spare: the lines wait, and the pool's demand says so (an autoscaler scales on it).
    gateway = await start_gateway(batch={"reserve_slots": 1000})
    key = await new_key(tenants, "acme")
    metrics = f"http://127.0.0.1:{gateway.http_port}/metrics"
    async with aiohttp.ClientSession() as session:

        async def current() -> float:
            async with session.get(metrics) as r:
                return demand(await r.text())

        async def is_demand(value: float) -> bool:
            return await current() == value

        assert await current() == 0
        batch_id = await submit(gateway, key, 25)
        await until(lambda: is_demand(25))
        async with sdk(gateway, key) as client:
            await client.batches.cancel(batch_id)
            assert (await wait_done(client, batch_id)).status == "cancelled"
        await until(lambda: is_demand(0))


async def test_a_batch_ramps_up_at_its_start_rate(
    start_gateway: StartGateway, tenants: RedisTenants, engines: list[VllmSimulator]
) -> None:
    # 4 starts a second, lines of half a second: about 2 run at once (all 20 could, by share).
    gateway = await start_gateway(batch={"share": 1.0, "reserve_slots": 0, "start_rate": 4})
    key = await new_key(tenants, "acme")
    batch_id = await submit(gateway, key, 20)
    peak = 0
    async with sdk(gateway, key) as client:
        done_task = asyncio.ensure_future(wait_done(client, batch_id))
        while not done_task.done():
            peak = max(peak, sum(e.running for e in engines))
            await asyncio.sleep(0.005)
    assert done_task.result().status == "completed"
    assert 1 <= peak <= 5
