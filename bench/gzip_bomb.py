"""CPU the gateway spends on a gzip bomb that can never succeed (issue 15, item 1).

    python -m bench.gzip_bomb [--requests 5]

A gateway that requires keys runs in this process; `curl` (a separate process, so its own CPU
is not counted) posts a 1 MiB gzip body that inflates to 1 GiB, without a key, to the chat
route and to an unknown path. For each request the script waits until the server has let the
connection go (aiohttp drains an unread body for up to 10 s after answering), then reports
this process's CPU time per request and the longest event-loop stall seen meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gateway.config import GatewayConfig
from gateway.server import GatewayServer


def bomb(path: Path, inflated_mib: int = 1024) -> None:
    """Writes `inflated_mib` MiB of zeros, gzipped (about 1 MiB per GiB)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    with path.open("wb") as f:
        for _ in range(inflated_mib):
            f.write(c.compress(block))
        f.write(c.flush())


async def _stalls(worst: list[float]) -> None:
    # A sleeper that wakes every 10 ms: anything longer is the loop held by other work.
    while True:
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        worst[0] = max(worst[0], time.perf_counter() - t - 0.01)


async def measure(url: str, body: Path, server: GatewayServer, requests: int) -> tuple[float, float, str]:
    cpu = 0.0
    worst = [0.0]
    watcher = asyncio.create_task(_stalls(worst))
    status = ""
    for _ in range(requests):
        start = time.process_time()
        curl = await asyncio.create_subprocess_exec(
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{body}",
            "-H", "Content-Encoding: gzip", "-H", "Content-Type: application/json", url,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await curl.communicate()
        status = out.decode()
        runner = server._runner
        assert runner is not None and runner.server is not None
        deadline = time.monotonic() + 15
        while runner.server.connections and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # aiohttp's connection list has no event to wait on
        cpu += time.process_time() - start
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    return cpu / requests, worst[0], status


async def main(requests: int) -> None:
    config = GatewayConfig.model_validate(
        {
            "grpc": {"port": 0},
            "http": {"port": 0},
            "pools": [{"name": "qwen3", "endpoints": [{"url": "http://127.0.0.1:9/v1", "model": "m"}]}],
            "auth": {"required": True, "tenants": [{"name": "t", "key_sha256": ["0" * 64]}]},
            "shutdown_grace_seconds": 0,
        }
    )
    server = GatewayServer(config)
    await server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            body = Path(tmp) / "bomb.gz"
            bomb(body)
            print(f"body: {body.stat().st_size} bytes gzip, 1 GiB inflated; {requests} requests each")
            base = f"http://127.0.0.1:{server.http_port}"
            for name, path in (("chat, no key", "/v1/chat/completions"), ("unknown path", "/v1/nope")):
                cpu, stall, status = await measure(base + path, body, server, requests)
                ms, stall_ms = cpu * 1000, stall * 1000
                print(f"{name:14} status {status}: {ms:8.1f} ms CPU/request, worst stall {stall_ms:.0f} ms")
    finally:
        await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5)
    asyncio.run(main(parser.parse_args().requests))
