"""The cloud pools as an autoscaled fleet sees them: endpoints that come and go, live engine
load, demand for the autoscaler, and requests held while a pool has no ready endpoint.

- **Discovery.** Each pool with `discovery` is followed by an `EndpointWatch` on its DNS name
  (`gateway/pool/discovery.py`); endpoints that appear join the balancer (and litellm.Router's
  deployment list) without a restart, endpoints that disappear take no new requests while
  those in flight finish on their open connections.
- **Load.** With `router.strategy: least-loaded`, a `LoadScraper` (`gateway/pool/load.py`)
  reads every endpoint's `/metrics`; the balancer picks by that and the gateway's own counts.
- **Demand.** `tandem_pool_demand{pool}` is the pool's requests in flight, held ones included,
  plus the batch lines waiting for it (`set_backlog`, from gateway/batch): an engine at zero
  replicas reports nothing, so this is what a KEDA ScaledObject scales on (from zero, and back
  to zero after its cooldown).
- **Cold start.** A pool with `cold_start` holds a request that found no endpoint to take it
  (none discovered, or every one refusing connections or cooling down) until one may: an
  endpoint joined, or `RECHECK_S` passed. At most `max_pending` are held (more: 429), each for
  at most `timeout_seconds` (then 503), all with Retry-After. Held requests wake in arrival
  order. While any is held, the pool's name is resolved every `discovery.HURRY_S` (0.1 s), not
  every interval, so the first ready engine takes them at once.
- **State.** `PoolStates` says, for the Heartbeat reply, whether each pool is warm or cold and
  for how long, so an edge can choose to wait for it or run thinking work at home.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import Gauge

from gateway.config import ColdStart, GatewayConfig, Pool
from gateway.pool import Balancer, Upstream, deployment_id
from gateway.pool.discovery import Address, Change, DnsEndpoints, EndpointWatch
from gateway.pool.load import LoadScraper, ScrapeTarget, metrics_url
from tandem.errors import RateLimited, UpstreamUnavailable
from tandem.logs import get_logger
from tandem.metrics import Metrics
from tandem.transport import Transport

log = get_logger("tandem.gateway.pool")

# A held request looks again this often even when no endpoint joined: endpoints that were
# cooling down, or refusing connections while their engine loaded, may take it now.
RECHECK_S = 1.0

# What a cold pool without a `cold_start` section is expected to take to serve again (the
# section's own default): a vLLM pod's scheduling, image start and model load.
EXPECTED_COLD_START_S = ColdStart().expected_seconds


class ElasticPools:
    """Discovery, live load, demand and cold-start holding for the gateway's pools."""

    def __init__(
        self,
        config: GatewayConfig,
        balancer: Balancer,
        transport: Transport,
        metrics: Metrics,
        in_flight: Mapping[str, int],
    ) -> None:
        self.config = config
        self._balancer = balancer
        self._transport = transport
        self._watches: dict[str, EndpointWatch] = {}
        self._held: dict[str, int] = {p.name: 0 for p in config.pools}
        self._in_flight: dict[str, int] = {p.name: 0 for p in config.pools}
        self._backlog: dict[str, int] = {p.name: 0 for p in config.pools}
        self._joined: dict[str, asyncio.Event] = {p.name: asyncio.Event() for p in config.pools}
        self.load: LoadScraper | None = None
        if config.router.strategy == "least-loaded":
            self.load = LoadScraper(transport, config.router.load_scrape, own=in_flight)
            balancer.attach_load(self.load, in_flight)
        self._export(metrics)

    def _export(self, metrics: Metrics) -> None:
        demand = Gauge(
            "tandem_pool_demand",
            "Requests a pool has now: in flight plus held for an endpoint (what an autoscaler scales on)",
            ["pool"],
            registry=metrics.registry,
        )
        held = Gauge(
            "tandem_pool_held",
            "Requests held until the pool has an endpoint",
            ["pool"],
            registry=metrics.registry,
        )
        endpoints = Gauge(
            "tandem_pool_endpoints", "Endpoints a pool has now (discovered or configured)", ["pool"],
            registry=metrics.registry,
        )  # fmt: skip
        in_flight = Gauge(
            "tandem_pool_in_flight", "Requests a pool's endpoints are answering now", ["pool"],
            registry=metrics.registry,
        )  # fmt: skip
        for pool in self.config.pools:
            demand.labels(pool.name).set_function(functools.partial(self.demand, pool.name))
            in_flight.labels(pool.name).set_function(functools.partial(self._on_endpoints, pool.name))
            held.labels(pool.name).set_function(functools.partial(self._held.__getitem__, pool.name))
            endpoints.labels(pool.name).set_function(
                functools.partial(lambda name: len(self._balancer.upstreams(name)), pool.name)
            )

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolves every discovered pool once (so the gateway starts with what is there) and
        follows them; starts reading load."""
        for pool in self.config.pools:
            if pool.discovery is None:
                continue
            watch = EndpointWatch(DnsEndpoints(pool.discovery), functools.partial(self._changed, pool))
            self._watches[pool.name] = watch
            await watch.start()
        self._retarget()
        if self.load is not None:
            await self.load.start()

    async def stop(self) -> None:
        for watch in self._watches.values():
            await watch.stop()
        if self.load is not None:
            await self.load.stop()

    # --- endpoints ---------------------------------------------------------------------------

    def _changed(self, pool: Pool, change: Change) -> None:
        assert pool.discovery is not None
        for address in change.removed:
            self._balancer.remove_upstream(deployment_id(pool.name, address.base_url))
        for address in change.added:
            self._balancer.add_upstream(self._upstream(pool, address), weight=pool.discovery.weight)
        self._retarget()
        if change.added:
            self._wake(pool.name)

    @staticmethod
    def _upstream(pool: Pool, address: Address) -> Upstream:
        d = pool.discovery
        assert d is not None
        return Upstream(
            id=deployment_id(pool.name, address.base_url),
            pool=pool.name,
            base_url=address.base_url,
            model=d.model,
            api_key=d.api_key(),
            max_concurrency=d.max_concurrency,
            context_length=pool.context_length,
            tls=d.tls,
            kind=d.kind,
        )

    def _retarget(self) -> None:
        if self.load is None:
            return
        self.load.set_targets(
            {
                u.id: ScrapeTarget(metrics_url(u.base_url), u.model, u.tls)
                for pool in self.config.pools
                for u in self._balancer.upstreams(pool.name)
            }
        )

    def _wake(self, pool: str) -> None:
        # Every request held now goes (in the order they waited); later ones wait anew.
        self._joined[pool].set()
        self._joined[pool] = asyncio.Event()

    def endpoint_failed(self, pool: str) -> None:
        """A request could not reach an endpoint of `pool`: look the name up again soon."""
        watch = self._watches.get(pool)
        if watch is not None:
            watch.refresh_soon()

    # --- demand and holding ------------------------------------------------------------------

    def _on_endpoints(self, pool: str) -> int:
        return self._in_flight.get(pool, 0) - self._held.get(pool, 0)

    def demand(self, pool: str) -> int:
        """Requests `pool` has: those on an endpoint and those held for one (a held request has
        entered the pool already, so it is counted once), and the batch backlog."""
        return self._in_flight.get(pool, 0) + self._backlog.get(pool, 0)

    def set_backlog(self, pool: str, lines: int) -> None:
        """Batch lines waiting for `pool` that this replica reports (one replica reports each
        pool's backlog, so that the demand summed over replicas counts every line once)."""
        self._backlog[pool] = lines

    def entered(self, pool: str) -> None:
        self._in_flight[pool] = self._in_flight.get(pool, 0) + 1

    def left(self, pool: str) -> None:
        self._in_flight[pool] -= 1

    def held(self, pool: str) -> int:
        return self._held.get(pool, 0)

    def endpoints(self, pool: str) -> int:
        """Endpoints `pool` has now (configured or discovered), ready or not."""
        return len(self._balancer.upstreams(pool))

    async def hold(self, pool: Pool, deadline: float) -> None:
        """Waits until `pool` may take the request (an endpoint joined, or `RECHECK_S` passed).

        Raises `RateLimited` when `cold_start.max_pending` requests are held already, and
        `UpstreamUnavailable` once the loop's clock passes `deadline`.
        """
        cold = pool.cold_start
        assert cold is not None
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise UpstreamUnavailable(
                f"pool {pool.name!r} had no ready endpoint within {cold.timeout_seconds:g}s "
                "(cold_start.timeout_seconds)",
                retry_after=max(1, round(cold.timeout_seconds / 10)),
            )
        if self._held[pool.name] >= cold.max_pending:
            raise RateLimited(
                f"pool {pool.name!r} is starting and already holds {cold.max_pending} requests "
                "(cold_start.max_pending)",
                retry_after=5,
            )
        self._held[pool.name] += 1
        watch = self._watches.get(pool.name)
        joined = self._joined[pool.name]
        try:
            with watch.waiting() if watch is not None else contextlib.nullcontext():
                async with asyncio.timeout(min(remaining, RECHECK_S)):
                    await joined.wait()
        except TimeoutError:
            pass
        finally:
            self._held[pool.name] -= 1


class Readiness(enum.StrEnum):
    WARM = "warm"  # has endpoints and holds no request
    COLD = "cold"  # no endpoint, or requests are held because none would take them


@dataclass(frozen=True, slots=True)
class PoolState:
    """One pool as the Heartbeat reply describes it."""

    name: str
    aliases: tuple[str, ...]
    readiness: Readiness
    endpoints: int
    held: int
    cold_seconds: float  # since when the gateway has seen it cold; 0 when warm
    estimated_wait_seconds: float  # a guess (see `PoolStates`); 0 when warm


class PoolStates:
    """Each pool's state, for the Heartbeat reply.

    Cold means no request would start now: the pool has no endpoint, or it holds requests
    (every endpoint refused them or is cooling down). The time a pool went cold is noted when
    a reply first sees it cold; edges send heartbeats every few seconds, so that is late by
    at most about one heartbeat interval. The estimated wait is `cold_start.expected_seconds` minus
    the time cold so far, at least `RECHECK_S` (it is cold now: the wait is not zero) and at
    most the pool's `cold_start.timeout_seconds` (a held request is refused after that).
    """

    def __init__(self, elastic: ElasticPools, clock: Callable[[], float] = time.monotonic) -> None:
        self._elastic = elastic
        self._clock = clock
        self._cold_since: dict[str, float] = {}

    def now(self) -> list[PoolState]:
        return [self._state(pool) for pool in self._elastic.config.pools]

    def _state(self, pool: Pool) -> PoolState:
        endpoints, held = self._elastic.endpoints(pool.name), self._elastic.held(pool.name)
        aliases = tuple(pool.aliases)
        if endpoints and not held:
            self._cold_since.pop(pool.name, None)
            return PoolState(pool.name, aliases, Readiness.WARM, endpoints, held, 0.0, 0.0)
        now = self._clock()
        cold_for = now - self._cold_since.setdefault(pool.name, now)
        expected = pool.cold_start.expected_seconds if pool.cold_start else EXPECTED_COLD_START_S
        wait = max(expected - cold_for, RECHECK_S)
        if pool.cold_start is not None:
            wait = min(wait, pool.cold_start.timeout_seconds)
        return PoolState(pool.name, aliases, Readiness.COLD, endpoints, held, cold_for, wait)
