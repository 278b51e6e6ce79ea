"""Running the edge agent: both faces, the probes and `/metrics` on one aiohttp site over one
`EdgeService`, and a graceful stop.

On SIGTERM or SIGINT the agent stops accepting (the listening socket closes, `/readyz` says
not ready), lets in-flight requests and streams finish up to `shutdown_grace_seconds`, then
exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from edge_agent import local_api, ollama_face, openai_face, vitals
from edge_agent.breaker import State
from edge_agent.config import EdgeConfig
from edge_agent.service import SERVICE_KEY, EdgeService
from tandem.errors import BadRequest, TandemError
from tandem.http_io import (
    BODY_LIMITS,
    BodyLimits,
    ConnectionTimeouts,
    HttpSite,
    app_runner,
    check_port_free,
    json_response,
)
from tandem.logs import get_logger
from tandem.metrics import CONTENT_TYPE
from tandem.v1 import gateway_pb2 as pb
from tandem.wire import ollama as ollama_wire
from tandem.wire import openai as openai_wire

if TYPE_CHECKING:
    from edge_agent.model_sync import ModelSync

log = get_logger("tandem.edge")

READY_KEY = web.AppKey("ready", asyncio.Event)


async def healthz(request: web.Request) -> web.Response:
    return json_response(b'{"status":"ok"}')


def down_parts(service: EdgeService) -> dict[str, str]:
    """The parts the agent cannot use now, each with why: `ollama` (it serves from the gateway
    then), `gateway` (the uplink's breaker is not closed: it serves locally then)."""
    down = {}
    if not service.local.available:
        down["ollama"] = f"{service.local.config.url}: {service.local.down_reason}"
    if service.breaker.state is not State.CLOSED:
        down["gateway"] = f"{service.config.uplink.address}: {service.breaker.last_error}"
    return down


async def readyz(request: web.Request) -> web.Response:
    """Ready once started and until draining; the body tells how the parts are and what the
    agent costs (resident memory, start-up time)."""
    service = request.app[SERVICE_KEY]
    ready = request.app[READY_KEY].is_set() and not service.draining
    local = service.local
    body = {
        "status": "ready" if ready else "not ready",
        "startup_seconds": service.startup_seconds,
        "rss_bytes": vitals.rss_bytes(),
        "in_flight": service.in_flight,
        "local": {
            "url": local.config.url,
            "available": local.available,
            "version": local.version,
            "models": sorted(local.contexts),
            "warm": local.warm,
            "in_flight": local.in_flight,
            "saturated": local.saturated,
        },
        "uplink": {"address": service.config.uplink.address, "breaker": service.breaker.state.value},
        "down": down_parts(service),
    }
    return json_response(orjson.dumps(body), 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[SERVICE_KEY].metrics.render(), headers={"Content-Type": CONTENT_TYPE}
    )


def _error(request: web.Request, err: TandemError, status: int | None = None) -> web.Response:
    """An error in the shape of the face the path belongs to (Ollama under /api/, else OpenAI)."""
    wire = ollama_wire if request.path.startswith("/api/") else openai_wire
    code, body, headers = wire.error_response(err)
    return json_response(body, status or code, headers)


@web.middleware
async def errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Unknown routes and wrong methods answer in the face's error shape; nothing escapes."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(request, BadRequest(f"{request.method} {request.path}: {exc.reason}"), exc.status)
    except TandemError as err:
        return _error(request, err)
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return _error(request, TandemError("internal error"), 500)


def build_app(service: EdgeService, ready: asyncio.Event) -> web.Application:
    # client_max_size is a backstop; read_body enforces the configured limit with a clear 413.
    app = web.Application(
        middlewares=[errors_as_json], client_max_size=service.config.listen.max_body_bytes + 1
    )
    app[SERVICE_KEY] = service
    app[READY_KEY] = ready
    listen = service.config.listen
    app[BODY_LIMITS] = BodyLimits(
        max_bytes=listen.max_body_bytes,
        max_inflated_bytes=listen.max_inflated_bytes,
        encodings=frozenset(listen.accepted_encodings),
    )
    openai_face.add_routes(app)
    ollama_face.add_routes(app)
    local_api.add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


class EdgeServer:
    """The edge agent's HTTP site; `start()` binds it, `stop()` drains and closes it."""

    def __init__(self, config: EdgeConfig, *, started_at: float | None = None) -> None:
        self.config = config
        self.service = EdgeService(config)
        self.ready = asyncio.Event()
        self.port = 0
        self._started_at = started_at if started_at is not None else time.monotonic()
        self._app = build_app(self.service, self.ready)
        self._runner: web.AppRunner | None = None
        self._site: HttpSite | None = None
        self.model_sync: ModelSync | None = None
        self._sync_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.listen.host}:{self.port}"

    async def start(self) -> None:
        cfg = self.config
        check_port_free(cfg.listen.host, cfg.listen.port)  # before anything starts (and logs)
        await self.service.start()
        await self._start_model_sync()
        timeouts = ConnectionTimeouts(
            idle_s=cfg.listen.idle_timeout_seconds, headers_s=cfg.listen.header_timeout_seconds
        )
        self._runner = app_runner(self._app, timeouts, shutdown_timeout=cfg.shutdown_grace_seconds)
        await self._runner.setup()
        self._site = HttpSite(self._runner, cfg.listen.host, cfg.listen.port, timeouts)
        try:
            await self._site.start()
        except OSError:
            # Nothing was served: close what started (sessions, tasks) so that the process
            # ends with the one line its command prints, not asyncio's complaints.
            self._site = None
            await self.stop()
            raise
        self.port = self._site.bound_port
        self.service.startup_seconds = round(vitals.process_age_seconds(self._started_at), 3)
        self.ready.set()

    async def _start_model_sync(self) -> None:
        """Model distribution: with `config.model_sync` set, a `ModelSync` keeps the served model
        at the desired version in the background. The desired version comes from the config,
        then from the gateway's heartbeat replies (rollouts, canaries, rollbacks); the heartbeat
        reports back the version actually served. The local engine sees a switched model at its
        next refresh."""
        if self.config.model_sync is None:
            return
        from edge_agent.model_sync import ModelSync, ModelSyncConfig

        sync = ModelSync(
            ModelSyncConfig.model_validate(self.config.model_sync),
            ollama_url=self.config.ollama.url,
            transport=self.service.transport,  # the edge's one outbound transport
        )
        self.model_sync = sync

        def on_heartbeat(reply: pb.HeartbeatResponse) -> None:
            if reply.desired_reference and reply.desired_reference != sync.state.desired:
                try:
                    sync.set_desired(reply.desired_reference)
                except ValueError as exc:  # a reference this edge cannot parse: keep serving
                    log.error("desired_reference_rejected", reference=reply.desired_reference, error=str(exc))

        self.service.heartbeat_listeners.append(on_heartbeat)
        self.service.served_versions = lambda: _served_versions(sync)
        self._sync_task = asyncio.create_task(sync.run(), name="model-sync")

    async def stop(self) -> None:
        """Stops accepting, drains in-flight work up to the grace period, closes everything."""
        self.ready.clear()
        if self._site is not None:
            await self._site.stop()  # closes the listening socket; open connections finish
        if not await self.service.drain(self.config.shutdown_grace_seconds):
            log.warning("drain_deadline_passed", in_flight=self.service.in_flight)
        if self.model_sync is not None:
            await self.model_sync.stop()
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        if self._runner is not None:
            await self._runner.cleanup()
        await self.service.close()


async def serve(config: EdgeConfig, *, started_at: float | None = None) -> int:
    """Runs the edge agent until SIGTERM or SIGINT; returns the exit code."""
    server = EdgeServer(config, started_at=started_at)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    gc.freeze()  # what start-up built lives as long as the process: no collection walks it again
    # One plain line launchers can parse (with port 0 the OS picked the port).
    print(f"tandem edge: listening on {server.url}", flush=True)
    log.info(
        "edge_ready",
        http=server.url,
        ollama=config.ollama.url,
        local_models=sorted(server.service.local.contexts),
        uplink=config.uplink.address,
        startup_s=server.service.startup_seconds,
        rss_mib=round(vitals.rss_bytes() / 2**20, 1),
    )
    await stop.wait()
    log.info("edge_stopping", in_flight=server.service.in_flight, grace_s=config.shutdown_grace_seconds)
    with contextlib.suppress(asyncio.CancelledError):
        await server.stop()
    log.info("edge_stopped")
    return 0


def _served_versions(sync: ModelSync) -> dict[str, tuple[str, str]]:
    """Served name -> (registry reference, manifest digest) of the version sync switched to."""
    current = sync.state.current
    if current is None:
        return {}
    return {sync.config.served_name: (current.reference, current.digest)}
