"""Real servers for the transport's tests, all on loopback: an aiohttp server for a
well-behaved engine, raw asyncio servers for misbehaving ones, a TLS server that can demand a
client certificate (certificates from the `openssl` command), and a real forward proxy
(Debian's `tinyproxy`). Every test runs on asyncio's loop and on uvloop (the processes serve on
uvloop, whose transports differ)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "1", "-subj", "/CN=tandem test CA", cwd=d)  # fmt: skip
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(extra + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


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


@dataclass
class Proxy:
    url: str
    log: Path

    def saw(self, port: int) -> bool:
        """Whether the proxy opened a connection to 127.0.0.1:port for a client."""
        return f"127.0.0.1:{port}" in self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A real forward proxy (tinyproxy: plain HTTP requests and CONNECT tunnels)."""
    exe = shutil.which("tinyproxy") or ("/usr/bin/tinyproxy" if Path("/usr/bin/tinyproxy").exists() else None)
    if exe is None:
        pytest.fail("tinyproxy is missing: `bash deploy/bootstrap.sh --test` installs it")
    d = tmp_path_factory.mktemp("proxy")
    port = _free_port()
    log = d / "tinyproxy.log"
    (d / "tinyproxy.conf").write_text(
        f'Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile "{log}"\nLogLevel Info\n'
        "MaxClients 64\nAllow 127.0.0.1\n"
    )
    proc = subprocess.Popen([exe, "-d", "-c", str(d / "tinyproxy.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("tinyproxy did not start")
    yield Proxy(f"http://127.0.0.1:{port}", log)
    proc.terminate()
    proc.wait(5)
