"""Cancelling a batch: no more of its lines start, the running ones finish, and it ends
`cancelled` with what completed in its output file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from gateway.batch.ops_source import ActiveBatches
from gateway.state.tenants import RedisTenants
from simulators.vllm import VllmSimulator
from tests.batch.conftest import StartGateway, jsonl, new_key, paced_engines, request_line, sdk, until
from tests.batch.test_api import wait_done


@pytest.fixture
async def engines() -> AsyncIterator[list[VllmSimulator]]:
    """Two engines answering 10 tokens at 40 tokens/s: a line takes about a quarter second."""
    async with paced_engines(output_tokens=10, tokens_per_second=40) as sims:
        yield sims


async def test_a_cancelled_batch_stops_and_keeps_what_completed(
    start_gateway: StartGateway, tenants: RedisTenants, engines: list[VllmSimulator]
) -> None:
    # Two lines at a time: 60 lines take about 8 s, so the cancel lands in the middle.
    capacity = {"share": 0.04, "reserve_slots": 0}
    gateway = await start_gateway(batch=capacity)
    key = await new_key(tenants, "acme")
    lines = [request_line(f"l{i}") for i in range(60)]
    async with sdk(gateway, key) as client:
        uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

        async def some_completed() -> bool:
            counts = (await client.batches.retrieve(batch.id)).request_counts
            return counts is not None and counts.completed >= 3

        await until(some_completed)
        cancelling = await client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled")
        assert cancelling.cancelling_at is not None
        done = await wait_done(client, batch.id)
        assert done.status == "cancelled"
        assert done.cancelled_at is not None
        counts = done.request_counts
        assert counts is not None and 3 <= counts.completed < 60 and counts.failed == 0
        assert done.output_file_id is not None
        output = (await client.files.content(done.output_file_id)).text
        ids = [json.loads(line)["custom_id"] for line in output.splitlines()]
        assert len(ids) == counts.completed == len(set(ids))
        served = sum(len(e.requests) for e in engines)
        assert served == counts.completed  # nothing ran after the cancel that is not in the output
        await asyncio.sleep(0.5)
        assert sum(len(e.requests) for e in engines) == served  # and nothing runs any more
        assert (await client.batches.cancel(batch.id)).status == "cancelled"  # cancelling again: a no-op


async def test_a_running_batch_shows_on_the_ops_page_with_its_progress(
    start_gateway: StartGateway, tenants: RedisTenants
) -> None:
    gateway = await start_gateway(batch={"share": 0.04, "reserve_slots": 0})
    key = await new_key(tenants, "acme")
    lines = [request_line(f"l{i}") for i in range(40)]
    async with sdk(gateway, key) as client:
        uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert gateway.batch is not None
        source = ActiveBatches(gateway.batch.batches.jobs)

        async def shown_in_progress() -> bool:
            shown = {b.id: b for b in await source.batches()}
            return batch.id in shown and shown[batch.id].completed >= 1 and shown[batch.id].total == 40

        await until(shown_in_progress)
        row = {b.id: b for b in await source.batches()}[batch.id]
        assert (row.tenant, row.status) == ("acme", "in_progress")
        await client.batches.cancel(batch.id)
        await wait_done(client, batch.id)
    assert batch.id not in {b.id for b in await source.batches()}  # finished: off the page
