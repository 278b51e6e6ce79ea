"""One chat-like request answered on any of the edge's faces: the steps `/v1/chat/completions`,
`/v1/completions`, `/api/chat` and `/api/generate` share, around what differs between them (how
the body is parsed, how a whole answer and a stream are encoded, the error body's shape).

The steps: a server span (`tandem.http_io.traced`), the request id, the body read within the
limits, the face's parse, then a whole answer or a stream from `EdgeService`, the route header,
and the request counted with its route, status and duration.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from structlog.stdlib import BoundLogger

from edge_agent.service import SERVICE_KEY, EdgeService, EdgeStream
from tandem.chat import ChatRequest, ChatResult
from tandem.errors import TandemError
from tandem.http_io import (
    BODY_LIMITS,
    StreamFormat,
    json_response,
    read_body,
    request_id,
    traced,
    write_stream,
)
from tandem.logs import bind_request
from tandem.wire.ollama import GenerateRequest
from tandem.wire.openai import ROUTE_HEADER


@dataclass(frozen=True, slots=True)
class Parsed:
    """A face's reading of a request: what to run, and how to encode the answer."""

    req: ChatRequest
    whole: Callable[[ChatResult], bytes]
    stream_format: Callable[[EdgeStream], StreamFormat]
    generate: GenerateRequest | None = None  # the original `/api/generate` (or text completion)


# Reads the body (the request id given); a response instead of a `Parsed` is the answer itself
# (a load or unload on the Ollama face).
Parse = Callable[[web.Request, bytes, str], Awaitable[Parsed | web.StreamResponse]]
ErrorResponse = Callable[[TandemError, dict[str, str]], web.Response]


async def answer(
    request: web.Request, face: str, parse: Parse, error_response: ErrorResponse, log: BoundLogger
) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    run = functools.partial(_run, request, service, face, parse, error_response, log)
    return await traced(service.tracing, "edge.request", face, request, run)


async def _run(
    request: web.Request,
    service: EdgeService,
    face: str,
    parse: Parse,
    error_response: ErrorResponse,
    log: BoundLogger,
) -> web.StreamResponse:
    rid = request_id(request)
    bind_request(rid)
    started = time.perf_counter()
    headers = {"x-request-id": rid}
    try:
        body = await read_body(request, request.app[BODY_LIMITS])
        parsed = await parse(request, body, rid)
        if isinstance(parsed, web.StreamResponse):  # a load or unload, answered in parsing
            parsed.headers.update(headers)
            service.count(face, None, str(parsed.status))
            return parsed
        req = parsed.req
        req.request_id = rid
        if not req.stream:
            result = await service.complete(req, generate=parsed.generate)
            headers[ROUTE_HEADER] = result.route.header()
            service.count(face, result.route, "200", started)
            return json_response(parsed.whole(result), headers=headers)
        stream = await service.stream(req, generate=parsed.generate)
    except TandemError as err:
        refused = error_response(err, headers)
        log.info("request_refused", status=refused.status, error=err.message)
        service.count(face, None, str(refused.status))
        return refused
    headers[ROUTE_HEADER] = stream.decision.header()
    keepalive_s = service.config.listen.heartbeat_seconds
    resp, status = await write_stream(
        request, stream, parsed.stream_format(stream), headers, keepalive_s=keepalive_s
    )
    service.count(face, stream.decision, status, started)
    return resp
