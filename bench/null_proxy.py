"""A do-nothing HTTP relay: the floor under any gateway built on aiohttp, on this machine.

    python -m bench.null_proxy --upstream fast=http://127.0.0.1:8000 [--upstream ...] [--port 0]

A POST to `/NAME/rest/of/path` is sent on to `rest/of/path` of the upstream called NAME (one
relay in front of several simulators, as the gateway is in front of several pools), with its
body and content type, and the
answer is written back as it arrives (whole, or chunk by chunk for a stream) without being
parsed. What it adds over calling the upstream directly (one more loopback hop, one more
process waking up per read) is the part of the gateway's added latency and CPU that no
gateway logic can remove; the benchmark reports it beside the gateway's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import aiohttp
from aiohttp import web

SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
UPSTREAMS_KEY = web.AppKey("upstreams", dict[str, str])


async def relay(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION_KEY]
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    name, _, rest = request.path.lstrip("/").partition("/")
    upstream = request.app[UPSTREAMS_KEY].get(name)
    if upstream is None:
        raise web.HTTPNotFound(text=f"no upstream called {name!r}")
    async with session.post(f"{upstream}/{rest}", data=body, headers=headers) as up:
        out_headers = {"Content-Type": up.headers.get("Content-Type", "application/json")}
        if up.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return web.Response(body=await up.read(), status=up.status, headers=out_headers)
        resp = web.StreamResponse(status=up.status, headers=out_headers)
        await resp.prepare(request)
        async for data in up.content.iter_any():
            await resp.write(data)
        await resp.write_eof()
        return resp


async def serve(upstreams: dict[str, str], host: str, port: int) -> None:
    app = web.Application()
    app.router.add_post("/{path:.*}", relay)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        app[SESSION_KEY] = session
        app[UPSTREAMS_KEY] = {name: url.rstrip("/") for name, url in upstreams.items()}
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None
        bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        print(f"null proxy: listening on http://{host}:{bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.null_proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--upstream", action="append", required=True, help="NAME=base URL, e.g. fast=http://127.0.0.1:8000"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    upstreams = dict(u.split("=", 1) for u in args.upstream)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(upstreams, args.host, args.port))
        return
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(upstreams, args.host, args.port))


if __name__ == "__main__":
    main()
