"""The gateway's OpenAI-compatible HTTP face (aiohttp): a thin layer over `GatewayService`.

`POST /v1/chat/completions` (stream and not), `GET /v1/models`, `/healthz`, `/readyz`,
`/metrics`, and the ops page (`/ops/`: `gateway/ops`). Every answer carries `x-tandem-route`;
errors are OpenAI error bodies with the status from `tandem.wire.openai.error_status`. The API
routes authenticate the caller (`Authorization: Bearer <key>`, or `x-api-key`) before reading
the body.
`/metrics`, and the Batch API (`/v1/files`, `/v1/batches`: gateway/batch/routes.py). Every
answer carries `x-tandem-route`; errors are OpenAI error bodies with the status from
`tandem.wire.openai.error_status`. The API routes authenticate the caller
(`Authorization: Bearer <key>`, or `x-api-key`) before reading the body.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from structlog.contextvars import bind_contextvars

from gateway import ops
from gateway.auth import credential
from gateway.batch.batches import Batches
from gateway.service import ActiveStream, GatewayService
from gateway.state import Tenant
from tandem.chat import ChatRequest, RouteDecision
from tandem.errors import BadRequest, TandemError
from tandem.http_io import (
    BODY_LIMITS,
    BodyLimits,
    EarlyStream,
    StreamFormat,
    json_response,
    openai_stream_format,
    read_body,
    request_id,
    traced,
    write_stream,
)
from tandem.logs import bind_request, get_logger
from tandem.metrics import CONTENT_TYPE
from tandem.wire import openai as wire

log = get_logger("tandem.gateway.http")

SERVICE_KEY = web.AppKey("service", GatewayService)
READY_KEY = web.AppKey("ready", asyncio.Event)

JSON = "application/json"


def error_response(err: TandemError, headers: dict[str, str] | None = None) -> web.Response:
    status, body, extra = wire.error_response(err)
    return json_response(body, status, {**(headers or {}), **extra})


async def authenticate(request: web.Request, service: GatewayService) -> Tenant | None:
    """The caller's tenant (None with authentication off); raises `Unauthenticated`."""
    if not service.auth.required:
        return None
    key = credential(request.headers.get("Authorization"), request.headers.get("x-api-key"))
    tenant = await service.auth.authenticate(key)
    if tenant is not None:
        bind_contextvars(tenant=tenant.name)
    return tenant


async def chat_completions(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    handle = functools.partial(_chat_completions, request, service)
    return await traced(service.tracing, "gateway.request", "http", request, handle)


async def _chat_completions(request: web.Request, service: GatewayService) -> web.StreamResponse:
    rid = request_id(request)
    bind_request(rid)
    started = time.perf_counter()
    route_header: dict[str, str] = {"x-request-id": rid}
    req: ChatRequest | None = None
    try:
        tenant = await authenticate(request, service)
        body = await read_body(request, request.app[BODY_LIMITS])
        req = wire.parse_request(body, mode_header=request.headers.get(wire.MODE_HEADER))
        req.request_id = rid
        if tenant is not None:
            req.tenant = tenant.name
        if not req.stream:
            result = await service.complete(req, tenant)
            route_header[wire.ROUTE_HEADER] = result.route.header()
            service.metrics.answered("http", result.route, "200", started, req.tenant)
            return json_response(wire.completion_body(result), headers=route_header)
        early: EarlyStream | None = None
        fmt = openai_stream_format(
            f"chatcmpl-{rid}", req.model, int(time.time()), include_usage=req.include_usage
        )

        held: RouteDecision | None = None

        async def on_hold(decision: RouteDecision) -> None:
            # The pool is scaling up from zero: answer now and keep the connection alive.
            nonlocal early, held
            held = decision
            route_header[wire.ROUTE_HEADER] = decision.header()
            early = EarlyStream(fmt, route_header, service.config.http.sse_heartbeat_seconds)
            await early.open(request)

        try:
            stream = await service.stream(req, tenant, on_hold=on_hold)
        except TandemError as err:
            if early is None:
                raise
            log.info("request_refused", status=wire.error_status(err), error=err.message)
            service.metrics.answered("http", held, str(wire.error_status(err)), started, req.tenant)
            return await early.fail(err)
    except TandemError as err:
        status = wire.error_status(err)
        log.info("request_refused", status=status, error=err.message)
        service.metrics.answered("http", None, str(status), tenant=req.tenant if req else None)
        return error_response(err, route_header)
    route_header[wire.ROUTE_HEADER] = stream.decision.header()
    return await _relay_stream(request, service, req, stream, fmt, route_header, started, early)


async def _relay_stream(
    request: web.Request,
    service: GatewayService,
    req: ChatRequest,
    stream: ActiveStream,
    fmt: StreamFormat,
    headers: dict[str, str],
    started: float,
    early: EarlyStream | None,
) -> web.StreamResponse:
    resp, status = await write_stream(
        request, stream, fmt, headers, keepalive_s=service.config.http.sse_heartbeat_seconds, early=early
    )
    service.metrics.answered("http", stream.decision, status, started, req.tenant)
    return resp


async def list_models(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    try:
        tenant = await authenticate(request, service)
    except TandemError as err:
        return error_response(err)
    created = int(time.time())
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "tandem",
            "max_model_len": pool.context_length,
        }
        for pool in service.visible_pools(tenant)
        for name in (pool.name, *pool.aliases)
    ]
    return json_response(orjson.dumps({"object": "list", "data": data}))


async def healthz(request: web.Request) -> web.Response:
    return json_response(b'{"status":"ok"}')


async def readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    if not request.app[READY_KEY].is_set() or service.draining:
        return json_response(b'{"status":"not ready"}', 503)
    return json_response(b'{"status":"ready"}')


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICE_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Unknown routes and wrong methods answer in the OpenAI error shape; nothing escapes."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err = BadRequest(f"{request.method} {request.path}: {exc.reason}")
        # The body's code is the status sent (404, 405), not BadRequest's 400.
        return json_response(orjson.dumps(wire.error_body(err, exc.status)), exc.status)
    except TandemError as err:
        return error_response(err)
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return json_response(
            orjson.dumps(
                {"error": {"message": "internal error", "type": "internal_error", "param": None, "code": 500}}
            ),
            500,
        )


def build_app(
    service: GatewayService, ready: asyncio.Event, batches: Batches | None = None
) -> web.Application:
    # client_max_size is a backstop; read_body enforces the configured limit with a clear 413.
    app = web.Application(
        middlewares=[errors_as_json], client_max_size=service.config.http.max_body_bytes + 1
    )
    app[SERVICE_KEY] = service
    app[READY_KEY] = ready
    http = service.config.http
    app[BODY_LIMITS] = BodyLimits(
        max_bytes=http.max_body_bytes,
        max_inflated_bytes=http.max_inflated_bytes,
        encodings=frozenset(http.accepted_encodings),
    )
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    from gateway.batch.ops_source import ActiveBatches
    from gateway.batch.routes import add_routes, add_unavailable_routes

    ops.install(app, service, ActiveBatches(batches.jobs) if batches is not None else None)

    if batches is not None:
        add_routes(app, batches)
    elif service.config.batch.enabled:
        add_unavailable_routes(
            app, "the Batch API needs shared state: set redis.url in the gateway's configuration"
        )
    return app
