"""Fuzz: the gateway's OpenAI face never answers 5xx, never hangs, keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from hypothesis import given

from gateway.server import GatewayServer
from tests.fuzz import FUZZ_SETTINGS, Case, http_cases, openai_chat, send, still_serving


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Content-Type",)) as s:
        yield s


@FUZZ_SETTINGS
@given(case=http_cases({"/v1/chat/completions": openai_chat}))
async def test_hostile_openai_requests_get_no_5xx(
    gateway: GatewayServer, session: aiohttp.ClientSession, case: Case
) -> None:
    base = f"http://127.0.0.1:{gateway.http_port}"
    status = await send(session, base, case)
    assert status < 500, case
    await still_serving(session, base)
