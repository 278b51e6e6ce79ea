"""HTTP plumbing both processes' faces share: JSON answers, bodies read within a limit, and
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
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from tandem.chat import Chunk, RouteDecision
from tandem.errors import PayloadTooLarge, TandemError
from tandem.logs import get_logger
from tandem.wire import openai as openai_wire

log = get_logger("tandem.http")


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes without reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is {request.content_length} bytes; the limit is {limit}")
    body = bytearray()
    async for data in request.content.iter_chunked(64 * 1024):
        body += data
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


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


async def write_stream(
    request: web.Request,
    stream: Source,
    fmt: StreamFormat,
    headers: dict[str, str],
    *,
    keepalive_s: float,
) -> tuple[web.StreamResponse, str]:
    """Streams `stream` to the caller; returns the response and the outcome for metrics
    ("200", "502" when the source broke off, "499" when the caller went away)."""
    resp = _StreamResponse(
        status=200,
        headers={
            **headers,
            "Content-Type": fmt.content_type,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
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
