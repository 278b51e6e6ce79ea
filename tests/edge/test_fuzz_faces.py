"""Fuzz: both faces of the edge agent (OpenAI and Ollama, the pass-through endpoints included)
never answer 5xx, never hang, and keep serving."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from hypothesis import given

from edge_agent.server import EdgeServer
from tests.fuzz import (
    FUZZ_SETTINGS,
    Case,
    http_cases,
    ollama_chat,
    ollama_embed,
    ollama_generate,
    ollama_show,
    openai_chat,
    openai_completions,
    openai_embeddings,
    send,
    still_serving,
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Content-Type",)) as s:
        yield s


@FUZZ_SETTINGS
@given(case=http_cases({"/v1/chat/completions": openai_chat}))
async def test_hostile_openai_requests_get_no_5xx(
    edge: EdgeServer, session: aiohttp.ClientSession, case: Case
) -> None:
    status = await send(session, edge.url, case)
    assert status < 500, case
    await still_serving(session, edge.url)


@FUZZ_SETTINGS
@given(case=http_cases({"/api/chat": ollama_chat, "/api/generate": ollama_generate}))
async def test_hostile_ollama_requests_get_no_5xx(
    edge: EdgeServer, session: aiohttp.ClientSession, case: Case
) -> None:
    status = await send(session, edge.url, case)
    assert status < 500, case
    await still_serving(session, edge.url)


@FUZZ_SETTINGS
@given(
    case=http_cases(
        {
            "/api/show": ollama_show,
            "/api/embed": ollama_embed,
            "/api/embeddings": ollama_embed,
            "/v1/embeddings": openai_embeddings,
            "/v1/completions": openai_completions,
        }
    )
)
async def test_hostile_requests_to_the_rest_of_the_api_get_no_5xx(
    edge: EdgeServer, session: aiohttp.ClientSession, case: Case
) -> None:
    status = await send(session, edge.url, case)
    assert status < 500, case
    await still_serving(session, edge.url)
