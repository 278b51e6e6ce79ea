"""A batch whose 24 h window passes ends `expired`: what ran is in its output, every line that
did not run is in its error file with code batch_expired."""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis

from gateway.state.tenants import RedisTenants
from tests.batch.conftest import REDIS_URL, StartGateway, jsonl, new_key, request_line, sdk
from tests.batch.test_api import wait_done


async def test_a_batch_past_its_window_expires_naming_every_unrun_line(
    start_gateway: StartGateway, tenants: RedisTenants, prefix: str
) -> None:
    gateway = await start_gateway(batch={"reserve_slots": 1000})  # no slot to spare: nothing runs
    key = await new_key(tenants, "acme")
    async with sdk(gateway, key) as client:
        uploaded = await client.files.create(
            file=("in.jsonl", jsonl([request_line(f"l{i}") for i in range(4)])), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.expires_at == batch.created_at + 24 * 3600
        # A day passes (the record's own deadline is moved, as the clock would move it).
        redis = aioredis.Redis.from_url(REDIS_URL)
        await redis.hset(f"{prefix}{{batch}}:job:{batch.id}", "expires_at", str(int(time.time()) - 1))
        await redis.aclose()
        done = await wait_done(client, batch.id)
        assert done.status == "expired"
        assert done.expired_at is not None
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (0, 4)
        assert done.output_file_id is None and done.error_file_id is not None
        errors = [
            json.loads(line) for line in (await client.files.content(done.error_file_id)).text.splitlines()
        ]
    assert [e["custom_id"] for e in errors] == [f"l{i}" for i in range(4)]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert all(e["response"] is None for e in errors)
