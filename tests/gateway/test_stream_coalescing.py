"""Letting a stream's tokens gather for `streaming.coalesce_ms` (`gateway.relay.stream_chunks`).

An engine writes every token on its own; what arrives within the hold after a batch goes on
together as the next one. The first batch and the end of the answer are never held, and
nothing is lost or reordered. The engine here is a real HTTP server on loopback that writes
exactly what the test hands it, when it hands it, read through the gateway's own `Transport`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.relay import StreamBroken, stream_chunks
from gateway.server import GatewayServer
from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tandem.chat import Chunk
from tandem.transport import Transport
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc
from tests.gateway.conftest import SERVED, gateway_config

LONG_HOLD_S = 30.0  # longer than any test waits: a batch that comes was not waiting for it
DONE = b"data: [DONE]\n\n"


def _event(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    return b"data: " + orjson.dumps({"choices": [choice]}) + b"\n\n"


def _chat(text: str) -> pb.ChatRequest:
    return pb.ChatRequest(
        model="qwen3", messages=[pb.Message(role=pb.ROLE_USER, content=text)], mode=pb.MODE_NON_THINKING
    )


def _texts(batch: list[Chunk]) -> list[str]:
    return [c.content for c in batch]


async def scripted_engine(writes: asyncio.Queue[bytes | None]) -> TestServer:
    """A started engine whose every chat stream writes what `writes` hands it, when it does;
    None ends the body."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        while (data := await writes.get()) is not None:
            await resp.write(data)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = TestServer(app)
    await server.start_server()
    return server


@pytest.fixture
async def engine() -> AsyncIterator[Any]:
    """`await engine(coalesce_s)`: (the stream's batches, the queue of what the engine writes
    next; None ends the body)."""
    writes: asyncio.Queue[bytes | None] = asyncio.Queue()
    server = await scripted_engine(writes)
    transport = Transport()
    opened: list[AsyncIterator[list[Chunk]]] = []

    async def start(coalesce_s: float) -> tuple[AsyncIterator[list[Chunk]], asyncio.Queue[bytes | None]]:
        url = str(server.make_url("/v1/chat/completions"))
        resp = await transport.request("POST", url, b"{}", {"Content-Type": "application/json"}, read_s=10)
        chunks = stream_chunks(resp, coalesce_s=coalesce_s)
        opened.append(chunks)
        return chunks, writes

    yield start
    for chunks in opened:
        await chunks.aclose()  # type: ignore[attr-defined]
    await transport.close()
    await server.close()


async def test_tokens_written_during_the_hold_go_on_together(engine: Any) -> None:
    chunks, writes = await engine(LONG_HOLD_S)
    writes.put_nowait(_event("a"))
    assert _texts(await anext(chunks)) == ["a"]  # the first batch is never held
    pending = asyncio.ensure_future(anext(chunks))
    for text in ("b", "c"):
        writes.put_nowait(_event(text))
    await asyncio.sleep(0.2)  # b and c are written and arrive
    assert not pending.done()  # gathering: no batch for them yet
    writes.put_nowait(_event("d", "stop") + DONE)
    writes.put_nowait(None)
    # The end of the body ends the hold: no waiting out the 30 s.
    last = await asyncio.wait_for(pending, 5)
    assert _texts(last) == ["b", "c", "d"]
    assert last[-1].final and last[-1].finish_reason == "stop"
    with pytest.raises(StopAsyncIteration):
        await anext(chunks)


async def test_a_gathered_token_goes_when_the_hold_is_up_without_more_data(engine: Any) -> None:
    chunks, writes = await engine(0.05)
    writes.put_nowait(_event("a"))
    await anext(chunks)
    writes.put_nowait(_event("b"))
    # Nothing else comes: the token must not wait for the next one.
    assert _texts(await asyncio.wait_for(anext(chunks), 5)) == ["b"]
    writes.put_nowait(_event("c", "stop") + DONE)
    writes.put_nowait(None)
    assert _texts(await asyncio.wait_for(anext(chunks), 5)) == ["c"]


