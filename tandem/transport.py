"""HTTP/1.1 to the engines (vLLM behind the gateway, Ollama beside the edge agent).

The hot path of both processes is one POST per request to an engine on a kept-alive
connection. aiohttp's client spends 165-225 us of CPU on each (request and response objects,
header handling, timers, a task per body write); this one spends 70-90 us, measured side by
side with `python -m bench.client_cost`: the request is written in one send from parts
encoded once per upstream, the response is parsed by `httptools` (the llhttp parser uvicorn
uses) straight from `data_received`, and the body is handed over as it arrives.

What it does, and no more: `GET`/`POST` with a body in one piece; responses of any length
(`Content-Length`, chunked, or up to the connection's close), read whole or as they arrive
(`readany`); kept-alive connections per origin, reused last-in first-out, closed after
`keepalive_s` idle; a request that meets a kept connection the engine closed while it was idle
(lost within a round trip, before any byte of an answer) is sent once more on a new connection,
and never otherwise, so nothing the engine may have taken runs twice; a reader that falls
behind pauses the socket (no unbounded buffer); an exchange abandoned half-way is aborted, not
drained; TLS when the URL says `https`. Timeouts: `connect_s` to connect,
`read_s` between two reads (the first-token deadline for a stream), `total_s` for the whole
exchange. Every failure to reach or hear from the engine is an `EngineUnreachable`; a timeout
is a `TimeoutError`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import httptools

_PAUSE_AT = 256 * 1024  # buffered body bytes that pause the socket until the reader catches up


class EngineUnreachable(Exception):
    """Could not connect, the connection broke, or the engine did not speak HTTP."""


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]  # scheme, host, port
    path: str
    host_header: bytes


class _Connection(asyncio.Protocol):
    """One TCP connection; at most one exchange at a time."""

    def __init__(self, client: EngineClient, origin: tuple[str, str, int]) -> None:
        self._client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._idle: asyncio.TimerHandle | None = None
        self.received = False  # any byte of the current exchange's answer
        self.lost_at: float | None = None  # loop time the connection went, if it did
        self.sent_at = 0.0

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's too)

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(EngineUnreachable("the engine switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(EngineUnreachable(f"the engine's answer is not valid HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost_at = asyncio.get_running_loop().time()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._client._forget(self)
        r = self.response
        if r is not None and not r.complete:
            if exc is None and r.status and _ends_at_close(r.headers):
                r._complete(False)  # a body without a length ends where the connection does
                return
            why = f": {exc}" if exc else ""
            r._fail(EngineUnreachable(f"the engine closed the connection{why}"))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response._headers_done(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.response._complete(self._parser.should_keep_alive())

    # -- use

    def send(self, response: Response, data: bytes) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.response = response
        self.received = False
        self.sent_at = asyncio.get_running_loop().time()
        assert self.transport is not None
        self.transport.write(data)

    def idle(self) -> None:
        """The exchange is over and the connection is reusable."""
        self.response = None
        self._idle = asyncio.get_running_loop().call_later(self._client.keepalive_s, self.close)
        self._client._pool.setdefault(self.origin, []).append(self)

    def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self.closed:
            self.closed = True
            self._client._forget(self)
            if self.transport is not None:
                # An exchange left half-way (a timeout, a caller gone) is aborted: a graceful close
                # would first send whatever request bytes are still buffered, and the engine
                # would not learn of it until then.
                r = self.response
                if self.transport.get_write_buffer_size() or (r is not None and not r.complete):
                    self.transport.abort()
                else:
                    self.transport.close()

    def _fail(self, exc: Exception) -> None:
        if self.response is not None:
            self.response._fail(exc)
        self.close()


class Response:
    """An engine's answer: status and headers once `request` returns, the body as it comes."""

    def __init__(self, conn: _Connection, *, read_s: float | None) -> None:
        self._conn = conn
        self._read_s = read_s
        self.status = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self._keep_alive = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._done = False

    # -- fed by the connection

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _headers_done(self, status: int) -> None:
        self.status = status
        self._wake()

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _PAUSE_AT and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def _complete(self, keep_alive: bool) -> None:
        self.complete = True
        self._keep_alive = keep_alive
        self._wake()

    def _fail(self, exc: Exception) -> None:
        if self._error is None and not self.complete:
            self._error = exc
        self._wake()

    # -- read by the caller

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # A timer handle, not `asyncio.timeout`: a third of the cost, paid on every wait.
        timer = loop.call_later(self._read_s, _time_out, waiter) if self._read_s is not None else None
        try:
            await waiter
        except TimeoutError:
            self.close()
            raise
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def _wait_headers(self) -> None:
        while self.status == 0:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def readany(self) -> bytes:
        """The body bytes that arrived since the last call (waiting for some); b"" at the end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            await self._wait()
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            if self._conn.transport is not None and not self._conn.closed:
                self._conn.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while data := await self.readany():
            parts.append(data)
        return b"".join(parts)

    def release(self) -> None:
        """Done with the answer: a connection whose exchange ended cleanly is kept for the next
        request; one with unread body left (the caller went away) is closed, which also tells
        the engine to stop generating."""
        if self._done:
            return
        self._done = True
        if self._deadline is not None:
            self._deadline.cancel()
        if self.complete and self._keep_alive and self._error is None and not self._conn.closed:
            if self._paused and self._conn.transport is not None:
                self._conn.transport.resume_reading()
            self._conn.idle()
        else:
            self._conn.close()

    def close(self) -> None:
        """Drops the connection, whatever state the exchange is in."""
        self._done = True
        if self._deadline is not None:
            self._deadline.cancel()
        self._conn.close()

    def _expire(self, total_s: float) -> None:
        self._fail(TimeoutError(f"no whole answer within {total_s:g}s"))
        self._conn.close()


class EngineClient:
    """Kept-alive HTTP/1.1 connections to any number of engines. One per process."""

    def __init__(
        self, *, connect_s: float, keepalive_s: float = 30.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.connect_s = connect_s
        self.keepalive_s = keepalive_s
        self._ssl = ssl_context
        self._pool: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._targets: dict[str, _Target] = {}
        self._heads: dict[tuple[object, ...], bytes] = {}

    async def request(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        read_s: float | None = None,
        total_s: float | None = None,
    ) -> Response:
        """Sends the request and returns once the status line and headers have arrived.

        Raises `EngineUnreachable` or `TimeoutError`; the caller must `release()` (or `close()`)
        the response it gets.
        """
        target = self._target(url)
        key = (method, url, *(headers.items() if headers else ()))
        head = self._heads.get(key)
        if head is None:  # the same few per upstream: encoded once
            if len(self._heads) > 1024:  # callers that vary their headers get no cache
                self._heads.clear()
            head = self._heads[key] = _head(method, target, headers)
        head += b"Content-Length: %d\r\n\r\n" % len(body) if body or method == "POST" else b"\r\n"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total_s if total_s is not None else None
        for attempt in range(2):
            conn, reused = await self._connection(target.origin, deadline, reuse=attempt == 0)
            resp = Response(conn, read_s=read_s)
            if deadline is not None and total_s is not None:
                resp._deadline = loop.call_at(deadline, resp._expire, total_s)
            conn.send(resp, head + body if body else head)
            try:
                await resp._wait_headers()
                return resp
            except EngineUnreachable:
                resp.close()
                if reused and attempt == 0 and _closed_while_idle(conn):
                    continue  # once more, on a new connection
                raise
            except BaseException:
                resp.close()
                raise
        raise AssertionError("unreachable")

    async def _connection(
        self, origin: tuple[str, str, int], deadline: float | None, *, reuse: bool = True
    ) -> tuple[_Connection, bool]:
        idle = self._pool.get(origin) if reuse else None
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        timeout = self.connect_s
        if deadline is not None:
            if deadline <= loop.time():
                raise TimeoutError("the whole exchange's time ran out before connecting")
            timeout = min(timeout, deadline - loop.time())
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    host,
                    port,
                    ssl=self._tls() if scheme == "https" else None,
                )
        except TimeoutError:
            raise EngineUnreachable(f"could not connect to {host}:{port} within {timeout:g}s") from None
        except OSError as exc:
            raise EngineUnreachable(f"could not connect to {host}:{port}: {exc.strerror or exc}") from None
        self._open.add(conn)
        return conn, False

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()  # the system's CAs, hostname checked
        return self._ssl

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._pool.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _parse_target(url)
        return target

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._pool.clear()
        await asyncio.sleep(0)  # let the transports finish closing


# A kept-alive connection the engine closed as the request went out (its idle timeout) shows
# within a round trip. A loss later than this, or after any byte of an answer, may follow a
# request the engine took: that is never sent again here (the caller decides, knowing more).
_RACE_S = 0.25


def _closed_while_idle(conn: _Connection) -> bool:
    return not conn.received and conn.lost_at is not None and conn.lost_at - conn.sent_at < _RACE_S


def _ends_at_close(headers: Mapping[str, str]) -> bool:
    """An answer with neither a length nor chunks: its body runs until the connection closes."""
    return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _parse_target(url: str) -> _Target:
    parsed = httptools.parse_url(url.encode())
    scheme = (parsed.schema or b"").decode()
    if scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parsed.host.decode()
    port = parsed.port or (443 if scheme == "https" else 80)
    path = (parsed.path or b"/").decode() + (f"?{parsed.query.decode()}" if parsed.query else "")
    default = (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
    named = f"[{host}]" if ":" in host else host  # an IPv6 literal is bracketed in the Host header
    host_header = named if default else f"{named}:{port}"
    return _Target((scheme, host, port), path, host_header.encode())


def _head(method: str, target: _Target, headers: Mapping[str, str] | None) -> bytes:
    """The request line and headers, up to (not including) Content-Length and the blank line."""
    lines = [f"{method} {target.path} HTTP/1.1".encode(), b"Host: " + target.host_header]
    for name, value in (headers or {}).items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}".encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n"
