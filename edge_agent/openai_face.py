"""The edge agent's OpenAI-compatible face: `POST /v1/chat/completions` (stream and not),
`POST /v1/completions` (legacy text completions, as Ollama serves them) and `GET /v1/models`,
over `EdgeService` (`/v1/embeddings` is in `edge_agent.local_api`). An OpenAI client works
by pointing its `base_url` at `http://127.0.0.1:11435/v1`.

Every answer carries `x-tandem-route`; errors are OpenAI error bodies with the statuses of
`tandem.wire.openai` (the same the gateway gives).
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from edge_agent.answer import Parsed, answer
from edge_agent.service import SERVICE_KEY, EdgeStream
from tandem.errors import TandemError
from tandem.http_io import (
    StreamFormat,
    json_response,
    openai_stream_format,
)
from tandem.logs import get_logger
from tandem.wire import completions
from tandem.wire import openai as wire

log = get_logger("tandem.edge.openai")

FACE = "openai"


def error_response(err: TandemError, headers: dict[str, str] | None = None) -> web.Response:
    status, body, extra = wire.error_response(err)
    return json_response(body, status, {**(headers or {}), **extra})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await answer(request, FACE, _parse_chat, error_response, log)


async def _parse_chat(request: web.Request, body: bytes, rid: str) -> Parsed:
    req = wire.parse_request(body, mode_header=request.headers.get(wire.MODE_HEADER))

    def stream_format(stream: EdgeStream) -> StreamFormat:
        return openai_stream_format(stream.id, stream.model, stream.created, include_usage=req.include_usage)

    return Parsed(req, wire.completion_body, stream_format)


async def text_completions(request: web.Request) -> web.StreamResponse:
    """`/v1/completions`: routed like an Ollama `/api/generate` of the same prompt."""
    return await answer(request, FACE, _parse_text, error_response, log)


async def _parse_text(request: web.Request, body: bytes, rid: str) -> Parsed:
    gen = completions.parse_completion(body, mode_header=request.headers.get(wire.MODE_HEADER))
    req = gen.chat
    enc = completions.CompletionEncoder(f"cmpl-{rid}", req.model, int(time.time()))

    def stream_format(stream: EdgeStream) -> StreamFormat:
        return StreamFormat(
            content_type="text/event-stream",
            opening=b"",
            batch=lambda batch: enc.batch(batch, include_usage=req.include_usage),
            closing=lambda: wire.DONE,
            error=wire.error_event,
            keepalive=wire.HEARTBEAT,
        )

    return Parsed(req, enc.whole, stream_format, generate=gen)


async def list_models(request: web.Request) -> web.Response:
    """The models this box serves, then the gateway's (while the uplink is up)."""
    service = request.app[SERVICE_KEY]
    created = int(time.time())
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "edge", "max_model_len": context}
        for name, context in service.local.contexts.items()
    ]
    seen = {d["id"] for d in data}
    for m in await service.cloud_models():
        if m.id not in seen:
            data.append(
                {"id": m.id, "object": "model", "created": created, "owned_by": m.owned_by or "tandem",
                 "max_model_len": m.context_length}
            )  # fmt: skip
    return json_response(orjson.dumps({"object": "list", "data": data}))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", text_completions)
    app.router.add_get("/v1/models", list_models)
