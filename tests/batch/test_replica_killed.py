"""A gateway replica killed with SIGKILL in the middle of a batch loses nothing: the lines it
had claimed are run by the other replica after the idle timeout, and every custom_id appears
exactly once in the output (real `tandem gateway serve` processes)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from gateway.state.tenants import RedisTenants
from simulators.vllm import VllmSimulator
from tests.batch.conftest import REDIS_URL, jsonl, new_key, paced_engines, redis_section, request_line
from tests.gateway.conftest import CONTEXT, SERVED
from tests.gateway.test_drain import free_port, wait_ready

TANDEM = str(Path(sys.executable).with_name("tandem"))
LINES = 120


@pytest.fixture
async def engines() -> AsyncIterator[list[VllmSimulator]]:
    """Two engines answering 8 tokens at 40 tokens/s (a line takes about 0.2 s)."""
    async with paced_engines(output_tokens=8, tokens_per_second=40) as sims:
        yield sims


async def start_replica(
    tmp_path: Path, name: str, engines: list[VllmSimulator], prefix: str
) -> tuple[asyncio.subprocess.Process, str]:
    """A `tandem gateway serve` process; started again on other ports if one it was given was
    taken meanwhile (other processes on this machine pick free ports too)."""
    for attempt in range(3):
        http_port = free_port()
        config: dict[str, Any] = {
            "grpc": {"port": free_port()},
            "http": {"port": http_port},
            "pools": [
                {
                    "name": "qwen3",
                    "context_length": CONTEXT,
                    "endpoints": [
                        {"url": f"{e.url}/v1", "model": SERVED, "max_concurrency": 16} for e in engines
                    ],
                }
            ],
            "redis": redis_section(prefix),
            "auth": {"required": True, "cache_seconds": 0.5},
            "batch": {"claim_idle_seconds": 2, "sweep_seconds": 0.2, "poll_seconds": 0.02, "share": 0.25},
            "shutdown_grace_seconds": 2,
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        log_path = tmp_path / f"{name}-{attempt}.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                TANDEM, "gateway", "serve", "--config", str(path),
                env={**os.environ, "TANDEM_LOG_FORMAT": "json"}, stdout=log, stderr=log,
            )  # fmt: skip
        url = f"http://127.0.0.1:{http_port}"
        try:
            await wait_ready(url, proc)
            return proc, url
        except AssertionError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            output = log_path.read_text(errors="replace")
            if "address already in use" not in output.lower():
                raise AssertionError(f"{name} did not start:\n{output[-3000:]}") from None
    raise AssertionError(f"{name} found no free ports in 3 attempts")


async def consumers_with_lines(prefix: str, batch_id: str) -> dict[str, int]:
    """Lines claimed and not finished, per consumer (a consumer is `host-pid-random`)."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        info = await client.xpending(f"{prefix}{{batch}}:q:{batch_id}:qwen3", "workers")
        return {c["name"].decode(): int(c["pending"]) for c in info.get("consumers", [])}
    finally:
        await client.aclose()


@pytest.mark.timeout(180)
async def test_lines_of_a_replica_killed_mid_batch_run_elsewhere_and_appear_once(
    tmp_path: Path, engines: list[VllmSimulator], prefix: str, tenants: RedisTenants
) -> None:
    from openai import AsyncOpenAI

    key = await new_key(tenants, "acme")
    (victim, victim_url), (survivor, survivor_url) = await asyncio.gather(
        start_replica(tmp_path, "victim", engines, prefix),
        start_replica(tmp_path, "survivor", engines, prefix),
    )
    try:
        async with AsyncOpenAI(base_url=f"{victim_url}/v1", api_key=key, max_retries=0) as client:
            lines = [request_line(f"doc-{i}") for i in range(LINES)]
            uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            async with asyncio.timeout(60):  # both replicas are running lines
                while True:
                    owners = await consumers_with_lines(prefix, batch.id)
                    if any(f"-{victim.pid}-" in c and n for c, n in owners.items()) and len(owners) == 2:
                        break
                    await asyncio.sleep(0.02)
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            orphaned = sum(n for c, n in owners.items() if f"-{victim.pid}-" in c)
            assert orphaned > 0
        async with AsyncOpenAI(base_url=f"{survivor_url}/v1", api_key=key, max_retries=0) as client:
            async with asyncio.timeout(120):
                while (done := await client.batches.retrieve(batch.id)).status != "completed":
                    assert done.status == "in_progress" or done.status == "finalizing", done.status
                    await asyncio.sleep(0.2)
            assert done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
            assert done.output_file_id is not None
            output = (await client.files.content(done.output_file_id)).text
    finally:
        for proc in (victim, survivor):
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
    ids = [json.loads(line)["custom_id"] for line in output.splitlines()]
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(LINES))  # each once: none lost, none twice
