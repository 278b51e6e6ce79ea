"""A gateway without Redis has nowhere to keep batches: its batch routes say so (400), rather
than a bare 404."""

from __future__ import annotations

import openai
import pytest

from gateway.server import GatewayServer
from simulators.vllm import VllmSimulator
from tests.batch.conftest import jsonl, request_line, sdk
from tests.gateway.conftest import gateway_config


async def test_the_batch_api_without_redis_answers_that_it_needs_redis(engines: list[VllmSimulator]) -> None:
    gateway = GatewayServer(gateway_config([e.url for e in engines]))
    await gateway.start()
    try:
        async with sdk(gateway, "unused") as client:
            with pytest.raises(openai.BadRequestError, match=r"needs shared state: set redis\.url"):
                await client.files.create(file=("in.jsonl", jsonl([request_line("a")])), purpose="batch")
            with pytest.raises(openai.BadRequestError, match=r"redis\.url"):
                await client.batches.list()
    finally:
        await gateway.stop()
