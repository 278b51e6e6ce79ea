"""A tenant sees only its own files and batches; without a key, nothing."""

from __future__ import annotations

import openai
import pytest

from gateway.state.tenants import RedisTenants
from tests.batch.conftest import StartGateway, jsonl, new_key, request_line, sdk
from tests.batch.test_api import wait_done


async def test_another_tenants_files_and_batches_do_not_exist_for_a_tenant(
    start_gateway: StartGateway, tenants: RedisTenants
) -> None:
    gateway = await start_gateway()
    owner, other = await new_key(tenants, "acme"), await new_key(tenants, "globex")
    async with sdk(gateway, owner) as mine, sdk(gateway, other) as theirs:
        uploaded = await mine.files.create(file=("in.jsonl", jsonl([request_line("a")])), purpose="batch")
        batch = await mine.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = await wait_done(mine, batch.id)
        assert done.output_file_id is not None
        for file_id in (uploaded.id, done.output_file_id):
            with pytest.raises(openai.NotFoundError):
                await theirs.files.retrieve(file_id)
            with pytest.raises(openai.NotFoundError):
                await theirs.files.content(file_id)
            with pytest.raises(openai.NotFoundError):
                await theirs.files.delete(file_id)
        with pytest.raises(openai.NotFoundError):
            await theirs.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            await theirs.batches.cancel(batch.id)
        with pytest.raises(openai.NotFoundError):  # nor may it run a batch over someone's file
            await theirs.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert (await theirs.batches.list()).data == []
        assert [b.id for b in (await mine.batches.list()).data] == [batch.id]
        assert (await mine.files.retrieve(uploaded.id)).id == uploaded.id  # still there for its owner


async def test_the_batch_api_needs_a_valid_key(start_gateway: StartGateway, tenants: RedisTenants) -> None:
    gateway = await start_gateway()
    async with sdk(gateway, "tdm-" + "x" * 43) as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.files.create(file=("in.jsonl", jsonl([request_line("a")])), purpose="batch")
        with pytest.raises(openai.AuthenticationError):
            await stranger.batches.list()


async def test_a_tenant_has_at_most_max_active_batches_unfinished(
    start_gateway: StartGateway, tenants: RedisTenants
) -> None:
    # Every slot reserved for interactive work: the first batch stays in progress.
    gateway = await start_gateway(batch={"max_active_batches": 1, "reserve_slots": 1000})
    key = await new_key(tenants, "acme")
    async with sdk(gateway, key) as client:
        uploaded = await client.files.create(file=("in.jsonl", jsonl([request_line("a")])), purpose="batch")
        first = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert (await client.batches.retrieve(first.id)).status == "in_progress"
        with pytest.raises(openai.RateLimitError, match=r"batch\.max_active_batches"):
            await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
