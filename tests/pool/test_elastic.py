"""The gateway on an elastic pool: endpoints from a real DNS server (dnsmasq) that come and go,
requests held while the pool is at zero, the demand metric an autoscaler reads, and the
least-loaded choice, all against vLLM simulators on their own loopback addresses."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI, RateLimitError

from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tests.pool.conftest import DnsServer

NAME = "vllm.pool.test"
SERVED = "Qwen/Qwen3-14B"
FAST = [{"role": "user", "content": "Say hello. /no_think"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """Simulated vLLM replicas on 127.0.0.N, all on one port, published through DNS."""

    def __init__(self, dns: DnsServer) -> None:
        self.dns = dns
        self.port = _free_port()
        self.sims: dict[str, VllmSimulator] = {}

    async def up(self, host: str, **config: Any) -> VllmSimulator:
        settings: dict[str, Any] = {"output_tokens": 8, **config}
        sim = VllmSimulator(
            VllmSimConfig(host=host, port=self.port, models=[VllmModel(name=SERVED)], **settings)
        )
        await sim.start()
        self.sims[host] = sim
        self.publish()
        return sim

    async def down(self, host: str) -> None:
        sim = self.sims.pop(host)
        self.publish()
        await sim.stop()

    def publish(self) -> None:
        self.dns.set(NAME, sorted(self.sims))

    async def close(self) -> None:
        for sim in self.sims.values():
            await sim.stop()


@pytest.fixture
async def fleet(dns_server: DnsServer) -> AsyncIterator[Fleet]:
    f = Fleet(dns_server)
    yield f
    await f.close()


def config(dns: DnsServer, port: int, router: dict[str, Any] | None = None, **pool: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "grpc": {"port": 0},
            "http": {"port": 0, "sse_heartbeat_seconds": 0.2},
            "pools": [
                {
                    "name": "qwen3",
                    "discovery": {
                        "name": NAME,
                        "port": port,
                        "model": SERVED,
                        "nameserver": dns.nameserver,
                        "interval_seconds": 0.5,
                    },
                    **pool,
                }
            ],
            "router": {"first_token_timeout_seconds": 5, "cooldown_seconds": 1, **(router or {})},
            "shutdown_grace_seconds": 1,
        }
    )


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[[GatewayConfig], Any]]:
    started: list[GatewayServer] = []

    async def start(cfg: GatewayConfig) -> GatewayServer:
        server = GatewayServer(cfg)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polled: discovery runs on its own interval
            await asyncio.sleep(0.05)


def client(gateway: GatewayServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"http://127.0.0.1:{gateway.http_port}/v1", api_key="x", max_retries=0)


async def metric(gateway: GatewayServer, name: str) -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{gateway.http_port}/metrics") as resp,
    ):
        text = await resp.text()
    found = re.search(rf'^{name}\{{pool="qwen3"\}} (\S+)$', text, re.M)
    assert found, f"{name} is not exported"
    return float(found.group(1))


async def test_endpoints_that_appear_in_dns_join_the_pool_without_a_restart(
    fleet: Fleet, start_gateway: Callable[[GatewayConfig], Any]
) -> None:
    first = await fleet.up("127.0.0.2")
    gateway = await start_gateway(config(fleet.dns, fleet.port))
    second = await fleet.up("127.0.0.3")
    await eventually(lambda: len(gateway.service.balancer.upstreams("qwen3")) == 2)
    async with client(gateway) as c:
        for _ in range(20):
            await c.chat.completions.create(model="qwen3", messages=FAST)
    assert first.requests and second.requests  # both took work


async def test_an_endpoint_gone_from_dns_takes_no_new_requests_and_its_stream_finishes(
    fleet: Fleet, start_gateway: Callable[[GatewayConfig], Any]
) -> None:
    leaving = await fleet.up("127.0.0.2", tokens_per_second=20, output_tokens=20)
    gateway = await start_gateway(config(fleet.dns, fleet.port))
    async with client(gateway) as c:
        stream = await c.chat.completions.create(model="qwen3", messages=FAST, stream=True)
        staying = await fleet.up("127.0.0.3")
        fleet.sims.pop("127.0.0.2")
        fleet.publish()  # gone from DNS while its stream runs
        await eventually(lambda: len(gateway.service.balancer.upstreams("qwen3")) == 1)
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].choices[0].finish_reason == "stop" or chunks[-1].usage is not None
        served_before = len(leaving.requests)
        for _ in range(5):
            await c.chat.completions.create(model="qwen3", messages=FAST)
    assert len(leaving.requests) == served_before and len(staying.requests) == 5
    await leaving.stop()


async def test_a_burst_at_zero_endpoints_is_held_and_answered_once_one_is_ready(
    fleet: Fleet, start_gateway: Callable[[GatewayConfig], Any]
) -> None:
    gateway = await start_gateway(
        config(fleet.dns, fleet.port, cold_start={"max_pending": 50, "timeout_seconds": 30})
    )
    async with client(gateway) as c:
        burst = [
            asyncio.create_task(c.chat.completions.create(model="qwen3", messages=FAST, stream=i % 2 == 0))
            for i in range(10)
        ]
        await eventually(lambda: gateway.service.elastic.held("qwen3") == 10)
        assert await metric(gateway, "tandem_pool_demand") == 10  # what the autoscaler scales on
        await fleet.up("127.0.0.2")  # the first replica is ready
        answers = await asyncio.gather(*burst)
    assert len(answers) == 10
    assert await metric(gateway, "tandem_pool_demand") == 0


async def test_past_max_pending_a_request_gets_429_with_retry_after(
    fleet: Fleet, start_gateway: Callable[[GatewayConfig], Any]
) -> None:
    gateway = await start_gateway(
        config(fleet.dns, fleet.port, cold_start={"max_pending": 2, "timeout_seconds": 30})
    )
    async with client(gateway) as c:
        held = [
            asyncio.create_task(c.chat.completions.create(model="qwen3", messages=FAST)) for _ in range(2)
        ]
        await eventually(lambda: gateway.service.elastic.held("qwen3") == 2)
        with pytest.raises(RateLimitError) as refused:
            await c.chat.completions.create(model="qwen3", messages=FAST)
        assert "cold_start.max_pending" in str(refused.value)
        assert refused.value.response.headers.get("retry-after")
        await fleet.up("127.0.0.2")
        await asyncio.gather(*held)


async def test_a_held_request_times_out_with_503(
    fleet: Fleet, start_gateway: Callable[[GatewayConfig], Any]
) -> None:
    gateway = await start_gateway(
        config(fleet.dns, fleet.port, cold_start={"max_pending": 5, "timeout_seconds": 0.5})
    )
    async with aiohttp.ClientSession() as http:
        body = {"model": "qwen3", "messages": FAST}
        async with http.post(f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions", json=body) as resp:
            assert resp.status == 503
            assert "cold_start.timeout_seconds" in (await resp.json())["error"]["message"]
            assert resp.headers.get("Retry-After")


async def test_without_cold_start_an_empty_pool_answers_503_at_once(
    fleet: Fleet, start_gateway: Callable[[GatewayConfig], Any]
) -> None:
    gateway = await start_gateway(config(fleet.dns, fleet.port))
    async with aiohttp.ClientSession() as http:
        body = {"model": "qwen3", "messages": FAST}
        async with http.post(f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions", json=body) as resp:
            assert resp.status == 503


async def test_least_loaded_sends_new_work_away_from_a_busy_engine(
    fleet: Fleet, start_gateway: Callable[[GatewayConfig], Any]
) -> None:
    busy = await fleet.up("127.0.0.2", tokens_per_second=10, output_tokens=40, max_num_seqs=2)
    idle = await fleet.up("127.0.0.3")
    scrape = {"interval_seconds": 0.2, "timeout_seconds": 0.2}
    cfg = config(fleet.dns, fleet.port, router={"strategy": "least-loaded", "load_scrape": scrape})
    gateway = await start_gateway(cfg)
    await eventually(lambda: len(gateway.service.balancer.upstreams("qwen3")) == 2)
    async with AsyncOpenAI(
        base_url=f"http://{busy.config.host}:{busy.config.port}/v1", api_key="x", max_retries=0
    ) as direct:
        # Work the gateway does not know about: only the engine's /metrics shows it.
        backlog = [
            asyncio.create_task(direct.chat.completions.create(model=SERVED, messages=FAST)) for _ in range(6)
        ]
        load = gateway.service.elastic.load
        assert load is not None
        busy_id = next(u.id for u in gateway.service.balancer.upstreams("qwen3") if "127.0.0.2" in u.base_url)
        await eventually(lambda: (r := load.load(busy_id)) is not None and r.waiting > 0)
        served_before = len(idle.requests)
        async with client(gateway) as c:
            for _ in range(10):
                await c.chat.completions.create(model="qwen3", messages=FAST)
        assert len(idle.requests) - served_before == 10
        for task in backlog:
            task.cancel()
        await asyncio.gather(*backlog, return_exceptions=True)


async def test_a_held_stream_is_kept_alive_and_then_answered(
    fleet: Fleet, start_gateway: Callable[[GatewayConfig], Any]
) -> None:
    gateway = await start_gateway(
        config(fleet.dns, fleet.port, cold_start={"max_pending": 5, "timeout_seconds": 30})
    )
    body = {"model": "qwen3", "messages": FAST, "stream": True}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200  # answered at once, while the pool is at zero
        assert resp.headers["x-tandem-route"].startswith("target=cloud")
        seen = b""
        while seen.count(b": keep-alive") < 2:  # comments every sse_heartbeat_seconds
            seen += await resp.content.readany()
        await fleet.up("127.0.0.2")
        seen += await resp.content.read()
    assert b"data: [DONE]" in seen and b'"content"' in seen


async def test_a_held_stream_that_times_out_ends_with_an_error_event(
    fleet: Fleet, start_gateway: Callable[[GatewayConfig], Any]
) -> None:
    gateway = await start_gateway(
        config(fleet.dns, fleet.port, cold_start={"max_pending": 5, "timeout_seconds": 0.6})
    )
    body = {"model": "qwen3", "messages": FAST, "stream": True}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        text = (await resp.content.read()).decode()
    assert ": keep-alive" in text and "cold_start.timeout_seconds" in text
