"""`tandem up` runs the whole stack and stops it cleanly."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import ollama
import pytest
from openai import AsyncOpenAI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(180)
async def test_up_serves_both_apis_through_edge_and_gateway_and_stops_on_sigterm(tmp_path: Path) -> None:
    edge, http, grpc_port = free_port(), free_port(), free_port()
    ready = tmp_path / "ready"
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("tandem")),
        "up",
        "--edge-port",
        str(edge),
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc_port),
        "--tokens-per-second",
        "0",
        "--ready-file",
        str(ready),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for _ in range(1500):
            if ready.exists() or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert ready.exists(), "tandem up never became ready"
        async with AsyncOpenAI(base_url=f"http://127.0.0.1:{edge}/v1", api_key="x", max_retries=0) as client:
            # Right after the banner, thinking work already goes up (not run locally, degraded).
            thinking = await client.chat.completions.with_raw_response.create(
                model="qwen3:14b", messages=[{"role": "user", "content": "Prove 2 is prime. /think"}]
            )
            assert thinking.headers["x-tandem-route"] == "target=cloud; mode=thinking; reason=soft_switch"
            raw = await client.chat.completions.with_raw_response.create(
                model="qwen3:14b", messages=[{"role": "user", "content": "Say hello /no_think"}]
            )
        assert raw.headers["x-tandem-route"] == "target=edge; mode=non_thinking; reason=soft_switch"
        answer = await ollama.AsyncClient(host=f"http://127.0.0.1:{edge}").chat(
            model="qwen3:14b", think=True, messages=[{"role": "user", "content": "Prove 2 is prime."}]
        )
        assert answer.message.thinking and answer.message.content
        async with AsyncOpenAI(base_url=f"http://127.0.0.1:{http}/v1", api_key="x", max_retries=0) as gw:
            models = [m.id async for m in gw.models.list()]
        assert "qwen3" in models
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode(errors="replace")
    assert proc.returncode == 0, out[-2000:]
    assert "Tandem is up." in out and f"127.0.0.1:{edge}" in out
