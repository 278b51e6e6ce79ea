"""Streams leave in as few sends as their arrival allows: headers and opening with the first
batch, the closing with a batch its source marks final; the bytes are the same either way."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import TestServer
from aiohttp.web_protocol import RequestHandler

from gateway.relay import stream_chunks
from tandem.chat import Chunk, Mode, RouteDecision, Target
from tandem.errors import TandemError
from tandem.http_io import StreamFormat, write_stream


class _Response:
    """What `stream_chunks` reads: the body as the network delivered it, read by read."""

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads
        self.released = False

    async def readany(self) -> bytes:
        return self._reads.pop(0) if self._reads else b""

    async def drain(self) -> None:
        self._reads.clear()
        self.released = True

    def release(self) -> None:
        self.released = True


def _event(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    return b"data: " + orjson.dumps({"choices": [choice]}) + b"\n\n"


async def _batches(reads: list[bytes]) -> list[list[Chunk]]:
    resp: Any = _Response(reads)
    out = [batch async for batch in stream_chunks(resp)]
    assert resp.released
    return out


async def test_a_batch_read_with_done_is_marked_final() -> None:
    batches = await _batches([_event("a") + _event("b", "stop") + b"data: [DONE]\n\n"])
    assert [[c.content for c in b] for b in batches] == [["a", "b"]]
    assert batches[0][-1].final
    assert not batches[0][0].final


async def test_done_arriving_alone_marks_nothing_final() -> None:
    batches = await _batches([_event("a"), _event("b", "stop"), b"data: [DONE]\n\n"])
    assert [[c.content for c in b] for b in batches] == [["a"], ["b"]]
    assert not any(c.final for b in batches for c in b)


class _Source:
    def __init__(self, batches: list[list[Chunk]]) -> None:
        self._batches = batches
        self.decision = RouteDecision(
            mode=Mode.NON_THINKING, target=Target.CLOUD, reason="test", estimated_tokens=1
        )
        self.closed = False

    async def batches(self) -> AsyncGenerator[list[Chunk], None]:
        for batch in self._batches:
            yield batch

    async def close(self) -> None:
        self.closed = True


_FORMAT = StreamFormat(
    content_type="text/plain",
    opening=b"<open>",
    batch=lambda batch: b"".join(c.content.encode() for c in batch),
    closing=lambda: b"<close>",
    error=lambda err: b"<error>",
    keepalive=b"<beat>",
)


@pytest.fixture
async def serve(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """Serves one source; returns (body, number of sends the server made for it)."""
    sends = [0]
    write, writelines = StreamWriter._write, StreamWriter._writelines

    def counted_write(self: StreamWriter, chunk: Any) -> None:
        sends[0] += isinstance(self._protocol, RequestHandler)  # the server's, not the client's
        write(self, chunk)

    def counted_writelines(self: StreamWriter, chunks: Any) -> None:
        sends[0] += isinstance(self._protocol, RequestHandler)
        writelines(self, chunks)

    monkeypatch.setattr(StreamWriter, "_write", counted_write)
    monkeypatch.setattr(StreamWriter, "_writelines", counted_writelines)
    current: list[_Source] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp, _ = await write_stream(request, current[0], _FORMAT, {}, keepalive_s=60)
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    server = TestServer(app)
    await server.start_server()

    async def run(source: _Source) -> tuple[bytes, int]:
        current[:] = [source]
        async with aiohttp.ClientSession() as session, session.get(server.make_url("/")) as resp:
            body = await resp.read()
        sent, sends[0] = sends[0], 0
        assert source.closed
        return body, sent

    yield run
    await server.close()


async def test_a_whole_answer_in_one_final_batch_is_one_send(serve: Any) -> None:
    body, sends = await serve(_Source([[Chunk(content="a"), Chunk(content="b", final=True)]]))
    assert body == b"<open>ab<close>"
    assert sends == 1


async def test_batches_then_a_final_one_close_in_the_last_send(serve: Any) -> None:
    body, sends = await serve(_Source([[Chunk(content="a")], [Chunk(content="b", final=True)]]))
    assert body == b"<open>ab<close>"
    assert sends == 2


async def test_a_source_that_cannot_tell_its_end_still_closes_once(serve: Any) -> None:
    body, sends = await serve(_Source([[Chunk(content="a")], [Chunk(content="b")]]))
    assert body == b"<open>ab<close>"
    assert sends == 3


async def test_a_source_breaking_off_ends_with_the_error_event(serve: Any) -> None:
    class Broken(_Source):
        async def batches(self) -> AsyncGenerator[list[Chunk], None]:
            yield [Chunk(content="a")]
            raise TandemError("engine gone")

    body, _ = await serve(Broken([]))
    assert body == b"<open>a<error>"