async def test_without_a_hold_each_read_is_its_own_batch(engine: Any) -> None:
    chunks, writes = await engine(0.0)
    got = []
    for text in ("a", "b"):
        writes.put_nowait(_event(text))
        got.append(_texts(await asyncio.wait_for(anext(chunks), 5)))
    writes.put_nowait(_event("c", "stop") + DONE)
    writes.put_nowait(None)
    got.append(_texts(await asyncio.wait_for(anext(chunks), 5)))
    assert got == [["a"], ["b"], ["c"]]


async def test_a_stream_cut_without_a_finish_reason_is_broken_not_held(engine: Any) -> None:
    chunks, writes = await engine(LONG_HOLD_S)
    writes.put_nowait(_event("a") + DONE)  # llama.cpp's cut stream: no finish_reason
    writes.put_nowait(None)
    with pytest.raises(StreamBroken, match="without a finish_reason"):
        await asyncio.wait_for(anext(chunks), 5)


async def test_an_engine_that_breaks_off_during_the_hold_is_a_broken_stream(engine: Any) -> None:
    chunks, writes = await engine(0.05)
    writes.put_nowait(_event("a"))
    await anext(chunks)
    writes.put_nowait(None)  # the body ends without [DONE]
    with pytest.raises(StreamBroken, match="before \\[DONE\\]"):
        await asyncio.wait_for(anext(chunks), 5)


@pytest.mark.parametrize(("coalesce_ms", "fewer"), [(0, False), (200, True)])
async def test_grpc_messages_carry_several_paced_tokens(coalesce_ms: float, fewer: bool) -> None:
    """A paced engine (one token per write, 50 tokens/s) through the gRPC face: with the hold,
    fewer messages than tokens and the same text; without it, a message per token."""
    sim = VllmSimulator(
        VllmSimConfig(
            models=[VllmModel(name=SERVED, max_model_len=4096)], output_tokens=12, tokens_per_second=50
        )
    )
    await sim.start()
    server = GatewayServer(gateway_config([sim.url], streaming={"coalesce_ms": coalesce_ms}))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            request = _chat("hello")
            messages: list[Any] = [m async for m in gateway_pb2_grpc.GatewayStub(channel).Chat(request)]
    finally:
        await server.stop()
        await sim.stop()
    answer = sim.requests[-1]
    assert answer["stream"] is True
    text = "".join(m.content for m in messages)
    tokens = messages[-1].usage.completion_tokens
    assert tokens == 12 and len(text) >= 12
    with_text = [m for m in messages if m.content]
    if fewer:
        assert len(with_text) <= tokens // 2
    else:
        assert len(with_text) >= tokens - 1  # one per token (the last may travel with the end)


async def test_a_finish_held_with_text_before_done_is_sent_once_on_the_last_grpc_message() -> None:
    """An engine whose finish_reason and [DONE] arrive apart (llama.cpp's server does): the
    held batch carries text and the finish, the last message the finish again; a caller must
    see exactly one finish_reason."""
    writes: asyncio.Queue[bytes | None] = asyncio.Queue()
    engine = await scripted_engine(writes)
    base = str(engine.make_url("")).rstrip("/")
    server = GatewayServer(gateway_config([base], streaming={"coalesce_ms": 200}))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            request = _chat("hi")
            call = gateway_pb2_grpc.GatewayStub(channel).Chat(request)
            writes.put_nowait(_event("a"))
            first = await asyncio.wait_for(call.read(), 10)
            writes.put_nowait(_event("b"))
            writes.put_nowait(_event("c", "length"))  # held with b; [DONE] comes after the hold
            second = await asyncio.wait_for(call.read(), 10)
            writes.put_nowait(DONE)
            writes.put_nowait(None)
            rest = []
            while (message := await asyncio.wait_for(call.read(), 10)) is not grpc.aio.EOF:
                rest.append(message)
    finally:
        await server.stop()
        await engine.close()
    messages = [first, second, *rest]
    assert "".join(m.content for m in messages) == "abc"
    assert [m.finish_reason for m in messages if m.finish_reason] == ["length"]
    assert messages[-1].finish_reason == "length"
