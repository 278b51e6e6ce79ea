"""SIGTERM: stop accepting, let in-flight streams finish, exit 0 (a real gateway process)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tests.gateway.conftest import SERVED

TANDEM = str(Path(sys.executable).with_name("tandem"))


async def wait_ready(url: str, proc: asyncio.subprocess.Process, timeout_s: float = 60) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(int(timeout_s * 10)):
            if proc.returncode is not None:
                raise AssertionError(f"gateway exited with {proc.returncode}")
            try:
                async with s.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("gateway never became ready")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(120)
async def test_sigterm_drains_in_flight_streams_and_exits_zero(tmp_path: Path) -> None:
    # 20 tokens/s x 30 tokens: the stream is still running when SIGTERM arrives.
    sim = VllmSimulator(
        VllmSimConfig(
            models=[VllmModel(name=SERVED)], tokens_per_second=20, output_tokens=30, reasoning_tokens=0
        )
    )
    await sim.start()
    http_port, grpc_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "grpc": {"port": grpc_port},
                "http": {"port": http_port},
                "pools": [{"name": "qwen3", "endpoints": [{"url": f"{sim.url}/v1", "model": SERVED}]}],
                "auth": {"required": False},  # `gateway serve` requires keys by default; none here
                "shutdown_grace_seconds": 20,
            }
        )
    )
    env = {**os.environ, "TANDEM_LOG_FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(
        TANDEM,
        "gateway",
        "serve",
        "--config",
        str(config),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        await wait_ready(url, proc)
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": "qwen3",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi /no_think"}],
                },
            ) as resp,
        ):
            first = await resp.content.readuntil(b"\n\n")
            assert first.startswith(b"data: ")
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # No new connections once draining has begun.
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as other, other.get(f"{url}/healthz") as r:
                    await r.read()
            rest = await resp.read()
        assert rest.rstrip().endswith(b"data: [DONE]")
        assert rest.count(b'"content"') >= 20
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await sim.stop()
