"""The edge agent's Ollama-compatible face: `POST /api/chat`, `POST /api/generate` (NDJSON
streams by default, `think`; with no messages or prompt, a load or unload handled by
`edge_agent.local_api`), `GET /api/tags`, `GET /api/version` and `GET`/`HEAD /`, over
`EdgeService` (the rest of Ollama's API is in `edge_agent.local_api`). An Ollama client
works by pointing its host at `http://127.0.0.1:11435`.

Every answer carries the `x-tandem-route` header, and its final object (`done: true`) the same
value in a `tandem_route` field, which Ollama's clients ignore. Errors are Ollama's
`{"error": "..."}` bodies with the statuses of `tandem.wire.ollama`.
"""

from __future__ import annotations

import functools

import orjson
from aiohttp import web

from edge_agent import local_api
from edge_agent.answer import Parsed, answer
from edge_agent.service import SERVICE_KEY, EdgeService, EdgeStream
from tandem.chat import Chunk, Usage
from tandem.errors import TandemError
from tandem.http_io import (
    StreamFormat,
    json_response,
)
from tandem.logs import get_logger
from tandem.version import tandem_version
from tandem.wire import ollama as wire
from tandem.wire.openai import MODE_HEADER

log = get_logger("tandem.edge.ollama")

FACE = "ollama"


def error_response(err: TandemError, headers: dict[str, str] | None = None) -> web.Response:
    status, body, extra = wire.error_response(err)
    return json_response(body, status, {**(headers or {}), **extra})


async def chat(request: web.Request) -> web.StreamResponse:
    return await _answer(request, chat=True)


async def generate(request: web.Request) -> web.StreamResponse:
    return await _answer(request, chat=False)


async def _answer(request: web.Request, *, chat: bool) -> web.StreamResponse:
    return await answer(request, FACE, functools.partial(_parse, chat=chat), error_response, log)


async def _parse(request: web.Request, body: bytes, rid: str, *, chat: bool) -> Parsed | web.StreamResponse:
    mode_header = request.headers.get(MODE_HEADER)
    call = (wire.parse_chat_call if chat else wire.parse_generate_call)(body, mode_header=mode_header)
    if isinstance(call, wire.Residency):  # a load or unload: answered here, not run
        return await local_api.residency(request, call, chat=chat)
    gen = call if isinstance(call, wire.GenerateRequest) else None
    req = call.chat if isinstance(call, wire.GenerateRequest) else call
    enc = wire.NdjsonEncoder(req.model, chat=chat)
    return Parsed(req, enc.whole, functools.partial(_format, enc), generate=gen)


def _format(enc: wire.NdjsonEncoder, stream: EdgeStream) -> StreamFormat:
    finish: str | None = None
    usage: Usage | None = None

    def batch(chunks: list[Chunk]) -> bytes:
        nonlocal finish, usage
        out = []
        for c in chunks:
            finish = c.finish_reason or finish
            usage = c.usage or usage
            out.append(enc.chunk(c))
        return b"".join(out)

    return StreamFormat(
        content_type=wire.NDJSON,
        opening=b"",
        batch=batch,
        closing=lambda: enc.final(finish, usage, stream.decision.header()),
        error=wire.error_line,
        keepalive=enc.keepalive(),
    )


async def tags(request: web.Request) -> web.Response:
    """The models this box serves (aliases as copies of their model), then the gateway's."""
    service: EdgeService = request.app[SERVICE_KEY]
    local = service.local
    models = [m.tag for m in local.models.values()]
    for alias, target in local.config.aliases.items():
        model = local.model(target)
        if model is not None:
            models.append({**model.tag, "name": alias, "model": alias})
    seen = {m.get("model") for m in models}
    now = wire.created_at()
    for m in await service.cloud_models():
        if m.id not in seen:
            models.append(
                {
                    "name": m.id,
                    "model": m.id,
                    "modified_at": now,
                    "size": 0,
                    "digest": "",
                    "details": {"parent_model": "", "format": "", "family": "", "families": None,
                                "parameter_size": "", "quantization_level": ""},
                    "remote_host": "tandem-gateway",
                }
            )  # fmt: skip
    return json_response(orjson.dumps({"models": models}))


async def version(request: web.Request) -> web.Response:
    # The local Ollama's version: clients gate features on it. Tandem's when it never answered.
    local = request.app[SERVICE_KEY].local
    return json_response(orjson.dumps({"version": local.version or tandem_version()}))


async def root(request: web.Request) -> web.Response:
    # Tools probe `GET /` for exactly this text before they talk to "Ollama".
    return web.Response(text="Ollama is running")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/version", version)
    app.router.add_get("/", root)
