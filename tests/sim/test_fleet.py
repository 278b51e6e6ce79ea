"""`tandem sim fleet` scales vLLM simulators on a demand metric and publishes the ready ones in DNS."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.message
import dns.resolver
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from simulators.fleet import DemandUnavailable, parse_demand

TANDEM = Path(sys.executable).with_name("tandem")  # the console script of this environment
NAME = "vllm.fleet.test"
STARTUP = {
    "dns": re.compile(r"dns on 127\.0\.0\.1:(\d+) name "),
    "replicas": re.compile(r"replicas on 127\.0\.0\.N:(\d+)"),
    "status": re.compile(r"status on (http://\S+)"),
}


def test_demand_is_the_sum_of_the_pools_series() -> None:
    page = (
        "# HELP tandem_pool_demand Requests in flight plus held, per pool.\n"
        "# TYPE tandem_pool_demand gauge\n"
        'tandem_pool_demand{pool="qwen",instance="gw-1"} 3.0\n'
        'tandem_pool_demand{pool="qwen",instance="gw-2"} 2.0\n'
        'tandem_pool_demand{pool="other"} 40.0\n'
        "# TYPE tandem_requests_total counter\n"
        'tandem_requests_total{pool="qwen"} 100.0\n'
    )

    assert parse_demand(page, "qwen") == 5.0


def test_a_page_without_the_pools_series_reads_as_no_demand() -> None:
    assert parse_demand('tandem_pool_demand{pool="other"} 4\n', "qwen") == 0.0


def test_a_page_that_is_not_prometheus_text_is_unavailable() -> None:
    with pytest.raises(DemandUnavailable):
        parse_demand('tandem_pool_demand{pool="qwen"} many\n', "qwen")


class DemandPage:
    """The gateway's `/metrics`, reduced to the gauge the fleet reads; the test sets it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauge = Gauge("tandem_pool_demand", "demand", ["pool"], registry=self.registry)
        self.url = ""

    def set(self, value: float) -> None:
        self.gauge.labels(pool="qwen").set(value)

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")


@pytest.fixture
async def demand() -> AsyncIterator[DemandPage]:
    page = DemandPage()
    app = web.Application()
    app.router.add_get("/metrics", page.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    page.url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    yield page
    await runner.cleanup()


@dataclass
class RunningFleet:
    process: asyncio.subprocess.Process
    dns_port: int
    replica_port: int
    status_url: str
    lines: list[str] = field(default_factory=list)

    async def addresses(self) -> list[str]:
        """The name's A records, asked of the fleet's own dnsmasq."""
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.dns_port
        try:
            answer = await resolver.resolve(NAME, "A", lifetime=1)
        except dns.resolver.NXDOMAIN:
            return []
        return sorted(record.address for record in answer)

    async def status(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.status_url) as response:
            body: dict[str, Any] = await response.json()
            return body


@pytest.fixture
async def run_fleet(demand: DemandPage) -> AsyncIterator[Callable[..., Awaitable[RunningFleet]]]:
    started: list[asyncio.subprocess.Process] = []
    readers: list[asyncio.Task[None]] = []

    async def start(*args: str) -> RunningFleet:
        process = await asyncio.create_subprocess_exec(
            str(TANDEM), "sim", "fleet", "--metrics-url", demand.url, "--pool", "qwen",
            "--target-per-replica", "2", "--polling-interval", "0.1", "--output-tokens", "4", *args,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        started.append(process)
        assert process.stdout is not None
        found: dict[str, str] = {}
        lines: list[str] = []
        async with asyncio.timeout(15):
            while len(found) < len(STARTUP):
                line = (await process.stdout.readline()).decode()
                assert line, f"the fleet exited before it started: {lines}"
                lines.append(line)
                for key, pattern in STARTUP.items():
                    if match := pattern.search(line):
                        found[key] = match.group(1)
        fleet = RunningFleet(process, int(found["dns"]), int(found["replicas"]), found["status"], lines)
        readers.append(asyncio.create_task(_keep_reading(process, fleet.lines)))
        return fleet

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()
    for reader in readers:
        reader.cancel()


async def _keep_reading(process: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert process.stdout is not None
    while line := await process.stdout.readline():
        lines.append(line.decode())


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 (polling another process: DNS and /status)
            await asyncio.sleep(0.05)


async def test_demand_brings_replicas_up_after_the_cold_start_they_answer_and_go_back_to_zero(
    demand: DemandPage, run_fleet: Callable[..., Awaitable[RunningFleet]]
) -> None:
    fleet = await run_fleet(
        "--max-replicas", "3", "--cold-start-seconds", "1", "--cooldown-period", "1.5",
        "--scale-down-window", "0.3", "--drain-seconds", "0.2",
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    assert await fleet.addresses() == []  # at zero: NXDOMAIN, an empty pool

    demand.set(3)  # ceil(3 / 2) = 2 replicas
    rose_at = loop.time()
    await eventually(lambda: _has(fleet, 2))
    up_after = loop.time() - rose_at
    address = (await fleet.addresses())[0]
    async with aiohttp.ClientSession() as session:
        url = f"http://{address}:{fleet.replica_port}/v1/chat/completions"
        body = {"model": "Qwen/Qwen3-14B", "messages": [{"role": "user", "content": "Hi /no_think"}]}
        async with session.post(url, json=body) as response:
            status, answer = response.status, await response.json()
    demand.set(0)
    fell_at = loop.time()
    await eventually(lambda: _has(fleet, 0, live=True))
    down_after = loop.time() - fell_at
    scalings = [
        (e["before"], e["after"], e["reason"])
        for e in (await fleet.status())["events"]
        if e["kind"] == "scale"
    ]

    assert up_after >= 1.0  # published only after the cold start
    assert status == 200 and answer["choices"][0]["message"]["content"]
    assert down_after >= 1.5 - 0.1  # the cooldown, from the last active reading (one poll before)
    assert scalings == [(0, 2, "activated"), (2, 1, "scale-down"), (1, 0, "cooldown")]
    assert (await fleet.status())["replica_seconds"] > 2 * 1.0


async def _has(fleet: RunningFleet, count: int, live: bool = False) -> bool:
    if len(await fleet.addresses()) != count:
        return False
    if not live:
        return True
    status = await fleet.status()
    return len(status["starting"]) + len(status["ready"]) + len(status["draining"]) == count


async def test_sigterm_stops_the_replicas_and_the_dns_server_and_exits_zero(
    run_fleet: Callable[..., Awaitable[RunningFleet]],
) -> None:
    fleet = await run_fleet("--min-replicas", "1")
    await eventually(lambda: _has(fleet, 1))
    (address,) = await fleet.addresses()

    fleet.process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(fleet.process.wait(), 10)

    assert code == 0
    with pytest.raises(OSError):
        await asyncio.open_connection(address, fleet.replica_port)
    with pytest.raises((dns.exception.Timeout, OSError)):  # nobody answers
        await dns.asyncquery.udp(
            dns.message.make_query(NAME, "A"), "127.0.0.1", port=fleet.dns_port, timeout=0.3
        )
    assert any("replica" in line and "ready" in line for line in fleet.lines)
