"""Running the gateway process: both faces over one `GatewayService`, and a graceful stop.

On SIGTERM or SIGINT the gateway stops accepting (the listening sockets close, the health
service and `/readyz` report not serving), lets in-flight requests and streams finish up to
`shutdown_grace_seconds`, then exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time

from aiohttp import web
from grpc_health.v1 import health_pb2

from gateway.batch import BatchSystem
from gateway.config import GatewayConfig
from gateway.fleet import FleetStore
from gateway.grpc_face import bind, build_server
from gateway.http_face import build_app
from gateway.pool import Balancer
from gateway.service import GatewayService
from tandem.http_io import ConnectionTimeouts, HttpSite, app_runner, check_port_free
from tandem.logs import get_logger

log = get_logger("tandem.gateway")


def make_balancer(config: GatewayConfig) -> Balancer:
    # The only import of litellm in Tandem happens here, at gateway start.
    from gateway.pool.litellm_balancer import LitellmBalancer

    return LitellmBalancer(config)


class CannotListen(OSError):
    """A listening address could not be bound (taken, most often): one line for the operator."""


class GatewayServer:
    """The gateway's servers; `start()` binds them, `stop()` drains and closes them."""

    def __init__(
        self, config: GatewayConfig, *, balancer: Balancer | None = None, fleet: FleetStore | None = None
    ) -> None:
        self.config = config
        # Tenants, limits and the fleet: on Redis with `redis.url`, else in this process.
        self.service = GatewayService(config, balancer or make_balancer(config))
        self.fleet = fleet or self.service.state.fleet
        # The Batch API and its worker (gateway/batch): with Redis only, where batches are kept.
        self.batch = BatchSystem.build(self.service)
        self.ready = asyncio.Event()
        self.grpc_port = 0
        self.http_port = 0
        self._runner: web.AppRunner | None = None
        self._site: HttpSite | None = None

    async def start(self) -> None:
        cfg = self.config
        for face, host, port in (
            ("gRPC", cfg.grpc.host, cfg.grpc.port),
            ("HTTP", cfg.http.host, cfg.http.port),
        ):
            try:
                check_port_free(host, port)
            except OSError as exc:
                raise CannotListen(f"cannot listen on {host}:{port} ({face}): {_reason(exc)}") from None
        await self.service.start()
        self._grpc, self._health = build_server(self.service, self.fleet)
        try:
            self.grpc_port = bind(self._grpc, cfg.grpc.host, cfg.grpc.port, cfg.grpc.tls)
        except RuntimeError:  # grpc says only "Failed to bind"; the cause is nearly always this
            await self.service.close()
            where = f"{cfg.grpc.host}:{cfg.grpc.port}"
            raise CannotListen(f"cannot listen on {where} (gRPC): address in use") from None
        await self._grpc.start()
        timeouts = ConnectionTimeouts(
            idle_s=cfg.http.idle_timeout_seconds, headers_s=cfg.http.header_timeout_seconds
        )
        self._runner = app_runner(
            build_app(self.service, self.ready, self.batch.batches if self.batch else None),
            timeouts,
            shutdown_timeout=cfg.shutdown_grace_seconds,
        )
        await self._runner.setup()
        self._site = HttpSite(self._runner, cfg.http.host, cfg.http.port, timeouts)
        try:
            await self._site.start()
        except OSError as exc:
            # Nothing was served yet: close what started, so the process ends with one line.
            await self._grpc.stop(None)
            await self._runner.cleanup()
            await self.service.close()
            where = f"{cfg.http.host}:{cfg.http.port}"
            raise CannotListen(f"cannot listen on {where} (HTTP): {_reason(exc)}") from None
        self.http_port = self._site.bound_port
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set("tandem.v1.Gateway", health_pb2.HealthCheckResponse.SERVING)
        if self.batch is not None:
            await self.batch.start()
        self.ready.set()

    async def stop(self) -> None:
        """Stops accepting, drains in-flight work up to the grace period, closes everything."""
        grace = self.config.shutdown_grace_seconds
        self.ready.clear()
        await self._health.enter_graceful_shutdown()
        if self._site is not None:
            await self._site.stop()  # closes the listening socket; open connections finish
        if self.batch is not None:  # no new batch lines; those running finish within the grace
            await self.batch.stop(grace)
        drained, _ = await asyncio.gather(self.service.drain(grace), self._grpc.stop(grace))
        if not drained:
            log.warning("drain_deadline_passed", in_flight=self.service.in_flight)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.service.close()


def _reason(exc: OSError) -> str:
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


async def serve(config: GatewayConfig, *, started_at: float | None = None) -> int:
    """Runs the gateway until SIGTERM or SIGINT; returns the exit code."""
    started_at = started_at or time.monotonic()
    server = GatewayServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # Everything alive now (litellm's import alone is ~200 MiB of objects) lives as long as the
    # process: out of the collector's sight, a full collection no longer walks it under load.
    gc.freeze()
    log.info(
        "gateway_ready",
        grpc=f"{config.grpc.host}:{server.grpc_port}",
        http=f"http://{config.http.host}:{server.http_port}",
        pools=[p.name for p in config.pools],
        startup_s=round(time.monotonic() - started_at, 3),
    )
    await stop.wait()
    log.info("gateway_stopping", in_flight=server.service.in_flight, grace_s=config.shutdown_grace_seconds)
    with contextlib.suppress(asyncio.CancelledError):
        await server.stop()
    log.info("gateway_stopped")
    return 0
