"""HTTP plumbing both processes' faces share: the listening site (connection timeouts), request
ids, bodies read within limits (inflated here, capped, only where configured), JSON answers and
streams. A stream is written batch by batch as its chunks arrive, a silent stream gets a
keep-alive, a source that breaks off ends it with the face's error event, and a caller that
goes away closes the source. Faces differ only in how they render (`StreamFormat`): SSE
events for OpenAI, NDJSON lines for Ollama.

Kept light (aiohttp and the internal types only) so the edge agent can use it without
importing the gateway's application, auth or Redis state.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from tandem.chat import Chunk, RouteDecision
from tandem.errors import BadRequest, PayloadTooLarge, TandemError, UnsupportedEncoding
from tandem.logs import callers_request_id, get_logger, new_request_id
from tandem.tracing import Tracing
from tandem.wire import openai as openai_wire

log = get_logger("tandem.http")


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


# --- connections -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionTimeouts:
    """How long a connection may sit idle between requests (and before its first), and how long
    a request's headers may take once they have started to arrive."""

    idle_s: float
    headers_s: float


def app_runner(
    app: web.Application, timeouts: ConnectionTimeouts, *, shutdown_timeout: float
) -> web.AppRunner:
    """The runner both processes serve their app with."""
    return web.AppRunner(
        app, handle_signals=False, shutdown_timeout=shutdown_timeout, **_handler_kwargs(timeouts)
    )


def _handler_kwargs(timeouts: ConnectionTimeouts) -> dict[str, Any]:
    return {
        "access_log": None,
        # aiohttp's keep-alive timer also runs from the moment a connection opens, so it closes
        # a connection that never sends a request as well as one idle between requests.
        "keepalive_timeout": timeouts.idle_s,
        # aiohttp would inflate a gzip/deflate body as it arrives, whether or not the handler
        # reads it, and again while draining the body of a refused request: a 1 MiB bomb costs
        # seconds of CPU before any key is checked. `read_body` inflates instead, capped, once
        # the request is known to be able to succeed.
        "auto_decompress": False,
    }


