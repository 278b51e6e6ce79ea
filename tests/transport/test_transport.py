"""`Transport`, the one outbound HTTP stack, against real servers on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from tandem.transport import ClientTLS, HttpClient, Transport, Unreachable, proxy_for
from tests.conftest import Proxy
from tests.transport.conftest import RawServer, TlsServer


@pytest.fixture
async def engine() -> AsyncIterator[TestServer]:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"path": request.path_qs, "body": body.decode()})

    async def sse(request: web.Request) -> web.StreamResponse:
        # As a uvicorn engine does: events, [DONE], and the chunked end in a write of its own.
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(b'data: {"n": %d}\n\n' % i)
        await resp.write(b"data: [DONE]\n\n")
        await asyncio.sleep(0.005)
        await resp.write_eof()
        return resp

    async def teapot(request: web.Request) -> web.Response:
        return web.Response(status=418, body=b"short and stout")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=b"late")

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(50):
            await resp.write(b".")
            await asyncio.sleep(0.05)
        return resp

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/sse", sse)
    app.router.add_get("/teapot", teapot)
    app.router.add_get("/slow", slow)
    app.router.add_get("/trickle", trickle)
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()


def url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


async def _stream_to_done(transport: Transport, target: str) -> bytes:
    """Reads an SSE answer the way the relay does: events until [DONE], then the body's end."""
    resp = await transport.request("POST", target, b"{}", {"Content-Type": "application/json"})
    seen = b""
    while b"data: [DONE]" not in seen:
        data = await resp.readany()
        assert data, "the stream ended before [DONE]"
        seen += data
    await resp.drain()
    return seen


# --- the exchange ---------------------------------------------------------------------------------


async def test_a_post_reaches_the_server_with_its_body(transport: Transport, engine: TestServer) -> None:
    resp = await transport.request("POST", url(engine, "/echo?x=1"), b"hello", {"Content-Type": "text/plain"})
    assert resp.status == 200
    assert await resp.read() == b'{"path": "/echo?x=1", "body": "hello"}'
    resp.release()


async def test_an_error_status_comes_with_its_body(transport: Transport, engine: TestServer) -> None:
    resp = await transport.request("GET", url(engine, "/teapot"))
    assert (resp.status, await resp.read()) == (418, b"short and stout")
    resp.release()


async def test_a_body_arrives_as_it_is_written(transport: Transport, engine: TestServer) -> None:
    resp = await transport.request("GET", url(engine, "/trickle"))
    first = await resp.readany()
    assert first == b"."  # not held back until the end
    resp.close()


# --- connection reuse -----------------------------------------------------------------------------


async def test_non_streamed_calls_share_one_kept_connection(transport: Transport, engine: TestServer) -> None:
    for _ in range(20):
        resp = await transport.request("POST", url(engine, "/echo"), b"{}")
        await resp.read()
        resp.release()
    assert transport.connections_opened == 1


async def test_a_hundred_streams_read_to_their_end_reuse_one_connection(
    transport: Transport, engine: TestServer
) -> None:
    for _ in range(100):
        assert b'"n": 2' in await _stream_to_done(transport, url(engine, "/sse"))
    assert transport.connections_opened <= 2


async def test_an_answer_left_unread_closes_its_connection(transport: Transport, engine: TestServer) -> None:
    resp = await transport.request("GET", url(engine, "/trickle"))
    await resp.readany()
    resp.release()  # half-way: nothing of it may stay on a pooled socket
    resp = await transport.request("POST", url(engine, "/echo"), b"{}")
    assert resp.status == 200
    await resp.read()
    resp.release()
    assert transport.connections_opened == 2


async def test_a_connection_idle_past_idle_seconds_is_not_reused(engine: TestServer) -> None:
    transport = Transport(HttpClient(idle_seconds=0.2))
    try:
        for pause in (0.0, 0.4):
            await asyncio.sleep(pause)
            resp = await transport.request("POST", url(engine, "/echo"), b"{}")
            await resp.read()
            resp.release()
        assert transport.connections_opened == 2
    finally:
        await transport.close()


# --- failures and timeouts ----------------------------------------------------------------------


