"""Shared state against a real Redis: each test gets a redis-server of its own on a free loopback
port (so a test can kill and restart it), and a key prefix of its own."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gateway.config import Redis as RedisConfig
from gateway.server import GatewayServer
from gateway.state import RedisState, StateHealth
from gateway.state.tenants import MemoryTenants, RedisTenants, TenantStore
from simulators.vllm import VllmSimulator
from tandem.metrics import Metrics

# The vLLM simulators and gateway helpers of the gateway tests, reused here.
from tests.gateway import conftest as gateway_tests
from tests.gateway.conftest import gateway_config

engines = gateway_tests.engines  # the fixture: two vLLM simulators

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, *, up: bool = True, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            if up:
                return
        except OSError:
            if not up:
                return
        assert time.monotonic() < deadline, f"port {port} did not go {'up' if up else 'down'}"
        time.sleep(0.02)


@dataclass
class RedisServer:
    """A redis-server process this test owns: `kill()` it like a crash, `start()` it again."""

    directory: Path
    port: int = field(default_factory=free_port)
    tls: list[str] = field(default_factory=list)  # TLS settings: then `port` is the TLS port
    persist: bool = False  # an append-only file, synced on every write: data survives a SIGKILL
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = ["--bind", "127.0.0.1", "--save", "", "--dir", str(self.directory)]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), *self.tls]
        else:
            args += ["--port", str(self.port)]
        self.process = subprocess.Popen(
            [REDIS_SERVER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        """SIGKILL: Redis dies as in a crash, its data with it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own (tests never share keys, even on a shared Redis)."""
    return f"t{uuid.uuid4().hex[:10]}:"


def redis_config(url: str, prefix: str, **fields: Any) -> RedisConfig:
    return RedisConfig.model_validate({"url": url, "key_prefix": prefix, **fields})


def make_state(server: RedisServer, prefix: str, **fields: Any) -> RedisState:
    config = redis_config(server.url, prefix, **{"probe_seconds": 0.1, **fields})
    return RedisState(config, StateHealth(Metrics("test")))


@pytest.fixture
async def redis_state(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisState]:
    state = make_state(redis_server, prefix)
    yield state
    await state.close()


@pytest.fixture(params=["memory", "redis"])
async def tenant_store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[TenantStore]:
    """The same behaviour from both stores."""
    if request.param == "memory":
        yield MemoryTenants()
        return
    state = make_state(request.getfixturevalue("redis_server"), prefix)
    yield RedisTenants(state)
    await state.close()


StartGateway = Callable[..., Awaitable[GatewayServer]]


@pytest.fixture
async def start_gateway(
    engines: list[VllmSimulator], redis_server: RedisServer, prefix: str
) -> AsyncIterator[StartGateway]:
    """Starts gateway replicas over the simulators, sharing this test's Redis; API keys required.
    Keyword arguments override config sections (`redis`, `auth` and `limits` are merged)."""
    started: list[GatewayServer] = []

    async def start(**overrides: Any) -> GatewayServer:
        sections: dict[str, dict[str, Any]] = {
            "redis": {"url": redis_server.url, "key_prefix": prefix, "probe_seconds": 0.1},
            "auth": {"required": True, "cache_seconds": 0.5},
        }
        for name, base in sections.items():
            overrides[name] = {**base, **overrides.get(name, {})}
        server = GatewayServer(gateway_config([e.url for e in engines], **overrides))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
def tenants(redis_state: RedisState) -> RedisTenants:
    """The tenants and keys of the gateways `start_gateway` starts."""
    return RedisTenants(redis_state)
