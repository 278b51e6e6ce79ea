"""An edge in front of a gateway whose cloud pool scales from zero: the pool's endpoints come
from a real DNS server (dnsmasq), empty at first (cold), then one vLLM simulator (warm). The
heartbeat reply tells the edge which; `policy.cloud_cold` decides whether thinking work waits
for the pool or runs on the local Ollama."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import orjson
import pytest
import yaml

from edge_agent.server import EdgeServer
from gateway.state.tenants import key_digest
from simulators import OllamaSimulator
from simulators.dnsmasq import free_dns_port
from tests.edge.conftest import (
    CLOUD_CONTEXT,
    EDGE_KEY,
    EDGE_KEY_ENV,
    LOCAL,
    TANDEM,
    Process,
    Routes,
    edge_config,
    start_vllm,
)
from tests.pool.conftest import DnsServer

ELASTIC = "qwen3-elastic"  # the gateway's pool that scales from zero
NAME = "vllm.pool.test"  # its endpoints' DNS name
HELLO: list[Any] = [{"role": "user", "content": "Say hello to the line supervisor."}]


@dataclass
class ElasticCloud:
    grpc_address: str
    http_url: str
    dns: DnsServer
    engine_host: str  # the address the pool's one replica listens on

    def cold(self) -> None:
        self.dns.set(NAME, [])

    def warm(self) -> None:
        self.dns.set(NAME, [self.engine_host])

    def held(self) -> float:
        """Requests the gateway holds for the pool now (`tandem_pool_held`)."""
        text = httpx.get(f"{self.http_url}/metrics").text
        series = f'tandem_pool_held{{pool="{ELASTIC}"}}'
        line = next(line for line in text.splitlines() if line.startswith(series))
        return float(line.rsplit(" ", 1)[1])


@pytest.fixture(scope="module")
def elastic_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ElasticCloud]:
    """dnsmasq, one vLLM simulator and a gateway process whose pool follows the DNS name,
    holding requests while it has no endpoint; heartbeats every second."""
    tmp = tmp_path_factory.mktemp("elastic")
    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(exe).exists():
        pytest.fail("dnsmasq is missing: `bash deploy/bootstrap.sh --test` installs it (dnsmasq-base)")
    (tmp / "dns").mkdir()
    dns = DnsServer(exe, tmp / "dns", free_dns_port())
    dns.set(NAME, [])
    dns.start()
    engine, url = start_vllm(tmp, "vllm", "--model", "Qwen/Qwen3-14B", "--output-tokens", "8")
    host, port = url.removeprefix("http://").rsplit(":", 1)
    config = {
        "grpc": {"port": 0},
        "http": {"port": 0},
        "pools": [
            {"name": ELASTIC, "context_length": CLOUD_CONTEXT,
             "discovery": {"name": NAME, "port": int(port), "model": "Qwen/Qwen3-14B",
                           "nameserver": dns.nameserver, "interval_seconds": 0.5},
             "cold_start": {"max_pending": 8, "timeout_seconds": 60}},
        ],
        "router": {"first_token_timeout_seconds": 20, "timeout_seconds": 60, "cooldown_seconds": 0},
        "auth": {"required": True,
                 "tenants": [{"name": "factory-edges", "edge_keys": [{"sha256": key_digest(EDGE_KEY)}]}]},
        "fleet": {"heartbeat_seconds": 1},
        "shutdown_grace_seconds": 2,
    }  # fmt: skip
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "TANDEM_LOG_FORMAT": "json", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    gateway, found = Process.start(
        [*TANDEM, "gateway", "serve", "--config", str(tmp / "gateway.yaml")],
        tmp / "gateway.log",
        r'\{[^\n]*"gateway_ready"[^\n]*\}',
        env,
    )
    ready = orjson.loads(found.group(0))
    # Read by the in-process edges' uplinks; the session's `cloud` may have set it too: left as found.
    before = os.environ.get(EDGE_KEY_ENV)
    os.environ[EDGE_KEY_ENV] = EDGE_KEY
    try:
        yield ElasticCloud(ready["grpc"], ready["http"], dns, host)
    finally:
        if before is None:
            os.environ.pop(EDGE_KEY_ENV, None)
        gateway.stop()
        engine.stop()
        dns.stop()


@pytest.fixture
async def start_edge(
    elastic_cloud: ElasticCloud, local_ollama: OllamaSimulator
) -> AsyncIterator[Callable[..., Any]]:
    """An edge over the test's Ollama whose thinking work goes to the elastic pool, under the
    given `cloud_cold` policy; the pool starts each test cold."""
    elastic_cloud.cold()
    started: list[EdgeServer] = []

    async def start(cloud_cold: str, first_chunk_timeout_seconds: float = 20) -> EdgeServer:
        config = edge_config(
            local_ollama.url,
            elastic_cloud.grpc_address,
            uplink={"models": {LOCAL: ELASTIC}, "first_chunk_timeout_seconds": first_chunk_timeout_seconds},
            policy={"cloud_cold": cloud_cold},
            heartbeat_seconds=0.2,
        )
        server = EdgeServer(config)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


async def eventually(check: Callable[[], bool], within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polled: heartbeats and DNS run on their own intervals
            await asyncio.sleep(0.05)


def client_for(edge: EdgeServer) -> tuple[ollama.AsyncClient, Routes]:
    routes = Routes()
    return ollama.AsyncClient(host=edge.url, event_hooks={"response": [routes.hook]}), routes


async def test_degrade_answers_thinking_work_here_while_the_pool_is_cold_and_forwards_once_warm(
    start_edge: Callable[..., Any], elastic_cloud: ElasticCloud
) -> None:
    edge: EdgeServer = await start_edge("degrade")
    client, routes = client_for(edge)
    await eventually(lambda: edge.service.cloud_cold(LOCAL))
    reply = await client.chat(model=LOCAL, messages=HELLO, think=True)
    assert reply.message.thinking and reply.message.content
    assert routes.last == {"target": "edge", "mode": "thinking", "reason": "cloud_cold"}

    elastic_cloud.warm()
    await eventually(lambda: not edge.service.cloud_cold(LOCAL))
    reply = await client.chat(model=LOCAL, messages=HELLO, think=True)
    assert reply.message.thinking and reply.message.content
    assert routes.last["target"] == "cloud" and routes.last["mode"] == "thinking"


async def test_wait_forwards_thinking_work_to_the_cold_pool_which_answers_once_warm(
    start_edge: Callable[..., Any], elastic_cloud: ElasticCloud
) -> None:
    # A first-chunk deadline shorter than the hold: the edge waits the pool's estimated cold
    # start on top of it rather than calling the held request a dead link.
    edge: EdgeServer = await start_edge("wait", first_chunk_timeout_seconds=1)
    client, routes = client_for(edge)
    await eventually(lambda: edge.service.cloud_cold(LOCAL))
    waiting = asyncio.create_task(client.chat(model=LOCAL, messages=HELLO, think=True))
    await eventually(lambda: elastic_cloud.held() == 1)  # the gateway holds it for the pool
    await asyncio.sleep(2)
    assert not waiting.done() and elastic_cloud.held() == 1

    elastic_cloud.warm()
    reply = await waiting
    assert reply.message.thinking and reply.message.content
    assert routes.last["target"] == "cloud" and routes.last["mode"] == "thinking"
