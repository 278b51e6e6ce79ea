"""The edge agent between real parts on loopback.

For the whole session: a real gateway process (`tandem gateway serve`) in front of two
simulated vLLM processes (`tandem sim vllm`: a fast one, and a slow one for streams that must
still be running when the WAN is cut). Per test: a simulated Ollama, a WAN proxy between the
edge and the gateway, and the edge agent itself, in this process (it never imports litellm;
`test_light.py` checks that in a fresh process).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import orjson
import pytest
import yaml
from openai import AsyncOpenAI

from edge_agent.config import EdgeConfig
from edge_agent.server import EdgeServer
from gateway.state.tenants import key_digest
from simulators import OllamaModel, OllamaSimConfig, OllamaSimulator
from tests.edge.wan import WanProxy

ROOT = Path(__file__).resolve().parents[2]
TANDEM = [sys.executable, "-c", "from cli.main import main; main()"]

LOCAL = "qwen3:14b"  # the Ollama model on the box
PLAIN = "llama3.2:3b"  # a local model that cannot think
CLOUD = "qwen3-14b"  # the gateway's name for it (an alias on the edge)
CLOUD_ONLY = "qwen3-32b"  # a model only the gateway serves
SLOW = "qwen3-slow"  # served by the slow engine
LOCAL_CONTEXT = 4096  # the edge's num_ctx
CLOUD_CONTEXT = 32768
EDGE_KEY = "tdm-edge-test-key-0123456789abcdefghijklmnopqrstuvwx"
EDGE_KEY_ENV = "TANDEM_TEST_EDGE_KEY"


@dataclass
class Process:
    """A child process whose output goes to a file (a pipe nobody reads would block it)."""

    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls, args: list[str], log: Path, ready: str, env: dict[str, str] | None = None
    ) -> tuple[Process, re.Match[str]]:
        out = log.open("wb")
        popen = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        proc = cls(popen, log)
        return proc, proc.wait_for(ready)

    def wait_for(self, pattern: str, limit_s: float = 90.0) -> re.Match[str]:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if found := re.search(pattern, text):
                return found
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.popen.args!r} exited {self.popen.returncode}:\n{text[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.popen.args!r} did not print {pattern!r}:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@dataclass
class Cloud:
    grpc_address: str
    http_url: str
    fast_url: str  # the vLLM simulators, for their admin API
    slow_url: str


def start_vllm(tmp: Path, name: str, *extra: str) -> tuple[Process, str]:
    proc, found = Process.start(
        [*TANDEM, "sim", "vllm", "--port", "0", "--context-length", str(CLOUD_CONTEXT), *extra],
        tmp / f"{name}.log",
        r"listening on (http://\S+)",
    )
    return proc, found.group(1)


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """A gateway process over two vLLM simulator processes, for the whole session."""
    tmp = tmp_path_factory.mktemp("cloud")
    fast, fast_url = start_vllm(
        tmp, "vllm-fast", "--model", "Qwen/Qwen3-14B", "--model", "Qwen/Qwen3-32B",
        "--output-tokens", "8", "--reasoning-tokens", "6",
    )  # fmt: skip
    slow, slow_url = start_vllm(
        tmp, "vllm-slow", "--tokens-per-second", "20", "--output-tokens", "64", "--reasoning-tokens", "32"
    )
    config = {
        "grpc": {"port": 0},
        "http": {"port": 0},
        "pools": [
            {"name": CLOUD, "context_length": CLOUD_CONTEXT,
             "endpoints": [{"url": f"{fast_url}/v1", "model": "Qwen/Qwen3-14B"}]},
            {"name": CLOUD_ONLY, "context_length": CLOUD_CONTEXT,
             "endpoints": [{"url": f"{fast_url}/v1", "model": "Qwen/Qwen3-32B"}]},
            {"name": SLOW, "context_length": CLOUD_CONTEXT,
             "endpoints": [{"url": f"{slow_url}/v1", "model": "Qwen/Qwen3-14B"}]},
        ],
        "router": {"first_token_timeout_seconds": 20, "timeout_seconds": 60, "cooldown_seconds": 0},
        # The edges' tenant: the uplink authenticates with EDGE_KEY (see `edge_config`), an edge
        # key (heartbeats need one) for any edge id.
        "auth": {"required": True,
                 "tenants": [{"name": "factory-edges", "edge_keys": [{"sha256": key_digest(EDGE_KEY)}]}]},
        "shutdown_grace_seconds": 2,
    }  # fmt: skip
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "TANDEM_LOG_FORMAT": "json", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    gateway, found = Process.start(
        [*TANDEM, "gateway", "serve", "--config", str(path)],
        tmp / "gateway.log",
        r'\{[^\n]*"gateway_ready"[^\n]*\}',
        env,
    )
    ready = orjson.loads(found.group(0))
    os.environ[EDGE_KEY_ENV] = EDGE_KEY  # read by the in-process edge agents' uplinks
    try:
        yield Cloud(grpc_address=ready["grpc"], http_url=ready["http"], fast_url=fast_url, slow_url=slow_url)
    finally:
        os.environ.pop(EDGE_KEY_ENV, None)
        gateway.stop()
        fast.stop()
        slow.stop()


@pytest.fixture
def slow_cloud_start(cloud: Cloud) -> Iterator[Callable[[float], None]]:
    """Makes the fast engine wait before its first byte (its admin API); undone after the test."""

    def set_slow_start(seconds: float) -> None:
        httpx.post(f"{cloud.fast_url}/_sim/faults", json={"slow_start": seconds}).raise_for_status()

    yield set_slow_start
    httpx.post(f"{cloud.fast_url}/_sim/reset").raise_for_status()


def ollama_config(**overrides: Any) -> OllamaSimConfig:
    fields: dict[str, Any] = {
        "models": [
            OllamaModel(name=LOCAL),
            OllamaModel(name=PLAIN, capabilities=("completion",), family="llama", parameter_size="3.2B"),
        ],
        "output_tokens": 8,
        "reasoning_tokens": 4,
    }
    fields.update(overrides)
    return OllamaSimConfig(**fields)


@pytest.fixture
async def local_ollama() -> AsyncIterator[OllamaSimulator]:
    async with OllamaSimulator(ollama_config()) as sim:
        yield sim


@pytest.fixture
async def wan(cloud: Cloud) -> AsyncIterator[WanProxy]:
    host, port = cloud.grpc_address.rsplit(":", 1)
    proxy = WanProxy(host, int(port))
    await proxy.start()
    yield proxy
    await proxy.stop()


def edge_config(ollama_url: str, uplink_address: str, **overrides: Any) -> EdgeConfig:
    data: dict[str, Any] = {
        "listen": {"port": 0, "max_body_bytes": 256 * 1024},
        "ollama": {
            "url": ollama_url,
            "model": LOCAL,
            "aliases": {CLOUD: LOCAL},
            "num_ctx": LOCAL_CONTEXT,
            "refresh_seconds": 0.2,
            "connect_timeout_seconds": 1,
            "first_token_timeout_seconds": 10,
        },
        "uplink": {
            "address": uplink_address,
            "api_key_env": EDGE_KEY_ENV,
            "models": {LOCAL: CLOUD},
            "first_chunk_timeout_seconds": 20,
            "max_reconnect_backoff_seconds": 0.2,
        },
        # Short probe period so cuts are seen fast; a 1 s deadline so a busy 2-core machine
        # does not look like a dead WAN.
        "breaker": {"probe_interval_seconds": 0.25, "probe_timeout_seconds": 1.0, "retry_after_seconds": 2},
        "edge_id": "edge-test",
        "heartbeat_seconds": 60,
        "shutdown_grace_seconds": 2,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return EdgeConfig.model_validate(data)


StartEdge = Callable[..., Any]


@pytest.fixture
async def start_edge(local_ollama: OllamaSimulator, wan: WanProxy) -> AsyncIterator[StartEdge]:
    """Starts an edge agent over the test's Ollama and WAN; keyword arguments override config
    sections (`ollama_url=` points it at another Ollama)."""
    started: list[EdgeServer] = []

    async def start(*, ollama_url: str | None = None, **overrides: Any) -> EdgeServer:
        server = EdgeServer(edge_config(ollama_url or local_ollama.url, wan.address, **overrides))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def edge(start_edge: StartEdge) -> EdgeServer:
    server: EdgeServer = await start_edge()
    return server


async def until(condition: Callable[[], bool]) -> None:
    """Waits for a condition of another component that has no event to wait on."""
    while not condition():  # noqa: ASYNC110 - polled: the component exposes no event
        await asyncio.sleep(0.01)


class Routes:
    """Collects `x-tandem-route` from every response an official client receives."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def hook(self, response: httpx.Response) -> None:
        self.seen.append(parse_route(response.headers.get("x-tandem-route", "")))

    @property
    def last(self) -> dict[str, str]:
        return self.seen[-1]


def parse_route(header: str) -> dict[str, str]:
    """`target=edge; mode=non_thinking; reason=classifier` as a dict."""
    return dict(part.split("=", 1) for part in header.split("; ") if "=" in part)


@pytest.fixture
def routes() -> Routes:
    return Routes()


@pytest.fixture
def ollama_client(edge: EdgeServer, routes: Routes) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=edge.url, event_hooks={"response": [routes.hook]})


@pytest.fixture
async def openai_client(edge: EdgeServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{edge.url}/v1", api_key="unused", max_retries=0) as client:
        yield client
