"""What both simulators share: the HTTP server's lifecycle, the admin API, the request log and
the entry faults (slow start, hang, injected errors, dead engine).

Admin API (for tests that steer a simulator in another process):
- `POST /_sim/faults` with a JSON object of `Faults` fields (missing fields take defaults);
- `GET /_sim/faults`;
- `GET /_sim/requests`: the recent request bodies seen on the inference endpoints;
- `POST /_sim/reset`: the faults the simulator started with, an empty request log, engine
  state as at start.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from types import TracebackType
from typing import Any, Protocol, Self

import orjson
from aiohttp import web

from simulators.faults import FaultInjector, Faults

JSON_TYPE = "application/json"


def json_response(data: Any, status: int = 200, charset: str | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON_TYPE, charset=charset)


class Listening(Protocol):
    """What every simulator's configuration says about its server (both have these fields)."""

    host: str
    port: int
    seed: int
    faults: Faults
    max_recorded: int
    max_body_size: int


class SimServer:
    """Base of the engine simulators: subclasses add their routes and error shapes."""

    def __init__(self, config: Listening) -> None:
        self._host = config.host
        self._port = config.port
        self._seed = config.seed
        self._initial_faults = config.faults
        self._injector = FaultInjector(config.faults, config.seed)
        self._requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=config.max_recorded)
        # The W3C `traceparent` each of those requests carried (None without one): vLLM started
        # with `--otlp-traces-endpoint` continues the caller's trace from it.
        self._traceparents: collections.deque[str | None] = collections.deque(maxlen=config.max_recorded)
        self._max_body_size = config.max_body_size
        self._app_runner: web.AppRunner | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._hangs: set[asyncio.Future[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Binds `host`:`port` (port 0 picks a free one) and starts serving.

        After `stop()` it can start again: on the same port, as a restarted engine would.
        """
        if self._app_runner is not None:
            raise RuntimeError("simulator already started")
        app = web.Application(client_max_size=self._max_body_size)
        app.router.add_post("/_sim/faults", self._admin_set_faults)
        app.router.add_get("/_sim/faults", self._admin_get_faults)
        app.router.add_get("/_sim/requests", self._admin_requests)
        app.router.add_post("/_sim/reset", self._admin_reset)
        self._add_routes(app)
        await self._on_start()
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            site = web.SockSite(runner, sock, backlog=1024)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._port = sock.getsockname()[1]
        self._app_runner = runner

    async def stop(self) -> None:
        """Stops serving: hung and in-flight requests are cut off, the port is released."""
        runner, self._app_runner = self._app_runner, None
        if runner is None:
            return
        for hang in self._hangs:
            hang.cancel()
        for task in list(self._inflight):
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:PORT` (no trailing slash)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    # -- faults and the request log ----------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._injector.faults

    def set_faults(self, faults: Faults) -> None:
        """Replaces the faults in force (from the next request on)."""
        self._injector.set(faults)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The recent request bodies received on the inference endpoints, oldest first."""
        return list(self._requests)

    @property
    def traceparents(self) -> list[str | None]:
        """The `traceparent` header of each recorded request, oldest first."""
        return list(self._traceparents)

    def reset(self) -> None:
        """The faults it started with, an empty request log, and engine state as at start."""
        self._injector.set(self._initial_faults)
        self._requests.clear()
        self._traceparents.clear()
        self._reset_state()

    def _record(self, body: dict[str, Any], traceparent: str | None = None) -> None:
        self._requests.append(body)
        self._traceparents.append(traceparent)

    # -- hooks for the engines ---------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _on_start(self) -> None:
        """Prepares engine state before the first request can arrive."""
        return None

    def _reset_state(self) -> None:
        return None

    def _error_response(self, status: int, message: str) -> web.Response:
        """The engine's own error answer for an injected error."""
        raise NotImplementedError

    def _dead_response(self) -> web.Response:
        raise NotImplementedError

    # -- entry faults ------------------------------------------------------------------------

    async def _entry_faults(self, body: dict[str, Any] | None = None) -> web.Response | None:
        """Applies slow start, hang, dead engine, the error draw and a rejected field; an answer
        means stop here."""
        faults = self._injector.faults
        if faults.slow_start > 0:
            await asyncio.sleep(faults.slow_start)
        if faults.hang:
            await self._hang()
        if faults.dead:
            return self._dead_response()
        if self._injector.should_fail():
            return self._error_response(faults.error_status, faults.error_message)
        rejected = self._injector.rejects(body)
        if rejected is not None:
            return self._error_response(faults.reject_status, f"{rejected} is not supported by this server")
        return None

    async def _hang(self) -> None:
        hang: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._hangs.add(hang)
        try:
            await hang
        finally:
            self._hangs.discard(hang)

    def _track(self) -> asyncio.Task[Any] | None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        return task

    def _untrack(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._inflight.discard(task)

    # -- admin API ---------------------------------------------------------------------------

    async def _admin_set_faults(self, request: web.Request) -> web.Response:
        try:
            data = orjson.loads(await request.read() or b"{}")
            faults = Faults.from_dict(data)
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            return json_response({"error": str(exc)}, status=400)
        self.set_faults(faults)
        return json_response(faults.to_dict())

    async def _admin_get_faults(self, request: web.Request) -> web.Response:
        return json_response(self.faults.to_dict())

    async def _admin_requests(self, request: web.Request) -> web.Response:
        return json_response(self.requests)

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return json_response({"status": "ok"})