def _closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_refused_connection_was_never_sent(transport: Transport) -> None:
    with pytest.raises(Unreachable, match="could not connect") as caught:
        await transport.request("POST", f"http://127.0.0.1:{_closed_port()}/", b"{}")
    assert caught.value.sent is False


async def test_no_answer_within_the_read_timeout_is_a_timeout(
    transport: Transport, engine: TestServer
) -> None:
    with pytest.raises(TimeoutError):
        await transport.request("GET", url(engine, "/slow"), read_s=0.2)


async def test_the_total_timeout_bounds_the_whole_exchange(transport: Transport, engine: TestServer) -> None:
    resp = await transport.request("GET", url(engine, "/trickle"), read_s=1.0, total_s=0.3)
    with pytest.raises(TimeoutError):
        while await resp.readany():
            pass
    resp.close()


async def test_a_post_the_server_may_have_taken_is_not_sent_again(
    transport: Transport, raw_server: RawServer
) -> None:
    received: list[bytes] = []

    async def take_and_vanish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()  # took the request, never answered

    base = await raw_server(take_and_vanish)
    with pytest.raises(Unreachable) as caught:
        await transport.request("POST", base + "v1/chat/completions", b"{}")
    assert caught.value.sent is True
    assert len(received) == 1


async def test_a_kept_connection_the_server_closed_while_idle_is_replaced(
    transport: Transport, raw_server: RawServer
) -> None:
    received = 0

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        received += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # its idle timeout, without saying Connection: close

    base = await raw_server(answer_once)
    for _ in range(2):
        resp = await transport.request("POST", base, b"{}")
        assert await resp.read() == b"ok"
        resp.release()
        await asyncio.sleep(0.05)  # the close reaches the client
    assert received == 2  # each POST sent once, the second on a new connection
    assert transport.connections_opened == 2


async def test_a_server_that_is_not_http_is_unreachable(transport: Transport, raw_server: RawServer) -> None:
    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()

    with pytest.raises(Unreachable, match="not valid HTTP"):
        await transport.request("GET", await raw_server(babble))


