"""The edge as a complete Ollama for its clients: what is loaded (`/api/ps`), model details
(`/api/show`), embeddings (`/api/embed`, `/api/embeddings`, `/v1/embeddings`), legacy text
completions (`/v1/completions`), load and unload, and the refusal of model management, with
the official `ollama` and `openai` clients against a real edge in front of the simulated Ollama
(and the real gateway for the cloud's models). The last test replays what Open WebUI calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ollama
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError

from edge_agent.server import EdgeServer
from simulators import OllamaSimulator
from tests.edge.conftest import (
    CLOUD,
    CLOUD_CONTEXT,
    CLOUD_ONLY,
    LOCAL,
    LOCAL_CONTEXT,
    PLAIN,
    parse_route,
    until,
)

HELLO: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def http(edge: EdgeServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge.url) as client:
        yield client


async def loaded(api: ollama.AsyncClient) -> set[str]:
    return {m.model or "" for m in (await api.ps()).models}


def last_sent(ollama_sim: OllamaSimulator, key: str) -> dict[str, Any]:
    """The last body the local Ollama received that has `key` (the edge's own keep-warm calls
    come in between, at their own times)."""
    return next(r for r in reversed(ollama_sim.requests) if key in r)


async def warm(edge: EdgeServer) -> None:
    """The edge loads its `ollama.model` at start, in the background."""
    await until(lambda: edge.service.local.warm)


# -- /api/ps -----------------------------------------------------------------------------------


async def test_ps_shows_what_the_local_ollama_has_loaded_aliases_included(
    edge: EdgeServer, ollama_client: ollama.AsyncClient
) -> None:
    await warm(edge)
    models = {m.model: m for m in (await ollama_client.ps()).models}

    assert set(models) == {LOCAL, CLOUD}  # the kept-warm model and its alias, nothing else
    assert models[LOCAL].context_length == LOCAL_CONTEXT  # loaded with the edge's num_ctx
    assert models[CLOUD].digest == models[LOCAL].digest


async def test_ps_while_the_local_ollama_is_down_is_empty(
    edge: EdgeServer, local_ollama: OllamaSimulator, ollama_client: ollama.AsyncClient
) -> None:
    await warm(edge)
    await local_ollama.stop()

    assert (await ollama_client.ps()).models == []


# -- /api/show ---------------------------------------------------------------------------------


async def test_show_of_a_local_model_is_the_local_ollamas_under_any_of_its_names(
    local_ollama: OllamaSimulator, ollama_client: ollama.AsyncClient
) -> None:
    direct = await ollama.AsyncClient(host=local_ollama.url).show(LOCAL)
    via_alias = await ollama_client.show(CLOUD)

    assert via_alias.capabilities == direct.capabilities == ["completion", "tools", "thinking"]
    assert via_alias.modelinfo == direct.modelinfo and via_alias.template == direct.template


async def test_show_of_a_gateway_model_comes_from_the_gateways_model_list(
    ollama_client: ollama.AsyncClient,
) -> None:
    shown = await ollama_client.show(CLOUD_ONLY)

    info = shown.modelinfo or {}
    assert info[f"{info['general.architecture']}.context_length"] == CLOUD_CONTEXT
    assert shown.capabilities is not None and {"completion", "tools", "thinking"} <= set(shown.capabilities)


async def test_show_refusals_name_the_problem(
    ollama_client: ollama.AsyncClient, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        await ollama_client.show("nope:1b")
    missing = await http.post("/api/show", json={})

    assert (unknown.value.status_code, unknown.value.error) == (404, "model 'nope:1b' not found")
    assert (missing.status_code, missing.json()) == (400, {"error": "model is required"})


# -- embeddings --------------------------------------------------------------------------------


async def test_embed_is_the_local_ollamas_under_the_edges_residency_settings(
    edge: EdgeServer, local_ollama: OllamaSimulator, ollama_client: ollama.AsyncClient
) -> None:
    direct = await ollama.AsyncClient(host=local_ollama.url).embed(model=LOCAL, input=["a", "b"])
    via_alias = await ollama_client.embed(model=CLOUD, input=["a", "b"], keep_alive=0)

    assert via_alias.model == CLOUD  # echoed as the caller named it
    assert [list(v) for v in via_alias.embeddings] == [list(v) for v in direct.embeddings]
    sent = last_sent(local_ollama, "input")
    # The kept-warm model is neither unloaded by a caller's keep_alive nor reloaded by a num_ctx.
    assert (
        sent["model"] == LOCAL and sent["keep_alive"] == "30m" and sent["options"]["num_ctx"] == LOCAL_CONTEXT
    )
    assert LOCAL in await loaded(ollama_client)


async def test_the_older_embeddings_api_passes_through(
    local_ollama: OllamaSimulator, ollama_client: ollama.AsyncClient
) -> None:
    direct = await ollama.AsyncClient(host=local_ollama.url).embeddings(model=PLAIN, prompt="hi")
    through = await ollama_client.embeddings(model=PLAIN, prompt="hi")

    assert len(through.embedding) == 5120 and list(through.embedding) == list(direct.embedding)


async def test_a_passed_through_call_is_counted_and_waited_for_at_drain(
    edge: EdgeServer,
    local_ollama: OllamaSimulator,
    ollama_client: ollama.AsyncClient,
    http: httpx.AsyncClient,
) -> None:
    await warm(edge)
    local_ollama.config.load_duration = 1.0  # PLAIN is not loaded: its embedding waits for it
    call = asyncio.ensure_future(ollama_client.embed(model=PLAIN, input="hi"))
    await until(lambda: edge.service.in_flight == 1)
    drained = asyncio.ensure_future(edge.service.drain(30))
    await asyncio.sleep(0.2)
    assert not drained.done()  # the drain waits for the embedding

    assert (await call).embeddings
    assert await drained is True
    refused = await http.post("/api/embed", json={"model": PLAIN, "input": "hi"})
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
    metrics = (await http.get("/metrics")).text
    for status in ("200", "503"):
        labels = f'face="ollama_embed",mode="",reason="",status="{status}",target=""'
        assert f"tandem_edge_requests_total{{{labels}}} 1.0" in metrics


async def test_openai_embeddings_in_float_and_base64(
    local_ollama: OllamaSimulator, openai_client: AsyncOpenAI
) -> None:
    native = (await ollama.AsyncClient(host=local_ollama.url).embed(model=LOCAL, input=["x", "y"])).embeddings
    floats = await openai_client.embeddings.create(model=CLOUD, input=["x", "y"], encoding_format="float")
    packed = await openai_client.embeddings.create(
        model=CLOUD, input="x", dimensions=8
    )  # the SDK asks base64

    assert floats.model == CLOUD and [d.index for d in floats.data] == [0, 1]
    assert floats.data[1].embedding == pytest.approx(list(native[1]))
    assert len(packed.data[0].embedding) == 8
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0


async def test_embeddings_of_a_gateway_model_are_refused_naming_where_they_come_from(
    ollama_client: ollama.AsyncClient, openai_client: AsyncOpenAI
) -> None:
    with pytest.raises(ollama.ResponseError) as native:
        await ollama_client.embed(model=CLOUD_ONLY, input="x")
    with pytest.raises(BadRequestError) as openai_shaped:
        await openai_client.embeddings.create(model=CLOUD_ONLY, input="x")
    with pytest.raises(NotFoundError):
        await openai_client.embeddings.create(model="nope:1b", input="x")

    assert native.value.status_code == 400 and "served by the gateway" in native.value.error
    assert LOCAL in native.value.error  # the models that can embed
    assert openai_shaped.value.body is not None and "served by the gateway" in str(openai_shaped.value.body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": LOCAL, "input": []}, "input"),
        ({"model": LOCAL, "input": [1, 2]}, "input"),
        ({"model": LOCAL, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": LOCAL, "input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x"}, "model"),
    ],
)
async def test_bad_openai_embeddings_are_400_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    resp = await http.post("/v1/embeddings", json=body)

    assert resp.status_code == 400 and resp.json()["error"]["param"] == field


async def test_embeddings_while_the_local_ollama_is_down_are_503_with_retry_after(
    edge: EdgeServer, local_ollama: OllamaSimulator, http: httpx.AsyncClient
) -> None:
    await warm(edge)
    await local_ollama.stop()
    resp = await http.post("/api/embed", json={"model": LOCAL, "input": "x"})

    assert resp.status_code == 503 and "Retry-After" in resp.headers
    assert "local Ollama" in resp.json()["error"]


# -- /v1/completions ---------------------------------------------------------------------------


async def test_text_completion_runs_where_the_edge_routes_it(openai_client: AsyncOpenAI) -> None:
    local = await openai_client.completions.with_raw_response.create(
        model=LOCAL, prompt="Say hi", extra_headers={"x-tandem-mode": "non_thinking"}
    )
    cloud = await openai_client.completions.with_raw_response.create(
        model=LOCAL, prompt="Say hi", extra_headers={"x-tandem-mode": "thinking"}
    )

    assert parse_route(local.headers["x-tandem-route"])["target"] == "edge"
    assert parse_route(cloud.headers["x-tandem-route"])["target"] == "cloud"
    for raw in (local, cloud):
        done = raw.parse()
        assert done.object == "text_completion" and done.model == LOCAL and done.choices[0].text
        assert (
            done.choices[0].finish_reason == "stop"
            and done.usage is not None
            and done.usage.completion_tokens > 0
        )


async def test_text_completion_runs_locally_as_a_generate(
    local_ollama: OllamaSimulator, openai_client: AsyncOpenAI
) -> None:
    done = await openai_client.completions.create(
        model=PLAIN, prompt="Once upon a time", max_tokens=3, seed=7
    )

    sent = last_sent(local_ollama, "prompt")
    assert sent["prompt"] == "Once upon a time" and sent["options"]["num_predict"] == 3
    assert sent["options"]["seed"] == 7 and "messages" not in sent
    assert done.choices[0].finish_reason == "length"


async def test_text_completion_stream_ends_with_finish_usage_and_done(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.completions.create(
        model=PLAIN, prompt="Once upon a time", stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]

    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) and chunks[-2].choices[0].finish_reason == "stop"
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": LOCAL, "prompt": ["a", "b"]}, "prompt"),
        ({"model": LOCAL}, "prompt"),
        ({"model": LOCAL, "prompt": ""}, "prompt"),
        ({"model": LOCAL, "prompt": "x", "temperature": 7}, "temperature"),
        ({"prompt": "x"}, "model"),
    ],
)
async def test_bad_text_completions_are_400_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    resp = await http.post("/v1/completions", json=body)

    assert resp.status_code == 400 and resp.json()["error"]["param"] == field


# -- load and unload ---------------------------------------------------------------------------


async def test_an_empty_generate_loads_and_with_keep_alive_zero_unloads(
    ollama_client: ollama.AsyncClient,
) -> None:
    load = await ollama_client.generate(model=PLAIN, prompt="")
    assert (load.done, load.done_reason, load.response) == (True, "load", "")
    assert PLAIN in await loaded(ollama_client)

    unload = await ollama_client.generate(model=PLAIN, prompt="", keep_alive=0)

    assert (unload.done, unload.done_reason) == (True, "unload")
    assert PLAIN not in await loaded(ollama_client)


async def test_a_chat_without_messages_loads_and_unloads(ollama_client: ollama.AsyncClient) -> None:
    load = await ollama_client.chat(model=PLAIN, messages=[])
    assert (load.done_reason, load.message.role, load.message.content) == ("load", "assistant", "")
    assert PLAIN in await loaded(ollama_client)

    unload = await ollama_client.chat(model=PLAIN, messages=[], keep_alive="0s")

    assert unload.done_reason == "unload" and PLAIN not in await loaded(ollama_client)


async def test_a_load_takes_the_edges_settings(
    local_ollama: OllamaSimulator, ollama_client: ollama.AsyncClient
) -> None:
    await ollama_client.generate(model=PLAIN, prompt="", keep_alive="1h", options={"num_ctx": 999})

    sent = [r for r in local_ollama.requests if r.get("model") == PLAIN][-1]
    assert (sent["model"], sent["keep_alive"], sent["options"]) == (PLAIN, "30m", {"num_ctx": LOCAL_CONTEXT})


async def test_the_kept_warm_model_is_not_unloaded_on_a_callers_word(
    edge: EdgeServer, ollama_client: ollama.AsyncClient
) -> None:
    await warm(edge)
    with pytest.raises(ollama.ResponseError) as refused:
        await ollama_client.generate(model=CLOUD, prompt="", keep_alive=0)

    assert refused.value.status_code == 403 and "ollama.model" in refused.value.error
    assert LOCAL in await loaded(ollama_client)


async def test_a_gateway_model_has_nothing_to_load_here(ollama_client: ollama.AsyncClient) -> None:
    load = await ollama_client.chat(model=CLOUD_ONLY, messages=[])
    unload = await ollama_client.generate(model=CLOUD_ONLY, prompt="", keep_alive=0)

    assert (load.model, load.done_reason, unload.done_reason) == (CLOUD_ONLY, "load", "unload")


async def test_load_refusals_name_the_problem(http: httpx.AsyncClient) -> None:
    unknown = await http.post("/api/generate", json={"model": "nope:1b"})
    bad_keep_alive = await http.post("/api/chat", json={"model": PLAIN, "keep_alive": "soon"})

    assert (unknown.status_code, unknown.json()) == (404, {"error": "model 'nope:1b' not found"})
    assert bad_keep_alive.status_code == 400 and "keep_alive" in bad_keep_alive.json()["error"]


# -- model management --------------------------------------------------------------------------


async def test_model_management_is_refused_naming_tandem_model(
    local_ollama: OllamaSimulator, ollama_client: ollama.AsyncClient, http: httpx.AsyncClient
) -> None:
    calls = [
        ollama_client.pull(LOCAL),
        ollama_client.push(LOCAL),
        ollama_client.create(model="mine", from_=LOCAL),
        ollama_client.copy(LOCAL, "mine"),
        ollama_client.delete(LOCAL),
    ]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as refused:
            await call
        assert refused.value.status_code == 403 and "`tandem model push`" in refused.value.error
    digest = "sha256:" + "0" * 64
    assert (await http.head(f"/api/blobs/{digest}")).status_code == 403
    assert (await http.post(f"/api/blobs/{digest}", content=b"x")).status_code == 403

    assert {e.name for e in local_ollama.library} == {LOCAL, PLAIN}  # nothing reached Ollama


async def test_head_of_root_answers_like_ollama(http: httpx.AsyncClient) -> None:
    resp = await http.head("/")

    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")


# -- what Open WebUI does ----------------------------------------------------------------------


async def test_an_open_webui_session(
    edge: EdgeServer, ollama_client: ollama.AsyncClient, http: httpx.AsyncClient
) -> None:
    """Open WebUI's calls in its order: version, the model list (tags, then ps for the loaded
    marks), a model's details, a streamed chat, embeddings for its documents, and the user's
    "unload" (an empty generate with keep_alive 0)."""
    assert (await http.get("/api/version")).status_code == 200
    names = {m.model for m in (await ollama_client.list()).models}
    assert {LOCAL, PLAIN, CLOUD, CLOUD_ONLY} <= names
    await ollama_client.ps()
    shown = await ollama_client.show(PLAIN)
    assert shown.capabilities == ["completion"] and shown.modelinfo

    parts = [
        part
        async for part in await ollama_client.chat(
            model=PLAIN, messages=HELLO, stream=True, options={"temperature": 0.7}
        )
    ]
    assert "".join(p.message.content or "" for p in parts) and parts[-1].done_reason == "stop"
    assert PLAIN in await loaded(ollama_client)

    vectors = (await ollama_client.embed(model=PLAIN, input=["doc one", "doc two"])).embeddings
    assert len(vectors) == 2

    unload = await ollama_client.generate(model=PLAIN, prompt="", keep_alive=0)
    assert unload.done_reason == "unload"
    assert PLAIN not in await loaded(ollama_client)
