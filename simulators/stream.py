"""Writing a streamed answer: paced like an engine, faulted on request, cheap when unpaced.

A stream is a list of pre-encoded events (one per chunk) plus a final event built when the
stream ends (it carries timings). With no token delay and no chunk-counting fault the whole
stream goes out in one write; otherwise each pause flushes what is pending first, so every
chunk is on the wire as soon as it is "produced" (real streaming, chunked transfer encoding).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from simulators.faults import Faults


class Outcome(enum.Enum):
    COMPLETE = "complete"
    DISCONNECTED = "disconnected"  # the connection was cut on purpose
    CUT = "cut"  # ended as if complete, without a finish (Faults.cut_after)
    ERRORED = "errored"  # an in-stream error event was sent
    ERROR_NOT_STARTED = "error_not_started"  # the error came before any byte: answer with a status


@dataclass(slots=True)
class Pace:
    """Seconds before the first token and between tokens (0 = none)."""

    ttft: float = 0.0
    interval: float = 0.0

    @classmethod
    def of(cls, ttft: float, tokens_per_second: float) -> Pace:
        return cls(ttft, 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0)

    def total(self, tokens: int) -> float:
        """How long an unstreamed answer of `tokens` tokens takes."""
        return self.ttft + self.interval * max(0, tokens - 1)


@dataclass(slots=True)
class Stream:
    """What to send. `events[first_token:]` are token chunks; `finish()` builds the last chunk(s)."""

    events: list[bytes]
    first_token: int
    frame: Callable[[list[bytes]], bytes]
    finish: Callable[[], bytes]
    error_event: bytes
    # Whether an error before the first byte is answered with an HTTP status (Ollama) rather
    # than as an in-stream event (vLLM always starts its stream with the role chunk).
    status_error_before_start: bool = False
    # What ends a stream cut short (`Faults.cut_after`); None: the server never cuts one.
    cut_event: bytes | None = None


class StreamWriter:
    """Sends one `Stream` on a prepared-on-demand `StreamResponse`."""

    __slots__ = ("first_token_at", "loop", "prepared", "request", "response")

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response
        self.loop = asyncio.get_running_loop()
        self.prepared = False
        self.first_token_at: float | None = None

    async def _flush(self, stream: Stream, pending: list[bytes]) -> None:
        if not pending:
            return
        if not self.prepared:
            await self.response.prepare(self.request)
            self.prepared = True
        data = stream.frame(pending)
        pending.clear()
        await self.response.write(data)

    async def send(self, stream: Stream, pace: Pace, faults: Faults) -> Outcome:
        pending: list[bytes] = []
        events = stream.events
        count = len(events)
        disconnect_at = faults.disconnect_after
        error_at = faults.error_after
        cut_at = faults.cut_after if stream.cut_event is not None else None
        next_at = 0.0
        for i in range(count + 1):
            if i == stream.first_token or (i == count and self.first_token_at is None):
                if pace.ttft > 0:
                    await self._flush(stream, pending)
                    await asyncio.sleep(pace.ttft)
                next_at = self.first_token_at = self.loop.time()
            elif i > stream.first_token and pace.interval > 0:
                await self._flush(stream, pending)
                next_at += pace.interval
                delay = next_at - self.loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if i == disconnect_at:
                await self._flush(stream, pending)
                await self.disconnect()
                return Outcome.DISCONNECTED
            if i == error_at:
                if not self.prepared and not pending and stream.status_error_before_start:
                    return Outcome.ERROR_NOT_STARTED
                pending.append(stream.error_event)
                await self._finish(stream, pending)
                return Outcome.ERRORED
            if i == cut_at:
                assert stream.cut_event is not None
                pending.append(stream.cut_event)
                await self._finish(stream, pending)
                return Outcome.CUT
            pending.append(events[i] if i < count else stream.finish())
        await self._finish(stream, pending)
        return Outcome.COMPLETE

    async def _finish(self, stream: Stream, pending: list[bytes]) -> None:
        # The last chunk, then the end of the chunked body in a send of its own, as the real
        # servers do (uvicorn under vLLM, Go's net/http under Ollama): a client that stops
        # reading at the last event and does not read the body's end loses its connection.
        if not self.prepared:
            await self.response.prepare(self.request)
            self.prepared = True
        await self.response.write(stream.frame(pending))
        await self.response.write_eof()

    async def disconnect(self) -> None:
        """Closes the connection abruptly: what was written goes out, the stream never ends."""
        transport = self.request.transport
        if transport is not None:
            transport.close()
        # Let the close happen before aiohttp tries to finish the response.
        await asyncio.sleep(0)