async def test_a_server_that_hangs_up_mid_body_breaks_the_read(
    transport: Transport, raw_server: RawServer
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    resp = await transport.request("GET", await raw_server(cut))
    with pytest.raises(Unreachable):
        await resp.read()
    resp.close()


async def test_a_header_with_a_line_break_is_refused(transport: Transport, engine: TestServer) -> None:
    with pytest.raises((ValueError, Unreachable)):
        await transport.request(
            "POST", url(engine, "/echo"), b"{}", {"Authorization": "Bearer k\r\nX-Evil: 1"}
        )


# --- TLS ------------------------------------------------------------------------------------------


async def test_an_https_server_is_reached_over_tls_verified_with_the_given_ca(
    transport: Transport, certs: Path, tls_server: TlsServer
) -> None:
    resp = await transport.request("GET", tls_server.url, tls=ClientTLS(ca_file=certs / "ca.pem"))
    assert await resp.read() == b"over tls"
    resp.release()


async def test_an_unknown_certificate_is_refused_before_anything_is_sent(
    transport: Transport, tls_server: TlsServer
) -> None:
    with pytest.raises(Unreachable, match="certificate") as caught:
        await transport.request("GET", tls_server.url)  # the system's CAs never signed it
    assert caught.value.sent is False
    assert tls_server.peers == []


async def test_mutual_tls_presents_the_client_certificate(
    transport: Transport, certs: Path, mtls_server: TlsServer
) -> None:
    tls = ClientTLS(ca_file=certs / "ca.pem", cert_file=certs / "client.pem", key_file=certs / "client.key")
    resp = await transport.request("GET", mtls_server.url, tls=tls)
    assert await resp.read() == b"over tls"
    resp.release()
    assert mtls_server.peers == ["client"]


async def test_a_server_demanding_a_client_certificate_refuses_one_without(
    transport: Transport, certs: Path, mtls_server: TlsServer
) -> None:
    with pytest.raises(Unreachable):
        resp = await transport.request("GET", mtls_server.url, tls=ClientTLS(ca_file=certs / "ca.pem"))
        await resp.read()
    assert mtls_server.peers == []


def test_a_client_certificate_needs_its_key(certs: Path) -> None:
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        ClientTLS(cert_file=certs / "client.pem")


# --- proxies --------------------------------------------------------------------------------------


async def test_a_configured_proxy_carries_plain_http(engine: TestServer, proxy: Proxy) -> None:
    transport = Transport(HttpClient(proxy=proxy.url, no_proxy=""))
    try:
        resp = await transport.request("POST", url(engine, "/echo"), b"via proxy")
        assert b"via proxy" in await resp.read()
        resp.release()
    finally:
        await transport.close()
    assert proxy.saw(engine.port or 0)


async def test_https_goes_through_the_proxy_in_a_tunnel_with_tls_end_to_end(
    certs: Path, tls_server: TlsServer, proxy: Proxy
) -> None:
    transport = Transport(HttpClient(proxy=proxy.url, no_proxy=""))
    try:
        resp = await transport.request("GET", tls_server.url, tls=ClientTLS(ca_file=certs / "ca.pem"))
        assert await resp.read() == b"over tls"
        resp.release()
    finally:
        await transport.close()
    assert proxy.saw(URL(tls_server.url).port or 0)


async def test_https_proxy_from_the_environment_is_used(
    certs: Path, tls_server: TlsServer, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "registry.internal")
    transport = Transport()
    try:
        resp = await transport.request("GET", tls_server.url, tls=ClientTLS(ca_file=certs / "ca.pem"))
        assert await resp.read() == b"over tls"
        resp.release()
    finally:
        await transport.close()
    assert proxy.saw(URL(tls_server.url).port or 0)


async def test_a_host_in_no_proxy_is_reached_directly(
    engine: TestServer, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.internal,127.0.0.1")
    transport = Transport()
    try:
        resp = await transport.request("POST", url(engine, "/echo"), b"{}")
        await resp.read()
        resp.release()
    finally:
        await transport.close()
    assert not proxy.saw(engine.port or 0)


async def test_an_unreachable_proxy_fails_before_sending(engine: TestServer) -> None:
    transport = Transport(HttpClient(proxy=f"http://127.0.0.1:{_closed_port()}", no_proxy=""))
    try:
        with pytest.raises(Unreachable, match="could not connect") as caught:
            await transport.request("POST", url(engine, "/echo"), b"{}")
        assert caught.value.sent is False
    finally:
        await transport.close()


@pytest.mark.parametrize(
    ("target", "config", "env", "expected"),
    [
        ("https://vllm.cloud:8000/v1", {}, {"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
        ("https://vllm.cloud:8000/v1", {}, {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://u:2"}, "http://lower:1"),
        ("http://vllm.cloud:8000/v1", {}, {"HTTPS_PROXY": "http://p:3128"}, None),
        ("http://vllm.cloud:8000/v1", {}, {"HTTP_PROXY": "http://p:3128"}, "http://p:3128"),
        ("https://vllm.cloud/v1", {}, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".cloud"}, None),
        ("https://vllm.cloud/v1", {}, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None),
        ("https://vllm.cloud/v1", {"proxy": "http://cfg:8080"}, {"HTTPS_PROXY": "http://env:1"}, "http://cfg:8080"),
        ("https://vllm.cloud/v1", {"trust_env": False}, {"HTTPS_PROXY": "http://env:1"}, None),
        ("https://vllm.cloud/v1", {"no_proxy": "vllm.cloud"}, {"HTTPS_PROXY": "http://env:1"}, None),
        ("http://127.0.0.1:11434", {}, {"HTTP_PROXY": "http://p:1"}, None),
        ("http://localhost:11434", {"proxy": "http://cfg:1"}, {}, None),
        ("http://127.0.0.1:11434", {"proxy": "http://cfg:1", "no_proxy": ""}, {}, "http://cfg:1"),
    ],
)  # fmt: skip
def test_which_proxy_a_request_takes(
    target: str, config: dict[str, object], env: dict[str, str], expected: str | None
) -> None:
    chosen = proxy_for(URL(target), HttpClient.model_validate(config), env)
    assert (str(chosen) if chosen else None) == expected


def test_a_proxy_must_be_an_http_url() -> None:
    with pytest.raises(ValueError, match="proxy must be"):
        HttpClient(proxy="socks5://p:1080")


def test_a_missing_tls_file_is_a_config_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ca_file: no such file"):
        ClientTLS(ca_file=tmp_path / "absent.pem")
