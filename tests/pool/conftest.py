"""Builds balancers over configured pools of endpoints that need not exist: choosing and learning
never contact an endpoint."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.pool.litellm_balancer import LitellmBalancer

MakeBalancer = Callable[..., LitellmBalancer]


def pool(name: str, ports: list[int], **fields: Any) -> dict[str, Any]:
    """A pool of vLLM endpoints on loopback ports (nothing listens there)."""
    endpoints = [{"url": f"http://127.0.0.1:{port}/v1", "model": "Qwen/Qwen3-14B"} for port in ports]
    return {"name": name, "endpoints": endpoints, **fields}


def gateway_config(
    pools: list[dict[str, Any]] | None = None, redis_url: str | None = None, **router: Any
) -> GatewayConfig:
    router = {"cooldown_seconds": 60, "allowed_fails": 1, **router}
    pools = pools or [pool("qwen", [9001, 9002, 9003])]
    return GatewayConfig.model_validate({"pools": pools, "router": router, "redis": {"url": redis_url}})


@pytest.fixture
def make_balancer() -> Iterator[MakeBalancer]:
    """`make_balancer(pools=..., redis_url=..., **router_settings)`; each is closed after the test."""
    made: list[LitellmBalancer] = []

    def make(
        pools: list[dict[str, Any]] | None = None, redis_url: str | None = None, **router: Any
    ) -> LitellmBalancer:
        balancer = LitellmBalancer(gateway_config(pools, redis_url, **router))
        made.append(balancer)
        return balancer

    yield make
    for balancer in made:
        balancer.close()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own, on a free loopback port."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
    ]
    process = subprocess.Popen([server, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
