"""Talking to one vLLM endpoint: send a chat request, read its answer or its SSE stream.

One POST per attempt, over the process's `Transport` (`tandem/transport.py`: kept-alive
connections, proxies, each endpoint's TLS). Stream events are parsed with orjson
into `Chunk`s as they arrive; a burst of events read in one wake-up is parsed in one pass. The
first batch goes on at once; after it, the body may gather for a few tens of milliseconds so
that tokens an engine writes one by one travel on together (`stream_chunks`). Whether to retry a
failed attempt elsewhere is the application's call (`gateway/service.py`); this module only
says what failed and whether the failure happened before anything was received.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

from gateway.pool import Upstream
from tandem.chat import Chunk, ToolCall, Usage
from tandem.transport import Response, Transport, Unreachable
from tandem.wire import dialects


class AttemptFailed(Exception):
    """An attempt failed before any answer was received; another endpoint may succeed.

    `request_fault` is True when the engine refused the request because of the request itself
    (`request_fault_of`): the endpoint is not to blame, and sending it elsewhere would most
    likely fail the same way. `reached` is False when the request provably never reached the
    engine (no connection could be made): an engine not there yet, or gone.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_fault: bool = False,
        reached: bool = True,
        over_context: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_fault = request_fault or over_context
        self.reached = reached
        # The engine said the prompt does not fit its context (`dialects.over_context`): the
        # caller gets OpenAI's context_length_exceeded, and the endpoint is not to blame.
        self.over_context = over_context


# The words with which engines say a request asks for something they cannot do: llama.cpp's
# server answers an unsupported `response_format` with 500, and a vLLM validation error
# raised late can surface as 500 too. An engine's own failure ("EngineCore encountered an
# issue", "CUDA out of memory") says none of them.
_REQUEST_AT_FAULT = re.compile(
    r"not supported|unsupported|invalid|must be|validation error|not allowed|unrecognized"
    r"|unknown (field|param)",
    re.IGNORECASE,
)


def request_fault_of(status: int, message: str) -> bool:
    """Whether an engine's error answer is the request's own fault rather than the endpoint's.

    4xx answers are, except 408 (timeout), 409 (conflict) and 429 (busy), which are about the
    engine's state, and 401/403/404, which are about the endpoint's configuration (the key the
    gateway holds for it, the model it serves). A 5xx is the endpoint's, unless its message
    names the request as unsupported or invalid.
    """
    if status >= 500:
        return _REQUEST_AT_FAULT.search(message) is not None
    return status not in (401, 403, 404, 408, 409, 429)


class StreamBroken(Exception):
    """The engine failed after the stream had started (an error event, a reset, a timeout, an
    end without a finish_reason). `empty`: not one byte of the body had arrived."""

    def __init__(self, message: str, *, empty: bool = False) -> None:
        super().__init__(message)
        self.empty = empty


