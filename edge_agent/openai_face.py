"""The edge agent's OpenAI-compatible face: `POST /v1/chat/completions` (stream and not),
`POST /v1/completions` (legacy text completions, as Ollama serves them) and `GET /v1/models`,
over `EdgeService` (`/v1/embeddings` is in `edge_agent.local_api`). An OpenAI client works
by pointing its `base_url` at `http://127.0.0.1:11435/v1`.

Every answer carries `x-tandem-route`; errors are OpenAI error bodies with the statuses of
`tandem.wire.openai` (the same the gateway gives).
"""

from __future__ import annotations

import functools
import time

import orjson
from aiohttp import web

from edge_agent.service import SERVICE_KEY, EdgeService
from tandem.errors import TandemError
from tandem.http_io import (
    BODY_LIMITS,
    StreamFormat,
    json_response,
    openai_stream_format,
    read_body,
    request_id,
    traced,
    write_stream,
)
from tandem.logs import bind_request, get_logger
from tandem.wire import completions
from tandem.wire import openai as wire

log = get_logger("tandem.edge.openai")

FACE = "openai"


def error_response(err: TandemError, headers: dict[str, str] | None = None) -> web.Response:
    status, body, extra = wire.error_response(err)
    return json_response(body, status, {**(headers or {}), **extra})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    handle = functools.partial(_chat_completions, request, service)
    return await traced(service.tracing, "edge.request", FACE, request, handle)


async def _chat_completions(request: web.Request, service: EdgeService) -> web.StreamResponse:
    rid = request_id(request)
    bind_request(rid)
    started = time.perf_counter()
    headers = {"x-request-id": rid}
    try:
        body = await read_body(request, request.app[BODY_LIMITS])
        req = wire.parse_request(body, mode_header=request.headers.get(wire.MODE_HEADER))
        req.request_id = rid
        if not req.stream:
            result = await service.complete(req)
            headers[wire.ROUTE_HEADER] = result.route.header()
            service.count(FACE, result.route, "200", started)
            return json_response(wire.completion_body(result), headers=headers)
        stream = await service.stream(req)
    except TandemError as err:
        code = wire.error_status(err)
        log.info("request_refused", status=code, error=err.message)
        service.count(FACE, None, str(code))
        return error_response(err, headers)
    headers[wire.ROUTE_HEADER] = stream.decision.header()
    fmt = openai_stream_format(stream.id, stream.model, stream.created, include_usage=req.include_usage)
    resp, status = await write_stream(
        request, stream, fmt, headers, keepalive_s=service.config.listen.heartbeat_seconds
    )
    service.count(FACE, stream.decision, status, started)
    return resp


async def text_completions(request: web.Request) -> web.StreamResponse:
    """`/v1/completions`: routed like an Ollama `/api/generate` of the same prompt."""
    service = request.app[SERVICE_KEY]
    rid = request_id(request)
    bind_request(rid)
    started = time.perf_counter()
    headers = {"x-request-id": rid}
    try:
        body = await read_body(request, request.app[BODY_LIMITS])
        gen = completions.parse_completion(body, mode_header=request.headers.get(wire.MODE_HEADER))
        req = gen.chat
        req.request_id = rid
        enc = completions.CompletionEncoder(f"cmpl-{rid}", req.model, int(time.time()))
        if not req.stream:
            result = await service.complete(req, generate=gen)
            headers[wire.ROUTE_HEADER] = result.route.header()
            service.count(FACE, result.route, "200", started)
            return json_response(enc.whole(result), headers=headers)
        stream = await service.stream(req, generate=gen)
    except TandemError as err:
        code = wire.error_status(err)
        log.info("request_refused", status=code, error=err.message)
        service.count(FACE, None, str(code))
        return error_response(err, headers)
    headers[wire.ROUTE_HEADER] = stream.decision.header()
    fmt = StreamFormat(
        content_type="text/event-stream",
        opening=b"",
        batch=lambda batch: enc.batch(batch, include_usage=req.include_usage),
        closing=lambda: wire.DONE,
        error=wire.error_event,
        keepalive=wire.HEARTBEAT,
    )
    resp, status = await write_stream(
        request, stream, fmt, headers, keepalive_s=service.config.listen.heartbeat_seconds
    )
    service.count(FACE, stream.decision, status, started)
    return resp


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
