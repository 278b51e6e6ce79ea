"""Running the edge agent: both faces, the probes and `/metrics` on one aiohttp site over one
`EdgeService`, and a graceful stop.

On SIGTERM or SIGINT the agent stops accepting (the listening socket closes, `/readyz` says
not ready), lets in-flight requests and streams finish up to `shutdown_grace_seconds`, then
exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from edge_agent import ollama_face, openai_face, vitals
from edge_agent.config import EdgeConfig
from edge_agent.http_io import SERVICE_KEY, json_response
from edge_agent.service import EdgeService
from gateway.errors import BadRequest, TandemError
from gateway.logs import get_logger
from gateway.metrics import CONTENT_TYPE
from gateway.wire import ollama as ollama_wire
from gateway.wire import openai as openai_wire

log = get_logger("tandem.edge")

READY_KEY = web.AppKey("ready", asyncio.Event)


async def healthz(request: web.Request) -> web.Response:
    return json_response(b'{"status":"ok"}')


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
    openai_face.add_routes(app)
    ollama_face.add_routes(app)
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
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.listen.host}:{self.port}"

    async def start(self) -> None:
        cfg = self.config
        await self.service.start()
        await self._start_model_sync()
        self._runner = web.AppRunner(
            self._app, handle_signals=False, access_log=None, shutdown_timeout=cfg.shutdown_grace_seconds
        )
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, cfg.listen.host, cfg.listen.port, backlog=1024, reuse_address=True
        )
        await self._site.start()
        server = self._site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.service.startup_seconds = round(vitals.process_age_seconds(self._started_at), 3)
        self.ready.set()

    async def _start_model_sync(self) -> None:
        """The seam for model distribution: when `config.model_sync` is set, a `ModelSync`
        (edge_agent/model_sync.py) starts here as a task (`ModelSyncConfig.model_validate(
        config.model_sync)`, `ollama_url=config.ollama.url`), is told the gateway's desired
        version through `service.heartbeat_listeners` (`reply.desired_reference`), and is
        stopped in `stop()`. The local engine sees the new model at its next refresh."""
        if self.config.model_sync is not None:
            log.warning(
                "model_sync_not_wired", reason="model_sync is configured but not wired into the server"
            )

    async def stop(self) -> None:
        """Stops accepting, drains in-flight work up to the grace period, closes everything."""
        self.ready.clear()
        if self._site is not None:
            await self._site.stop()  # closes the listening socket; open connections finish
        if not await self.service.drain(self.config.shutdown_grace_seconds):
            log.warning("drain_deadline_passed", in_flight=self.service.in_flight)
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
