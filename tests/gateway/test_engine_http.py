"""`EngineClient` against real servers on loopback: aiohttp for a well-behaved engine, raw
asyncio servers for the misbehaving ones. Every test runs on asyncio's loop and on uvloop (the
processes serve on uvloop, whose transports differ): see `pytest_asyncio_loop_factories` in
this directory's conftest."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tandem.transport import EngineClient, EngineUnreachable


@pytest.fixture
async def client() -> AsyncIterator[EngineClient]:
    c = EngineClient(connect_s=2.0)
    yield c
    await c.close()


@pytest.fixture
async def engine() -> AsyncIterator[TestServer]:
    peers: list[object] = []

    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        body = await request.read()
        return web.json_response(
            {"path": request.path_qs, "body": body.decode(), "auth": request.headers.get("Authorization")}
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(int(request.query.get("n", "3"))):
            await resp.write(f"line {i}\n".encode())
            await asyncio.sleep(float(request.query.get("gap", "0.01")))
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (2 * 1024 * 1024))

    async def teapot(request: web.Request) -> web.Response:
        return web.Response(status=418, body=b"short and stout")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=b"late")

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/stream", stream)
    app.router.add_get("/big", big)
    app.router.add_get("/teapot", teapot)
    app.router.add_get("/slow", slow)
    server = TestServer(app)
    await server.start_server()
    server.peers = peers  # type: ignore[attr-defined]
    yield server
    await server.close()


def url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


async def test_a_post_reaches_the_engine_with_its_body_and_headers(
    client: EngineClient, engine: TestServer
) -> None:
    resp = await client.request(
        "POST",
        url(engine, "/echo?x=1"),
        b'{"a":1}',
        {"Authorization": "Bearer k", "Content-Type": "application/json"},
    )
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert await resp.read() == b'{"path": "/echo?x=1", "body": "{\\"a\\":1}", "auth": "Bearer k"}'
    resp.release()


async def test_a_connection_is_kept_and_reused(client: EngineClient, engine: TestServer) -> None:
    for _ in range(5):
        resp = await client.request("POST", url(engine, "/echo"), b"{}")
        await resp.read()
        resp.release()
    peers = engine.peers  # type: ignore[attr-defined]
    assert len(peers) == 5 and len(set(peers)) == 1


async def test_a_body_arrives_as_it_is_written(client: EngineClient, engine: TestServer) -> None:
    resp = await client.request("GET", url(engine, "/stream?n=4&gap=0.05"))
    parts = []
    while data := await resp.readany():
        parts.append(data)
    resp.release()
    assert b"".join(parts) == b"line 0\nline 1\nline 2\nline 3\n"
    assert len(parts) >= 2  # not held back until the end


async def test_an_answer_left_unread_closes_its_connection(client: EngineClient, engine: TestServer) -> None:
    resp = await client.request("GET", url(engine, "/stream?n=50&gap=0.01"))
    assert await resp.readany()
    resp.release()  # the caller went away mid-answer
    again = await client.request("POST", url(engine, "/echo"), b"{}")
    await again.read()
    again.release()
    peers = engine.peers  # type: ignore[attr-defined]
    assert len(peers) == 1  # a new connection (the stream's was closed); nothing mixed up


async def test_a_large_body_is_read_whole_with_reading_paused_between(
    client: EngineClient, engine: TestServer
) -> None:
    resp = await client.request("GET", url(engine, "/big"))
    await asyncio.sleep(0.2)  # the engine writes it all; the client must not buffer it all
    assert resp._buffered <= 1024 * 1024
    assert len(await resp.read()) == 2 * 1024 * 1024
    resp.release()
    again = await client.request("POST", url(engine, "/echo"), b"{}")  # the connection still works
    assert again.status == 200
    await again.read()
    again.release()


async def test_an_error_status_comes_with_its_body(client: EngineClient, engine: TestServer) -> None:
    resp = await client.request("GET", url(engine, "/teapot"))
    assert resp.status == 418
    assert await resp.read() == b"short and stout"
    resp.release()


async def test_no_answer_within_the_read_timeout_is_a_timeout(
    client: EngineClient, engine: TestServer
) -> None:
    with pytest.raises(TimeoutError):
        await client.request("GET", url(engine, "/slow"), read_s=0.2)


async def test_the_total_timeout_bounds_the_whole_exchange(client: EngineClient, engine: TestServer) -> None:
    resp = await client.request("GET", url(engine, "/stream?n=50&gap=0.05"), total_s=0.3)
    with pytest.raises(TimeoutError):
        while await resp.readany():
            pass
    resp.release()


async def test_a_refused_connection_is_unreachable(client: EngineClient) -> None:
    with pytest.raises(EngineUnreachable, match="could not connect"):
        await client.request("GET", "http://127.0.0.1:9/")


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
RawServer = Callable[[Handler], Awaitable[str]]


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handle: Handler) -> str:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await handle(reader, writer)

        server = await asyncio.start_server(tracked, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()
    await asyncio.sleep(0)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_kept_connection_the_engine_closed_is_replaced_once(
    client: EngineClient, raw_server: RawServer
) -> None:
    connections = 0

    async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)  # keep-alive by HTTP/1.1 default...
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.close()  # ...but the next request on it meets a close (an idle timeout's race)

    target = await raw_server(one_answer_per_connection)
    for _ in range(3):
        resp = await client.request("GET", target)
        assert await resp.read() == b"ok"
        resp.release()
    assert connections == 3  # the 2nd and 3rd requests each met a closed kept connection, then a new one


async def test_a_fresh_connection_that_breaks_is_not_retried(
    client: EngineClient, raw_server: RawServer
) -> None:
    connections = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    target = await raw_server(hang_up)
    with pytest.raises(EngineUnreachable, match="closed the connection"):
        await client.request("POST", target, b"{}")
    assert connections == 1


async def test_every_stale_kept_connection_is_skipped_for_a_new_one(
    client: EngineClient, raw_server: RawServer
) -> None:
    release = asyncio.Event()
    connections = 0

    async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()  # both first requests in flight at once: two kept connections
        writer.write(OK)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    target = await raw_server(one_answer_per_connection)

    async def get() -> bytes:
        resp = await client.request("GET", target)
        try:
            return await resp.read()
        finally:
            resp.release()

    first = asyncio.gather(get(), get())
    await asyncio.sleep(0.1)
    release.set()
    assert await first == [b"ok", b"ok"]
    assert await get() == b"ok"  # the retry takes a new connection, not the other stale one
    assert connections == 3


async def test_a_request_the_engine_may_have_taken_is_not_sent_again(
    client: EngineClient, raw_server: RawServer
) -> None:
    posts = 0

    async def answer_then_take_and_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal posts
        await reader.readuntil(b"\r\n\r\n")
        posts += 1
        writer.write(OK)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        posts += 1
        await asyncio.sleep(0.6)  # working on it, then gone (a crash, a reset by a proxy)
        writer.transport.abort()

    target = await raw_server(answer_then_take_and_drop)
    resp = await client.request("POST", target, b"{}")
    await resp.read()
    resp.release()
    with pytest.raises(EngineUnreachable, match="closed the connection"):
        await client.request("POST", target, b"{}")
    assert posts == 2


async def test_an_answer_that_is_not_http_is_not_sent_again(
    client: EngineClient, raw_server: RawServer
) -> None:
    posts = 0

    async def then_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal posts
        while True:
            await reader.readuntil(b"\r\n\r\n")
            posts += 1
            writer.write(OK if posts == 1 else b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
            await writer.drain()

    target = await raw_server(then_garbage)
    resp = await client.request("POST", target, b"{}")
    await resp.read()
    resp.release()
    with pytest.raises(EngineUnreachable, match="not valid HTTP"):
        await client.request("POST", target, b"{}")
    assert posts == 2


async def test_a_body_that_ends_with_the_connection_is_read_whole(
    client: EngineClient, raw_server: RawServer
) -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n{"error":"busy"}')
        await writer.drain()
        writer.close()

    target = await raw_server(until_close)
    resp = await client.request("GET", target)
    assert resp.status == 503
    assert await resp.read() == b'{"error":"busy"}'
    resp.release()


async def test_an_abandoned_exchange_drops_what_it_had_not_sent(
    client: EngineClient, raw_server: RawServer
) -> None:
    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    target = await raw_server(never_reads)
    conns: list[Any] = []
    original = client._connection

    async def spy(*args: Any, **kwargs: Any) -> Any:
        conn, reused = await original(*args, **kwargs)
        conns.append(conn)
        return conn, reused

    client._connection = spy  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await client.request("POST", target, b"x" * (32 * 1024 * 1024), read_s=0.3)
    await asyncio.sleep(0.1)
    transport = conns[0].transport
    assert transport.is_closing()
    assert transport.get_write_buffer_size() == 0  # not held until the engine reads 32 MiB


async def test_connection_close_is_honoured(client: EngineClient, raw_server: RawServer) -> None:
    connections = 0

    async def close_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(1)  # keeps the socket open: only the header says not to reuse it
        writer.close()

    target = await raw_server(close_each)
    for _ in range(2):
        resp = await client.request("GET", target)
        assert await resp.read() == b"ok"
        resp.release()
    assert connections == 2


async def test_an_engine_that_is_not_http_is_unreachable(client: EngineClient, raw_server: RawServer) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()

    target = await raw_server(garbage)
    with pytest.raises(EngineUnreachable, match="not valid HTTP"):
        await client.request("GET", target)


async def test_an_engine_that_hangs_up_mid_answer_breaks_the_read(
    client: EngineClient, raw_server: RawServer
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    target = await raw_server(cut)
    resp = await client.request("GET", target)
    with pytest.raises(EngineUnreachable, match="closed the connection"):
        await resp.read()
    resp.release()


def test_a_header_with_a_line_break_is_refused() -> None:
    from tandem.transport import _head, _parse_target

    with pytest.raises(ValueError, match="line break"):
        _head("POST", _parse_target("http://h/"), {"Authorization": "Bearer k\r\nX-Evil: 1"})


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem",
         "-days", "1", "-subj", "/CN=engine", "-addext", "subjectAltName=IP:127.0.0.1"],
        cwd=d, check=True, capture_output=True,
    )  # fmt: skip
    return d


@pytest.fixture
async def tls_engine(tls_cert: Path) -> AsyncIterator[str]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"over tls")

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls_cert / "cert.pem", tls_cert / "key.pem")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"https://127.0.0.1:{port}/hello"
    await runner.cleanup()


async def test_an_https_engine_is_reached_over_verified_tls(tls_cert: Path, tls_engine: str) -> None:
    trusting = EngineClient(
        connect_s=2.0, ssl_context=ssl.create_default_context(cafile=tls_cert / "cert.pem")
    )
    try:
        resp = await trusting.request("GET", tls_engine)
        assert await resp.read() == b"over tls"
        resp.release()
    finally:
        await trusting.close()


async def test_an_https_engine_with_an_unknown_certificate_is_unreachable(tls_engine: str) -> None:
    default = EngineClient(connect_s=2.0)  # the system's CAs: they never signed this one
    try:
        with pytest.raises(EngineUnreachable, match="could not connect"):
            await default.request("GET", tls_engine)
    finally:
        await default.close()