class _HeadersDeadline(RequestHandler):
    """aiohttp's handler, closing a connection whose next request's headers started to arrive
    but are not complete after `headers_s` (a slowloris would otherwise hold it until the idle
    timeout, and with it a file descriptor)."""

    __slots__ = ("_headers_s", "_headers_timer")

    def __init__(self, manager: web.Server, *, headers_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._headers_s = headers_s
        self._headers_timer: asyncio.TimerHandle | None = None

    def _awaiting_headers(self) -> bool:
        # aiohttp's handler loop holds `_waiter` while it waits for the next whole request.
        return self._waiter is not None and not self._waiter.done()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_headers():
            if self._headers_timer is None:
                self._headers_timer = self._loop.call_later(self._headers_s, self._headers_too_slow)
        elif self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _headers_too_slow(self) -> None:
        self._headers_timer = None
        if self._awaiting_headers():
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None
        super().connection_lost(exc)


class HttpSite(web.TCPSite):
    """A TCP site whose connections get `_HeadersDeadline` handlers."""

    __slots__ = ("_timeouts",)

    def __init__(self, runner: web.AppRunner, host: str, port: int, timeouts: ConnectionTimeouts) -> None:
        super().__init__(runner, host, port, backlog=1024, reuse_address=True)
        self._timeouts = timeouts

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        manager = self._runner.server
        assert manager is not None
        loop = asyncio.get_running_loop()
        kwargs = _handler_kwargs(self._timeouts)

        def handler() -> RequestHandler:
            return _HeadersDeadline(manager, loop=loop, headers_s=self._timeouts.headers_s, **kwargs)

        self._server = await loop.create_server(
            handler, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address
        )

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return port


def check_port_free(host: str, port: int) -> None:
    """Raises OSError (EADDRINUSE, EACCES) when `host:port` cannot be listened on. A process
    asks this before it starts anything, so that a taken port ends it with one line instead
    of whatever its half-started parts log. (gRPC binds with SO_REUSEPORT: without this check a
    second gateway on the same port would start and split the traffic with the first.)"""
    if port == 0:
        return
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
            try:
                probe.bind(address)
            except OSError as exc:
                # Taken or forbidden; anything else (a family this host lacks) is the server's to judge.
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise


# --- requests ----------------------------------------------------------------------------------


async def traced(
    tracing: Tracing,
    name: str,
    face: str,
    request: web.Request,
    handle: Callable[[], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Runs a chat handler inside a server span whose parent is the caller's `traceparent`;
    the span gets the face, the status and the route (`x-tandem-route`). With tracing off the
    handler runs as it is."""
    if not tracing.enabled:
        return await handle()
    with tracing.span(name, kind="server", carrier=request.headers) as span:
        span.set("tandem.face", face)
        resp = await handle()
        span.set("http.response.status_code", resp.status)
        if route := resp.headers.get(openai_wire.ROUTE_HEADER):
            span.set("tandem.route", route)
        if resp.status >= 500:
            span.fail(f"HTTP {resp.status}")
        return resp


def request_id(request: web.Request) -> str:
    """The caller's `x-request-id` when it is a valid one, else a new id."""
    return callers_request_id(request.headers.get("x-request-id")) or new_request_id()


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """What a face accepts as a request body: `max_bytes` as sent, `encodings` it inflates
    (gzip, deflate; none by default), and `max_inflated_bytes` once inflated."""

    max_bytes: int
    max_inflated_bytes: int
    encodings: frozenset[str] = frozenset()


BODY_LIMITS = web.AppKey("body_limits", BodyLimits)

_READ_PIECE = 64 * 1024
# Each inflate step yields at most this much, so a bomb is stopped within one step of the cap
# and never inflated further.
_INFLATE_PIECE = 256 * 1024


async def read_body(request: web.Request, limits: BodyLimits) -> bytes:
    """The request body, refusing more than the limits allow without reading (or inflating) the
    rest: `PayloadTooLarge` (413), `UnsupportedEncoding` (415), or `BadRequest` for a body
    that is not in the encoding it claims."""
    if request.content_length is not None and request.content_length > limits.max_bytes:
        raise PayloadTooLarge(
            f"request body is {request.content_length} bytes; the limit is {limits.max_bytes}"
        )
    inflater = _inflater(request.headers.get("Content-Encoding"), limits)
    body = bytearray()
    received = 0
    async for data in request.content.iter_chunked(_READ_PIECE):
        received += len(data)
        if received > limits.max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {limits.max_bytes} bytes")
        if inflater is None:
            body += data
        else:
            inflater.feed(data, body)
    if inflater is not None:
        inflater.end()
    return bytes(body)


def _inflater(header: str | None, limits: BodyLimits) -> _Inflater | None:
    encoding = (header or "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in limits.encodings:
        accepted = " or ".join(sorted(limits.encodings))
        hint = f"send it uncompressed or as {accepted}" if accepted else "send it uncompressed"
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not accepted for request bodies; {hint}")
    return _Inflater(encoding, limits.max_inflated_bytes)


class _Inflater:
    """Inflates a gzip or deflate body piece by piece, stopping as soon as it passes `cap`."""

    __slots__ = ("_cap", "_encoding", "_out", "_z")

    def __init__(self, encoding: str, cap: int) -> None:
        self._encoding = encoding
        self._cap = cap
        self._out = 0
        self._z: Any = None  # zlib's decompressor, chosen on the first byte for deflate

    def feed(self, data: bytes, into: bytearray) -> None:
        if self._z is None and data:
            self._z = zlib.decompressobj(self._wbits(data[0]))
        try:
            while True:
                piece = self._z.decompress(data, _INFLATE_PIECE)
                self._out += len(piece)
                if self._out > self._cap:
                    raise PayloadTooLarge(
                        f"request body inflates to more than the limit of {self._cap} bytes"
                    )
                into += piece
                if self._z.unused_data:
                    raise BadRequest(f"request body has data after the end of its {self._encoding} stream")
                data = self._z.unconsumed_tail
                # A full piece may leave output pending inside zlib: ask again until it is out.
                if not data and len(piece) < _INFLATE_PIECE:
                    return
        except zlib.error:
            raise BadRequest(f"request body is not valid {self._encoding} data") from None

    def _wbits(self, first: int) -> int:
        if self._encoding == "gzip":
            return 16 + zlib.MAX_WBITS
        # HTTP's "deflate" is zlib-wrapped, but some clients send raw deflate (as aiohttp allows).
        return zlib.MAX_WBITS if first & 0x0F == 8 else -zlib.MAX_WBITS

    def end(self) -> None:
        if self._z is None or not self._z.eof:
            raise BadRequest(f"request body is not complete {self._encoding} data")


def openai_stream_format(stream_id: str, model: str, created: int, *, include_usage: bool) -> StreamFormat:
    """The OpenAI faces' SSE rendering (the gateway's and the edge agent's are the same)."""
    enc = openai_wire.StreamEncoder(stream_id, model, created)
    return StreamFormat(
        content_type="text/event-stream",
        opening=enc.role(),
        batch=lambda batch: enc.batch(batch, include_usage=include_usage),
        closing=lambda: openai_wire.DONE,
        error=openai_wire.error_event,
        keepalive=openai_wire.HEARTBEAT,
    )


class _StreamResponse(web.StreamResponse):
    # aiohttp sends a stream's headers at `prepare()`, in a send of their own; held back, they
    # leave with the first write (as `web.Response` does with its body).
    _send_headers_immediately = False


@dataclass(slots=True)
class StreamFormat:
    content_type: str
    opening: bytes  # written before the first chunk
    batch: Callable[[list[Chunk]], bytes]
    closing: Callable[[], bytes]  # written after the last chunk
    error: Callable[[TandemError], bytes]  # ends a stream that broke off
    keepalive: bytes


class Source(Protocol):
    """A started stream: the gateway's `ActiveStream` or the edge's `EdgeStream`."""

    decision: RouteDecision

    def batches(self) -> AsyncGenerator[list[Chunk], None]: ...

    async def close(self) -> None: ...


def _stream_response(fmt: StreamFormat, headers: dict[str, str]) -> web.StreamResponse:
    return _StreamResponse(
        status=200,
        headers={
            **headers,
            "Content-Type": fmt.content_type,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )


class EarlyStream:
    """A stream answer started before its source exists: the headers and then a keep-alive
    every `keepalive_s`, while the request waits (held for a pool scaling up from zero). The
    caller's connection stays alive, and proxies with idle timeouts keep it open. Hand it to
    `write_stream` once the source starts, or end it with `fail`."""

    def __init__(self, fmt: StreamFormat, headers: dict[str, str], keepalive_s: float) -> None:
        self.response = _stream_response(fmt, headers)
        self._fmt = fmt
        self._keepalive_s = keepalive_s
        self._beat: asyncio.Task[None] | None = None

    async def open(self, request: web.Request) -> None:
        await self.response.prepare(request)
        await self.response.write(self._fmt.keepalive)  # the headers leave now
        self._beat = asyncio.create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._keepalive_s)
            await self.response.write(self._fmt.keepalive)

    async def stop_beating(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._beat
            self._beat = None

    async def fail(self, err: TandemError) -> web.StreamResponse:
        """Ends the started answer with the error that ended the wait (its status is sent)."""
        await self.stop_beating()
        with contextlib.suppress(ConnectionError):
            await self.response.write_eof(self._fmt.error(err))
        return self.response


async def write_stream(
    request: web.Request,
    stream: Source,
    fmt: StreamFormat,
    headers: dict[str, str],
    *,
    keepalive_s: float,
    early: EarlyStream | None = None,
) -> tuple[web.StreamResponse, str]:
    """Streams `stream` to the caller; returns the response and the outcome for metrics
    ("200", "502" when the source broke off, "499" when the caller went away). `early` is an
    answer already started while the request waited: it goes on from there."""
    if early is not None:
        await early.stop_beating()
        resp = early.response
    else:
        resp = _stream_response(fmt, headers)
    status = "200"
    last_write = time.monotonic()

    async def keepalive() -> None:
        # A long thinking phase (or a slow first token) must not look dead to an idle proxy.
        while True:
            await asyncio.sleep(keepalive_s)
            if time.monotonic() - last_write >= keepalive_s:
                await resp.write(fmt.keepalive)

    beat: asyncio.Task[None] | None = None
    # Every write is a send and a wake-up of the caller: the headers and the opening go out with
    # the first batch (the source has it already), and the closing with a final batch.
    opening = fmt.opening
    ended = False
    try:
        if early is None:
            await resp.prepare(request)
        async with contextlib.aclosing(stream.batches()) as batches:
            async for batch in batches:
                data = opening + fmt.batch(batch)
                opening = b""
                if batch and batch[-1].final:
                    ended = True
                    await resp.write_eof(data + fmt.closing())
                elif data:
                    await resp.write(data)
                    last_write = time.monotonic()
                if beat is None and not ended:  # a stream that ends in its first batch needs none
                    beat = asyncio.create_task(keepalive())
        if not ended:
            await resp.write_eof(opening + fmt.closing())
    except TandemError as err:  # the source broke off mid-stream
        status = "502"
        log.warning("stream_failed", error=err.message, route=stream.decision.header())
        with contextlib.suppress(ConnectionError):
            await resp.write(fmt.error(err))
    except ConnectionError:
        status = "499"  # the caller went away; closing the stream releases the source
    finally:
        if beat is not None:
            beat.cancel()
        await stream.close()
    return resp, status
