"""Layer transfers (`registry.download`) against small HTTP servers on loopback that behave
the ways a real registry or its object storage may: redirects, no Range support, a 401 for an
expired token, a stalled connection."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from registry import download
from registry.auth import Credentials, RegistryAuth
from registry.download import BlobFetcher
from registry.errors import AuthFailed
from registry.http import RegistryHttp
from registry.progress import NullProgress
from registry.store import Store
from tandem.transport import Transport

DATA = bytes(range(256)) * 4096 * 3  # 3 MiB
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


@dataclass
class Server:
    url: str
    seen: list[dict[str, str]] = field(default_factory=list)  # headers of each blob request


Handler = Callable[[web.Request, Server], Awaitable[web.StreamResponse]]
Serve = Callable[[Handler], Awaitable[Server]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> Server:
        server = Server("")

        async def route(request: web.Request) -> web.StreamResponse:
            server.seen.append(dict(request.headers))
            return await handler(request, server)

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", route)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        server.url = f"http://127.0.0.1:{port}"
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


async def blob(request: web.Request, _: Server) -> web.StreamResponse:
    """The blob with Range support, as a registry serves it."""
    start = int(request.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
    if not start:
        return web.Response(body=DATA)
    return web.Response(
        status=206,
        body=DATA[start:],
        headers={"Content-Range": f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"},
    )


def fetcher(base: str, *, token: str | None = None, timeout: float = 30.0) -> BlobFetcher:
    """A fetcher over a `Transport` of its own (closed by `fetch` / `close`)."""
    http = RegistryHttp(
        Transport(),
        registry=base.removeprefix("http://"),
        auth=RegistryAuth(Credentials(token=token)),
        timeout=timeout,
    )
    return BlobFetcher(http, base=f"{base}/v2/models/m", repository="models/m")


async def close(f: BlobFetcher) -> None:
    await f.aclose()
    await f._http.transport.close()


async def fetch(f: BlobFetcher, store: Store) -> int:
    try:
        return await f.fetch(DIGEST, len(DATA), "chunk", store, NullProgress(), lambda: None)
    finally:
        await close(f)


async def test_a_layer_arrives_verified_in_the_store(serve: Serve, tmp_path: Path) -> None:
    server = await serve(blob)
    store = Store(tmp_path / "store")
    assert await fetch(fetcher(server.url), store) == len(DATA)
    assert store.read_blob(DIGEST) == DATA


async def test_a_redirect_to_storage_is_followed_without_the_registry_credentials(
    serve: Serve, tmp_path: Path
) -> None:
    storage = await serve(blob)

    async def redirect(request: web.Request, _: Server) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"{storage.url}/bucket/{DIGEST}?sig=abc")

    registry = await serve(redirect)
    store = Store(tmp_path / "store")
    await fetch(fetcher(registry.url, token="registry-token"), store)
    assert registry.seen[0]["Authorization"] == "Bearer registry-token"
    assert "Authorization" not in storage.seen[0]
    assert store.read_blob(DIGEST) == DATA


async def test_a_registry_that_ignores_range_gets_the_layer_restarted(serve: Serve, tmp_path: Path) -> None:
    async def no_range(request: web.Request, _: Server) -> web.StreamResponse:
        return web.Response(body=DATA)

    server = await serve(no_range)
    store = Store(tmp_path / "store")
    store.partial_path(DIGEST).write_bytes(DATA[:1000])
    assert await fetch(fetcher(server.url), store) == len(DATA)
    assert server.seen[0]["Range"] == "bytes=1000-"
    assert store.read_blob(DIGEST) == DATA


async def test_a_401_renews_the_credentials_once_and_goes_on(serve: Serve, tmp_path: Path) -> None:
    """An expired token mid-pull: the layer request meets a 401, the challenge is answered at
    the token realm (over the same transport) and the layer is fetched with the new token."""

    async def needs_token(request: web.Request, s: Server) -> web.StreamResponse:
        if request.path == "/token":
            assert request.query["scope"] == "repository:models/m:pull"
            return web.json_response({"token": "fresh"})
        if request.headers.get("Authorization") != "Bearer fresh":
            realm = f'Bearer realm="{s.url}/token",service="reg",scope="repository:models/m:pull"'
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": realm})
        return await blob(request, s)

    server = await serve(needs_token)
    store = Store(tmp_path / "store")
    await fetch(fetcher(server.url, token="expired"), store)
    assert [h.get("Authorization") for h in server.seen] == ["Bearer expired", None, "Bearer fresh"]
    assert store.read_blob(DIGEST) == DATA


async def test_credentials_refused_after_renewal_are_an_auth_error(serve: Serve, tmp_path: Path) -> None:
    async def refuse(request: web.Request, _: Server) -> web.StreamResponse:
        raise web.HTTPUnauthorized()

    server = await serve(refuse)
    with pytest.raises(AuthFailed):
        await fetch(fetcher(server.url), Store(tmp_path / "store"))


async def test_a_cancelled_transfer_stops_at_once_and_resumes_later(serve: Serve, tmp_path: Path) -> None:
    async def stalls_halfway(request: web.Request, _: Server) -> web.StreamResponse:
        if "Range" in request.headers:
            return await blob(request, _)
        resp = web.StreamResponse(headers={"Content-Length": str(len(DATA))})
        await resp.prepare(request)
        await resp.write(DATA[: len(DATA) // 2])
        await asyncio.sleep(60)  # a registry that stops sending
        return resp

    server = await serve(stalls_halfway)
    store = Store(tmp_path / "store")
    f = fetcher(server.url, timeout=60.0)
    task = asyncio.create_task(f.fetch(DIGEST, len(DATA), "chunk", store, NullProgress(), lambda: None))
    for _ in range(1000):  # until the first half is on disk
        if store.partial_size(DIGEST) >= len(DATA) // 2:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    await close(f)  # nothing is left running: it must not sit out the 60 s timeout
    assert time.monotonic() - started < 5
    assert store.partial_size(DIGEST) == len(DATA) // 2
    moved = await fetch(fetcher(server.url), store)
    assert moved == len(DATA) - len(DATA) // 2
    assert store.read_blob(DIGEST) == DATA


async def test_memory_stays_flat_when_the_disk_is_slower_than_the_network(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transfer holds at most `_MAX_PENDING` bytes received but not yet written: past that it
    stops reading (and the transport's flow control holds the sender)."""
    piece = bytes(range(256)) * 1024  # 256 KiB
    count = 128  # 32 MiB
    digest = "sha256:" + hashlib.sha256(piece * count).hexdigest()

    async def big(request: web.Request, _: Server) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(piece) * count)})
        await resp.prepare(request)
        for _ in range(count):
            await resp.write(piece)
        return resp

    backlog: list[int] = []
    slow_work = download._Writer._work
    add = download._Writer.add

    def work(self: download._Writer, pieces: list[bytes]) -> None:
        time.sleep(0.005)  # a slow disk
        slow_work(self, pieces)

    async def noted_add(self: download._Writer, p: bytes) -> None:
        await add(self, p)
        backlog.append(self._queued)

    monkeypatch.setattr(download._Writer, "_work", work)
    monkeypatch.setattr(download._Writer, "add", noted_add)
    server = await serve(big)
    store = Store(tmp_path / "store")
    f = fetcher(server.url)
    try:
        await f.fetch(digest, len(piece) * count, "big", store, NullProgress(), lambda: None)
    finally:
        await close(f)
    assert store.has(digest)
    assert max(backlog) <= 2 << 20  # unbounded, it reaches ~28 MiB here