class Relay:
    """HTTP client for the pool's engines, owned by the application object."""

    def __init__(self, transport: Transport, *, connect_timeout: float) -> None:
        self._transport = transport
        self._connect_timeout = connect_timeout

    async def open(
        self,
        upstream: Upstream,
        body: dict[str, Any],
        *,
        first_byte_timeout: float,
        total_timeout: float,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Sends the request (with `headers` besides its own: a trace's `traceparent`); returns
        the response once its status is 200."""
        headers = {**(headers or {}), "Content-Type": "application/json"}
        if upstream.api_key:
            headers["Authorization"] = f"Bearer {upstream.api_key}"
        try:
            resp = await self._transport.request(
                "POST",
                f"{upstream.base_url}/chat/completions",
                orjson.dumps(body),
                headers,
                tls=upstream.tls,
                connect_s=self._connect_timeout,
                read_s=first_byte_timeout,
                total_s=total_timeout,
            )
        except TimeoutError:
            raise AttemptFailed(f"{upstream.id}: no answer within {first_byte_timeout:g}s") from None
        except Unreachable as exc:
            raise AttemptFailed(f"{upstream.id}: {exc}", reached=exc.sent) from None
        if resp.status != 200:
            raise await _failed_response(upstream, resp)
        return resp

    async def over_context(
        self, upstream: Upstream, body: dict[str, Any], *, within_s: float
    ) -> AttemptFailed | None:
        """Asks an engine whose stream closed before its first byte whether the prompt was too
        long; the refusal when it was, else None.

        llama-cpp-python's server checks the prompt's length only once it has answered 200 to a
        stream, and then closes the body without a word. The same request, not streamed and
        capped at one token, gets its 400 `context_length_exceeded` (the check is on the
        prompt alone); a prompt that fits costs one prefill, after a stream that failed anyway.
        """
        probe = {k: v for k, v in body.items() if k != "stream_options"}
        probe["stream"] = False
        probe["max_tokens"] = 1
        # Once more when the connection failed: the failed stream's connection went back to the
        # pool when its (empty) body ended, and the server resets it.
        for _ in range(2):
            try:
                resp = await self.open(upstream, probe, first_byte_timeout=within_s, total_timeout=within_s)
            except AttemptFailed as exc:
                if exc.status is None and exc.reached:
                    continue
                return exc if exc.over_context else None
            resp.release()
            return None
        return None


async def _failed_response(upstream: Upstream, resp: Response) -> AttemptFailed:
    status = resp.status
    try:
        raw = await resp.read()
    except (Unreachable, TimeoutError):
        raw = b""
    finally:
        resp.release()
    message = raw[:500].decode("utf-8", "replace")
    code: object = None
    kind: object = None
    try:
        parsed = orjson.loads(raw)
        err = parsed.get("error", parsed) if isinstance(parsed, dict) else {}
        if isinstance(err, dict):
            message = str(err.get("message", message))
            code, kind = err.get("code"), err.get("type")
        else:
            message = str(err)
    except orjson.JSONDecodeError:
        pass
    message = message or f"HTTP {status}"
    return AttemptFailed(
        message,
        status=status,
        request_fault=request_fault_of(status, message),
        # Only a refusal: a 5xx that mentions the context is the engine's failure.
        over_context=status < 500 and dialects.over_context(message, code, kind),
    )


def _tool_calls(raw: list[dict[str, Any]] | None) -> list[ToolCall]:
    if not raw:
        return []
    calls = []
    for i, c in enumerate(raw):
        fn = c.get("function") or {}
        calls.append(
            ToolCall(
                id=c.get("id") or "",
                name=fn.get("name") or "",
                arguments=fn.get("arguments") or "",
                type=c.get("type") or "function",
                index=c.get("index", i),
            )
        )
    return calls


def parse_usage(raw: dict[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    details = raw.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=raw.get("prompt_tokens") or 0,
        completion_tokens=raw.get("completion_tokens") or 0,
        reasoning_tokens=details.get("reasoning_tokens") or 0,
    )


def _event_chunk(event: dict[str, Any]) -> Chunk | None:
    if "error" in event:
        err = event["error"]
        raise StreamBroken(str(err.get("message", err)) if isinstance(err, dict) else str(err))
    choices = event.get("choices")
    usage = parse_usage(event.get("usage"))
    if not choices:
        return Chunk(usage=usage) if usage else None
    choice = choices[0]
    delta = choice.get("delta") or {}
    chunk = Chunk(
        content=delta.get("content") or "",
        # Current vLLM says "reasoning"; versions before 2026 said "reasoning_content".
        reasoning=delta.get("reasoning") or delta.get("reasoning_content") or "",
        tool_calls=_tool_calls(delta.get("tool_calls")),
        finish_reason=choice.get("finish_reason"),
        usage=usage,
    )
    if not (chunk.content or chunk.reasoning or chunk.tool_calls or chunk.finish_reason or chunk.usage):
        return None  # the role-only opening event carries nothing the caller lacks
    return chunk


class _Events:
    """An SSE stream's events parsed into `Chunk`s across reads (an event may span two)."""

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False  # `[DONE]` was read
        self.finished = False  # a finish_reason was read

    def feed(self, data: bytes) -> list[Chunk]:
        self._buffer += data
        *events, self._buffer = self._buffer.split(b"\n\n")
        batch: list[Chunk] = []
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue  # comments and other SSE fields
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.done = True
                    return batch
                try:
                    parsed = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise StreamBroken("the engine sent an event that is not JSON") from None
                chunk = _event_chunk(parsed)
                if chunk is not None:
                    self.finished = self.finished or chunk.finish_reason is not None
                    batch.append(chunk)
        return batch


async def _read(resp: Response, *, received: bool) -> bytes:
    try:
        data = await resp.readany()
    except (Unreachable, TimeoutError) as exc:
        failure = f"connection to the engine failed: {type(exc).__name__}"
        raise StreamBroken(failure, empty=not received) from None
    if not data:
        raise StreamBroken("the engine closed the stream before [DONE]", empty=not received)
    return data


async def stream_chunks(resp: Response, *, coalesce_s: float = 0.0) -> AsyncGenerator[list[Chunk], None]:
    """Yields the chunks of an SSE stream, one list per network read, until `[DONE]`.

    With `coalesce_s`, the body gathers unread for that long after each batch (or until it has
    all arrived, if sooner), and what gathered is the next batch. A real engine writes every
    token on its own; without a hold, each one costs a wake-up here and a message, with its
    send and wake-ups, at every hop after this one (gRPC's cost most). At 40 tokens/s, 100 ms
    carries four tokens per batch. No token waits longer than the hold; the first batch is never
    held, and the end of the answer goes at once.

    Raises `StreamBroken` when the engine sends an error event, the connection drops, nothing
    arrives for the read timeout given to `Relay.open`, or `[DONE]` comes without any
    finish_reason before it: an engine that cuts a stream short (llama-cpp-python's server
    ends a running stream with `[DONE]` when another request arrives) has not answered.
    """
    events = _Events()
    received = False
    try:
        while True:
            data = await _read(resp, received=received)
            received = True
            batch = events.feed(data)
            if events.done:
                if not events.finished:
                    raise StreamBroken("the engine ended the stream without a finish_reason")
                await resp.drain()  # the chunked body's end: the connection goes back to the pool
                if batch:
                    batch[-1].final = True
                    yield batch
                return
            if batch:
                yield batch
                if coalesce_s:
                    await resp.gather_until(asyncio.get_running_loop().time() + coalesce_s)
    finally:
        resp.release()


async def first_batch(chunks: AsyncIterator[list[Chunk]], deadline_s: float) -> list[Chunk]:
    """The first non-empty batch of a stream, within `deadline_s` (the first-token deadline)."""
    try:
        async with asyncio.timeout(deadline_s):
            return await anext(chunks)
    except StopAsyncIteration:
        return []
