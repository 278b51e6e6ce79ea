"""What the agent tells about itself and its models: `/v1/models`, `/api/tags`, `/api/version`,
`GET /`, `/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

import httpx
import ollama
from openai import AsyncOpenAI

from edge_agent.server import EdgeServer
from tests.edge.conftest import CLOUD, CLOUD_ONLY, LOCAL, LOCAL_CONTEXT, PLAIN


async def test_openai_models_lists_local_models_then_the_gateways(openai_client: AsyncOpenAI) -> None:
    models = {m.id: m for m in (await openai_client.models.list()).data}
    assert models[LOCAL].owned_by == "edge" and models[CLOUD].owned_by == "edge"  # CLOUD is a local alias
    assert models[CLOUD_ONLY].owned_by == "tandem"
    assert (models[LOCAL].model_extra or {})["max_model_len"] == LOCAL_CONTEXT


async def test_ollama_list_shows_local_models_aliases_and_cloud_models(
    ollama_client: ollama.AsyncClient,
) -> None:
    names = [m.model for m in (await ollama_client.list()).models]
    assert {LOCAL, PLAIN, CLOUD, CLOUD_ONLY} <= set(names)
    assert names.index(LOCAL) < names.index(CLOUD_ONLY)


async def test_ollama_version_is_the_local_ollamas(edge: EdgeServer) -> None:
    async with httpx.AsyncClient(base_url=edge.url) as http:
        assert (await http.get("/api/version")).json() == {"version": "0.13.0"}
        assert (await http.get("/")).text == "Ollama is running"


async def test_readyz_reports_parts_and_figures(edge: EdgeServer) -> None:
    async with httpx.AsyncClient(base_url=edge.url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = (await http.get("/readyz")).json()
    assert ready["status"] == "ready" and ready["uplink"]["breaker"] == "closed"
    assert ready["local"]["available"] and set(ready["local"]["models"]) >= {LOCAL, CLOUD}
    assert ready["rss_bytes"] > 0 and ready["startup_seconds"] >= 0


async def test_metrics_count_requests_by_route(edge: EdgeServer, ollama_client: ollama.AsyncClient) -> None:
    await ollama_client.chat(model=LOCAL, messages=[{"role": "user", "content": "hi"}], think=False)
    async with httpx.AsyncClient(base_url=edge.url) as http:
        text = (await http.get("/metrics")).text
    labels = 'face="ollama",mode="non_thinking",reason="explicit",status="200",target="edge"'
    assert f"tandem_edge_requests_total{{{labels}}} 1.0" in text
    assert "tandem_edge_uplink_breaker_state 0.0" in text and "tandem_edge_local_available 1.0" in text


async def test_not_ready_while_draining(edge: EdgeServer) -> None:
    await edge.service.drain(0)
    async with httpx.AsyncClient(base_url=edge.url) as http:
        assert (await http.get("/readyz")).status_code == 503
