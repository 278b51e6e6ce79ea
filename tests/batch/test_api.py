"""The Batch API as the official `openai` SDK calls it: upload, create, wait, read the output."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from openai import AsyncOpenAI
from openai.types import Batch

from gateway.state.tenants import RedisTenants
from tests.batch.conftest import StartGateway, jsonl, new_key, request_line, sdk


async def wait_done(client: AsyncOpenAI, batch_id: str, timeout_s: float = 60) -> Batch:
    async with asyncio.timeout(timeout_s):
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "cancelled", "expired"):
                return batch
            await asyncio.sleep(0.1)


async def test_a_batch_runs_every_line_and_the_output_carries_each_route(
    start_gateway: StartGateway, tenants: RedisTenants
) -> None:
    gateway = await start_gateway()
    key = await new_key(tenants, "acme")
    lines = [request_line(f"quick-{i}") for i in range(6)]
    lines += [request_line(f"deep-{i}", "Prove it step by step.", reasoning_effort="high") for i in range(4)]
    async with sdk(gateway, key) as client:
        uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        assert (uploaded.object, uploaded.purpose, uploaded.bytes) == ("file", "batch", len(jsonl(lines)))
        assert (await client.files.retrieve(uploaded.id)).filename == "in.jsonl"
        batch = await client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"job": "friday-docs"},
        )
        assert batch.status in ("validating", "in_progress")
        assert batch.metadata == {"job": "friday-docs"}
        done = await wait_done(client, batch.id)
        assert done.status == "completed"
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
            10,
            10,
            0,
        )
        assert done.output_file_id is not None and done.error_file_id is None
        assert done.completed_at is not None and done.in_progress_at is not None
        output = (await client.files.content(done.output_file_id)).text
        with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch with status 'completed'"):
            await client.batches.cancel(batch.id)
    results = [json.loads(line) for line in output.splitlines()]
    assert [r["custom_id"] for r in results] == [f"quick-{i}" for i in range(6)] + [
        f"deep-{i}" for i in range(4)
    ]
    for r in results:
        assert r["error"] is None
        assert r["response"]["status_code"] == 200
        assert r["response"]["body"]["object"] == "chat.completion"
        assert r["response"]["body"]["choices"][0]["message"]["content"]
    modes = {r["custom_id"]: r["response"]["route"]["mode"] for r in results}
    assert {modes[f"quick-{i}"] for i in range(6)} == {"non_thinking"}
    assert {modes[f"deep-{i}"] for i in range(4)} == {"thinking"}
    assert {r["response"]["route"]["pool"] for r in results} == {"qwen3"}


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}', "line 2: url must be"),
        (
            '{"custom_id": "", "method": "POST", "url": "/v1/chat/completions", "body": {}}',
            "line 2: custom_id",
        ),
        (request_line("x", max_tokens=-3), "line 2: body: invalid field 'max_tokens'"),
        (request_line("first"), "line 2: custom_id 'first' is used twice"),
    ],
)
async def test_a_file_with_a_bad_line_is_refused_naming_the_line(
    start_gateway: StartGateway, tenants: RedisTenants, line: str, named: str
) -> None:
    gateway = await start_gateway()
    key = await new_key(tenants, "acme")
    async with sdk(gateway, key) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.files.create(
                file=("in.jsonl", jsonl([request_line("first"), line])), purpose="batch"
            )
    assert named in caught.value.message


async def test_a_file_over_the_size_limit_is_refused_with_413(
    start_gateway: StartGateway, tenants: RedisTenants
) -> None:
    gateway = await start_gateway(batch={"max_file_bytes": 4096})
    key = await new_key(tenants, "acme")
    big = jsonl([request_line(f"l{i}") for i in range(60)])
    assert len(big) > 4096
    async with sdk(gateway, key) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.files.create(file=("in.jsonl", big), purpose="batch")
    assert caught.value.status_code == 413
    assert "batch.max_file_bytes" in caught.value.message


async def test_a_line_for_a_model_the_tenant_may_not_use_fails_the_batch_naming_the_line(
    start_gateway: StartGateway, tenants: RedisTenants
) -> None:
    gateway = await start_gateway()
    key = await new_key(tenants, "narrow", models=frozenset({"qwen3"}))
    lines = [request_line("ok"), request_line("other").replace('"qwen3"', '"qwen3-32b"')]
    async with sdk(gateway, key) as client:
        uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data
    assert batch.errors.data[0].line == 2
    assert "qwen3-32b" in (batch.errors.data[0].message or "")


async def test_batch_arguments_other_than_openai_allows_are_refused(
    start_gateway: StartGateway, tenants: RedisTenants
) -> None:
    gateway = await start_gateway()
    key = await new_key(tenants, "acme")
    async with sdk(gateway, key) as client:
        uploaded = await client.files.create(file=("in.jsonl", jsonl([request_line("a")])), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="completion_window must be '24h'"):
            await client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="1h",  # type: ignore[arg-type]
            )
        with pytest.raises(openai.BadRequestError, match="endpoint must be"):
            await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
            )
        with pytest.raises(openai.NotFoundError):
            await client.batches.create(
                input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
            )


async def test_batches_list_pages_newest_first(start_gateway: StartGateway, tenants: RedisTenants) -> None:
    gateway = await start_gateway()
    key = await new_key(tenants, "acme")
    async with sdk(gateway, key) as client:
        uploaded = await client.files.create(file=("in.jsonl", jsonl([request_line("a")])), purpose="batch")
        made = []
        for _ in range(3):
            b = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            made.append(b.id)
        first = await client.batches.list(limit=2)
        assert [b.id for b in first.data] == [made[2], made[1]]
        assert first.has_more
        rest = await client.batches.list(limit=2, after=made[1])
        assert [b.id for b in rest.data] == [made[0]]
        assert not rest.has_more
        every = [b.id async for b in client.batches.list(limit=1)]
        assert every == made[::-1]


async def test_files_list_pages_the_callers_own_files_by_order_and_purpose(
    start_gateway: StartGateway, tenants: RedisTenants
) -> None:
    gateway = await start_gateway()
    acme, other = await new_key(tenants, "acme"), await new_key(tenants, "other")
    async with sdk(gateway, other) as client:
        theirs = await client.files.create(file=("theirs.jsonl", jsonl([request_line("x")])), purpose="batch")
    async with sdk(gateway, acme) as client:
        made = []
        for i in range(3):
            f = await client.files.create(
                file=(f"in-{i}.jsonl", jsonl([request_line(f"l{i}")])), purpose="batch"
            )
            made.append(f.id)
        batch = await client.batches.create(
            input_file_id=made[0], endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = await wait_done(client, batch.id)
        assert done.output_file_id is not None

        every = [f.id async for f in client.files.list()]  # the SDK pages on by itself
        assert every == [done.output_file_id, *made[::-1]]  # newest first; not the other tenant's
        assert theirs.id not in every
        first = await client.files.list(limit=2, order="asc")
        assert [f.id for f in first.data] == made[:2] and first.has_more
        rest = await client.files.list(limit=2, order="asc", after=made[1])
        assert [f.id for f in rest.data] == [made[2], done.output_file_id] and not rest.has_more
        inputs = await client.files.list(purpose="batch")
        assert [f.id for f in inputs.data] == made[::-1]
        outputs = await client.files.list(purpose="batch_output")
        assert [(f.id, f.filename) for f in outputs.data] == [(done.output_file_id, outputs.data[0].filename)]

        await client.files.delete(made[1])
        assert [f.id async for f in client.files.list(purpose="batch")] == [made[2], made[0]]
        with pytest.raises(openai.BadRequestError, match="limit must be a whole number"):
            await client.files.list(limit=0)
        with pytest.raises(openai.BadRequestError, match="order must be"):
            await client.files.list(order="sideways")  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            await client.files.list(after=theirs.id)  # another tenant's file is no cursor here


async def test_a_deleted_file_is_gone(start_gateway: StartGateway, tenants: RedisTenants) -> None:
    gateway = await start_gateway()
    key = await new_key(tenants, "acme")
    async with sdk(gateway, key) as client:
        uploaded = await client.files.create(file=("in.jsonl", jsonl([request_line("a")])), purpose="batch")
        deleted = await client.files.delete(uploaded.id)
        assert (deleted.id, deleted.deleted) == (uploaded.id, True)
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            await client.files.content(uploaded.id)


async def test_files_and_finished_batches_are_deleted_once_their_retention_has_passed(
    start_gateway: StartGateway, tenants: RedisTenants
) -> None:
    retention_s = 3.0
    gateway = await start_gateway(batch={"retention_days": retention_s / 86400})
    key = await new_key(tenants, "acme")
    async with sdk(gateway, key) as client:
        uploaded = await client.files.create(file=("in.jsonl", jsonl([request_line("a")])), purpose="batch")
        assert uploaded.expires_at == uploaded.created_at + int(retention_s)
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = await wait_done(client, batch.id)
        assert done.status == "completed" and done.output_file_id is not None
        # Still there right after it finished: the retention counts from the end.
        assert (await client.batches.retrieve(batch.id)).id == batch.id
        assert (await client.files.retrieve(done.output_file_id)).purpose == "batch_output"

        async with asyncio.timeout(30):  # the sweep (every 0.2 s here) deletes them after 3 s
            while True:
                if not [b.id async for b in client.batches.list()]:
                    break
                await asyncio.sleep(0.2)
        for gone in (uploaded.id, done.output_file_id):
            with pytest.raises(openai.NotFoundError):
                await client.files.retrieve(gone)
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve(batch.id)
        assert [f.id async for f in client.files.list()] == []
