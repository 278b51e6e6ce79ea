"""Real servers for the transport's tests, all on loopback: an aiohttp server for a
well-behaved engine, raw asyncio servers for misbehaving ones, a TLS server that can demand a
client certificate (certificates from the `openssl` command), and a real forward proxy
(Debian's `tinyproxy`). Every test runs on asyncio's loop and on uvloop (the processes serve on
uvloop, whose transports differ)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web

from tandem.transport import Transport


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    t = Transport()
    yield t
    await t.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
RawServer = Callable[[Handler], Awaitable[str]]


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    """Starts asyncio servers whose handler speaks (or fails to speak) HTTP by hand."""
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


@dataclass
class TlsServer:
    url: str
    peers: list[str]  # the client certificate's CN per request ("" without one)


async def _tls_server(certs: Path, *, require_client_cert: bool) -> tuple[TlsServer, web.AppRunner]:
    seen: list[str] = []

    async def hello(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        seen.append(str(subject.get("commonName", "")))
        return web.Response(body=b"over tls")

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / "server.pem", certs / "server.key")
    if require_client_cert:
        ctx.load_verify_locations(certs / "ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return TlsServer(f"https://127.0.0.1:{port}/hello", seen), runner


@pytest.fixture
async def tls_server(certs: Path) -> AsyncIterator[TlsServer]:
    server, runner = await _tls_server(certs, require_client_cert=False)
    yield server
    await runner.cleanup()


@pytest.fixture
async def mtls_server(certs: Path) -> AsyncIterator[TlsServer]:
    server, runner = await _tls_server(certs, require_client_cert=True)
    yield server
    await runner.cleanup()
