"""`tandem sim fleet`: Kubernetes + KEDA for one pool of vLLM simulators, on one machine.

Every polling interval the fleet reads the gateway's demand metric (`tandem_pool_demand{pool=
"NAME"}`, scraped from one or more Prometheus pages over `tandem.transport.Transport`), asks the
`Autoscaler` (KEDA + HPA, `simulators/autoscaler.py`) how many replicas there should be, and
makes it so, as a ReplicaSet would:

- **start**: a `tandem sim vllm` process on its own loopback address (127.0.0.N, one port shared
  by all, as pods share a container port); it is *starting* until it listens and the cold-start
  delay since its start has passed (model loading), then *ready*: published as an A record of
  the fleet's DNS name (`DnsPublisher`, a dnsmasq of its own), as a headless Service lists
  ready pods.
- **stop**: unpublished first (it takes no new requests once the gateway re-resolves), then
  *draining* for the drain grace (in-flight streams finish; a pod's terminationGracePeriod with
  a preStop sleep), then SIGTERM. A starting replica is stopped at once (it has no traffic).
  Which go first: starting before ready, newest first (a ReplicaSet deletes unready pods first).
- **crash**: a replica whose process exits on its own is unpublished and replaced on the next
  poll.

A failed read of the metric changes nothing (KEDA without a `fallback` keeps the count on a
scaler error); a page without the pool's series reads as 0 (the Prometheus scaler's
`ignoreNullValues: true`, its default).

`Fleet.status()` (served as JSON on `/status`) holds the replicas by state, the replica-seconds
used so far (every live process counts: starting, ready or draining, as a pod holds its GPU
through all three) and the events with their times.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from simulators.autoscaler import Autoscaler, ScalingPolicy
from simulators.children import DIE_WITH_PARENT, terminate
from simulators.dnsmasq import DnsPublisher
from tandem.transport import Transport, Unreachable

DEMAND = "tandem_pool_demand"
_MAX_PAGE = 8 * 1024 * 1024


class DemandUnavailable(Exception):
    """The demand metric could not be read (unreachable, an error status, not Prometheus text)."""


def parse_demand(text: str, pool: str) -> float:
    """The pool's demand in a Prometheus text page: the sum of its `tandem_pool_demand` series
    (one per gateway process), 0 when the page has none (no request has touched the pool yet)."""
    lines = [line for line in text.splitlines() if _demand_line(line)]
    total = 0.0
    try:
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for sample in family.samples:
                if sample.name == DEMAND and sample.labels.get("pool") == pool:
                    total += float(sample.value)
    except ValueError as exc:
        raise DemandUnavailable(f"not Prometheus text: {exc}") from None
    if math.isnan(total):
        raise DemandUnavailable(f"{DEMAND} is NaN")
    return total


def _demand_line(line: str) -> bool:
    if line.startswith("#"):
        parts = line.split(maxsplit=3)
        return len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and parts[2] == DEMAND
    return line.split("{", 1)[0].split(" ", 1)[0] == DEMAND


class DemandReader:
    """Reads the pool's demand from every metrics URL (summed, as a Prometheus `sum()` over the
    gateway's processes would)."""

    def __init__(self, transport: Transport, urls: Sequence[str], pool: str, timeout: float) -> None:
        self._transport = transport
        self._urls = list(urls)
        self._pool = pool
        self._timeout = timeout

    async def read(self) -> float:
        return sum(await asyncio.gather(*(self._read_one(url) for url in self._urls)))

    async def _read_one(self, url: str) -> float:
        timeout = self._timeout
        try:
            async with asyncio.timeout(timeout):
                response = await self._transport.request("GET", url, connect_s=timeout, total_s=timeout)
                try:
                    if response.status != 200:
                        raise DemandUnavailable(f"{url}: status {response.status}")
                    if int(response.headers.get("Content-Length") or 0) > _MAX_PAGE:
                        raise DemandUnavailable(f"{url}: page too large")
                    body = await response.read()
                finally:
                    response.release()
        except TimeoutError:
            raise DemandUnavailable(f"{url}: no answer within {timeout} s") from None
        except Unreachable as exc:
            raise DemandUnavailable(f"{url}: {exc}") from None
        return parse_demand(body.decode("utf-8", "replace"), self._pool)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """What `tandem sim fleet` was told (its command line, validated)."""

    metrics_urls: tuple[str, ...]
    pool: str
    policy: ScalingPolicy
    polling_interval: float = 30.0  # KEDA `pollingInterval`
    name: str = "vllm.fleet.test"
    dns_port: int = 0  # 0: a free one
    replica_port: int = 0  # 0: a free one, shared by every replica's address
    status_port: int = 0  # 0: a free one
    cold_start_seconds: float = 0.0
    drain_seconds: float = 30.0
    vllm_args: tuple[str, ...] = ()  # passed to every `tandem sim vllm`
    first_address: int = 2  # replicas on 127.0.0.N, N from here
    dnsmasq: str | None = None

    def __post_init__(self) -> None:
        if not self.metrics_urls:
            raise ValueError("at least one metrics URL is needed")
        if not self.polling_interval > 0:
            raise ValueError(f"polling_interval must be positive, got {self.polling_interval}")
        if self.cold_start_seconds < 0 or self.drain_seconds < 0:
            raise ValueError("cold_start_seconds and drain_seconds must be >= 0")
        if not 2 <= self.first_address <= 254 or self.first_address + self.policy.max_replicas > 255:
            raise ValueError(f"127.0.0.{self.first_address} plus max_replicas must stay within 127.0.0.254")


@dataclass(eq=False)
class Replica:
    """One replica's process and its times (on the event loop's clock)."""

    address: str
    started_at: float
    state: str = "starting"  # starting | ready | draining | stopped
    ready_at: float | None = None
    stopped_at: float | None = None
    process: asyncio.subprocess.Process | None = None
    removed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def seconds(self, now: float) -> float:
        return (self.stopped_at if self.stopped_at is not None else now) - self.started_at

    def ready_seconds(self, now: float) -> float:
        if self.ready_at is None:
            return 0.0
        return (self.stopped_at if self.stopped_at is not None else now) - self.ready_at


class Fleet:
    """The running fleet: a poll loop, its replicas, the DNS name and the status endpoint."""

    def __init__(
        self,
        config: FleetConfig,
        transport: Transport | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.autoscaler = Autoscaler(config.policy)
        self.events: list[dict[str, Any]] = []
        self.demand: float | None = None
        self._echo = echo
        self._transport = transport or Transport()
        self._owns_transport = transport is None
        self._reader = DemandReader(
            self._transport, config.metrics_urls, config.pool, timeout=min(3.0, config.polling_interval)
        )
        self._tmp = tempfile.TemporaryDirectory(prefix="tandem-fleet-")
        self.dns = DnsPublisher(config.name, Path(self._tmp.name), config.dns_port, exe=config.dnsmasq)
        self.replica_port = config.replica_port or _free_tcp_port()
        self.replicas: list[Replica] = []  # every replica ever started, oldest first
        self.status_url = ""
        self._runner: web.AppRunner | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._failing: str | None = None
        self._t0 = 0.0

    async def start(self) -> None:
        self._t0 = asyncio.get_running_loop().time()
        await self.dns.start()
        app = web.Application()
        app.router.add_get("/status", self._status_handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.config.status_port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.status_url = f"http://127.0.0.1:{port}/status"
        self._loop_task = asyncio.create_task(self._run(), name="fleet-poll")

    async def stop(self) -> None:
        """Stops everything at once: the poll loop, every replica (no drain), dnsmasq."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = [r.task for r in self.replicas if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.dns.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._owns_transport:
            await self._transport.close()
        self._tmp.cleanup()

    def status(self) -> dict[str, Any]:
        """The fleet's state now (the `/status` body)."""
        now = asyncio.get_running_loop().time()
        by_state = {state: [r.address for r in self.replicas if r.state == state]
                    for state in ("starting", "ready", "draining")}  # fmt: skip
        return {
            "pool": self.config.pool,
            "name": self.config.name,
            "nameserver": self.dns.server,
            "port": self.replica_port,
            "uptime_seconds": now - self._t0,
            "demand": self.demand,
            "desired": self.autoscaler.replicas,
            **by_state,
            "published": list(self.dns.addresses),
            "replica_seconds": sum(r.seconds(now) for r in self.replicas),
            "ready_replica_seconds": sum(r.ready_seconds(now) for r in self.replicas),
            "events": self.events,
        }

    async def _status_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    # The control loop.

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.poll()
            next_at = max(next_at + self.config.polling_interval, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def poll(self) -> None:
        """One reading of the metric, one decision, and the replicas made to match it."""
        try:
            demand = await self._reader.read()
        except DemandUnavailable as exc:
            if self._failing is None:
                self._event("metric-failed", error=str(exc))
            self._failing = str(exc)
            self._reconcile(self.autoscaler.replicas)  # KEDA without a fallback: the count stays
            return
        if self._failing is not None:
            self._failing = None
            self._event("metric-recovered")
        self.demand = demand
        before = self.autoscaler.replicas
        decision = self.autoscaler.observe(asyncio.get_running_loop().time(), demand)
        if decision.replicas != before:
            self._event(
                "scale", before=before, after=decision.replicas, reason=decision.reason, demand=demand
            )
        self._reconcile(decision.replicas)

    def _reconcile(self, desired: int) -> None:
        live = [r for r in self.replicas if r.state in ("starting", "ready") and not r.removed.is_set()]
        for _ in range(desired - len(live)):
            self._start_replica()
        # Starting before ready, newest first, as a ReplicaSet picks the pods to delete.
        victims = sorted(reversed(live), key=lambda r: r.state == "ready")  # a stable sort
        for replica in victims[: max(0, len(live) - desired)]:
            replica.removed.set()

    def _start_replica(self) -> None:
        taken = {r.address for r in self.replicas if r.state != "stopped"}
        n = next(n for n in range(self.config.first_address, 255) if f"127.0.0.{n}" not in taken)
        replica = Replica(address=f"127.0.0.{n}", started_at=asyncio.get_running_loop().time())
        self.replicas.append(replica)
        replica.task = asyncio.create_task(self._live(replica), name=f"replica-{replica.address}")
        self._event("replica-starting", address=replica.address)

    async def _live(self, replica: Replica) -> None:
        """A replica from start to stop."""
        loop = asyncio.get_running_loop()
        try:
            if not await self._spawn(replica):
                return
            assert replica.process is not None
            exited = asyncio.ensure_future(replica.process.wait())
            removed = asyncio.ensure_future(replica.removed.wait())
            try:
                ready_at = replica.started_at + self.config.cold_start_seconds
                await asyncio.wait([exited, removed], timeout=max(0.0, ready_at - loop.time()))
                if exited.done():
                    self._event("replica-exited", address=replica.address, while_="starting")
                    return
                if removed.done():
                    await terminate(replica.process)
                    self._event("replica-stopped", address=replica.address, while_="starting")
                    return
                replica.state, replica.ready_at = "ready", loop.time()
                self._publish()
                self._event("replica-ready", address=replica.address)
                await asyncio.wait([exited, removed], return_when=asyncio.FIRST_COMPLETED)
                if exited.done():
                    self._unpublish(replica, "replica-exited")
                    return
                self._unpublish(replica, "replica-draining")
                await asyncio.wait([exited], timeout=self.config.drain_seconds)
                await terminate(replica.process)
                self._event("replica-stopped", address=replica.address)
            finally:
                exited.cancel()
                removed.cancel()
        finally:
            if replica.process is not None:
                await terminate(replica.process)
            if replica.state != "stopped":
                replica.state, replica.stopped_at = "stopped", loop.time()
                self._publish()

    async def _spawn(self, replica: Replica) -> bool:
        """Starts the replica's process; False when it did not come up listening."""
        command = [sys.executable, "-m", "simulators.cli", "vllm", "--host", replica.address,
                   "--port", str(self.replica_port), *self.config.vllm_args]  # fmt: skip
        replica.process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, preexec_fn=DIE_WITH_PARENT
        )
        assert replica.process.stdout is not None
        try:
            line = await asyncio.wait_for(replica.process.stdout.readline(), 60)
        except TimeoutError:
            line = b""
        if b"listening on" not in line:
            self._event(
                "replica-failed", address=replica.address, output=line.decode(errors="replace").strip()
            )
            return False
        return True

    def _unpublish(self, replica: Replica, kind: str) -> None:
        replica.state = "draining" if kind == "replica-draining" else "stopped"
        if replica.state == "stopped":
            replica.stopped_at = asyncio.get_running_loop().time()
        self._publish()
        self._event(kind, address=replica.address)

    def _publish(self) -> None:
        self.dns.publish(r.address for r in self.replicas if r.state == "ready")

    def _event(self, kind: str, **fields: Any) -> None:
        t = asyncio.get_running_loop().time() - self._t0
        fields = {k.rstrip("_"): v for k, v in fields.items()}
        self.events.append({"t": round(t, 3), "at": time.time(), "kind": kind, **fields})
        self._echo(f"tandem sim fleet: t={t:.1f}s {_describe(kind, fields)}")


def _describe(kind: str, fields: dict[str, Any]) -> str:
    if kind == "scale":
        return (
            f"scale {fields['before']} -> {fields['after']} ({fields['reason']}, demand {fields['demand']:g})"
        )
    details = " ".join(f"{k}={v}" for k, v in fields.items() if k != "address")
    subject = f"replica {fields['address']} " if "address" in fields else ""
    return f"{subject}{kind.removeprefix('replica-')} {details}".rstrip()


def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
