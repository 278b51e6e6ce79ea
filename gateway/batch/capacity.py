"""Spare capacity: how many batch lines a pool may start now on this replica.

Batch work runs at a lower priority than interactive work, with three rules per pool (its
capacity is the sum of its endpoints' `max_concurrency`):

1. a share: batch lines in flight stay under `batch.share` of the capacity;
2. a reserve: a batch line never takes one of the last `batch.reserve_slots` free slots, so an
   interactive request arriving now finds one;
3. backing off: while interactive requests fill `batch.backoff_at` of the capacity, no batch
   line starts, nor for `batch.backoff_seconds` after;
4. a steady pace: at most `batch.start_rate` lines start per second, so a batch ramps up
   rather than starting its share in one instant (and its lines' ends stay spread out, not in
   waves that load the gateway and the engines all at once).

A line already running is never stopped: a rule only holds back the next ones. The counts are
this replica's own (what it sends to the pool's endpoints), as the endpoint's
`max_concurrency` bound in gateway/service.py is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from gateway.config import Batch as BatchConfig
from gateway.pool import Balancer
from gateway.pool.elastic import ElasticPools


class SpareCapacity:
    def __init__(
        self,
        config: BatchConfig,
        balancer: Balancer,
        elastic: ElasticPools,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._balancer = balancer
        self._elastic = elastic
        self._clock = clock
        self.running: dict[str, int] = {}  # batch lines in flight, per pool
        # Of those, lines started here and not yet handed to the gateway service: the pool's
        # count (`ElasticPools.demand`) has them only once the service admits them.
        self.preparing: dict[str, int] = {}
        self._backlog: dict[str, int] = {}  # what this replica adds to the pool's demand
        self._quiet_after: dict[str, float] = {}
        self._starts: dict[str, tuple[float, float]] = {}  # pool -> (start tokens, as of when)

    def capacity(self, pool: str) -> int:
        return sum(u.max_concurrency for u in self._balancer.upstreams(pool))

    def in_flight(self, pool: str) -> int:
        """Requests of this replica on the pool now, batch lines included (those still being
        prepared, which the pool does not count yet, too)."""
        entered = self._elastic.demand(pool) - self._backlog.get(pool, 0)
        return entered + self.preparing.get(pool, 0)

    def interactive(self, pool: str) -> int:
        return self.in_flight(pool) - self.running.get(pool, 0)

    def free(self, pool: str) -> int:
        """Batch lines `pool` may start now (0 when it has no endpoint: its backlog, counted in
        its demand, is what scales it up)."""
        capacity = self.capacity(pool)
        if capacity == 0:
            return 0
        now = self._clock()
        if self.interactive(pool) >= self.config.backoff_at * capacity:
            self._quiet_after[pool] = now + self.config.backoff_seconds
            return 0
        if now < self._quiet_after.get(pool, 0.0):
            return 0
        share = max(1, math.floor(self.config.share * capacity)) - self.running.get(pool, 0)
        room = capacity - self.config.reserve_slots - self.in_flight(pool)
        return max(0, min(share, room, math.floor(self._tokens(pool, now))))

    def _tokens(self, pool: str, now: float) -> float:
        """Starts allowed now: `start_rate` per second, at most a tenth of a second's worth saved."""
        rate = self.config.start_rate
        burst = max(1.0, rate / 10)
        tokens, at = self._starts.get(pool, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        self._starts[pool] = (tokens, now)
        return tokens

    def started(self, pool: str) -> None:
        self.running[pool] = self.running.get(pool, 0) + 1
        self.preparing[pool] = self.preparing.get(pool, 0) + 1
        now = self._clock()
        self._starts[pool] = (self._tokens(pool, now) - 1, now)

    def handed_over(self, pool: str) -> None:
        """A line is about to enter the gateway service (and with it the pool's count)."""
        self.preparing[pool] -= 1

    def finished(self, pool: str, *, handed_over: bool) -> None:
        self.running[pool] -= 1
        if not handed_over:
            self.preparing[pool] -= 1

    def report_backlog(self, pool: str, lines: int) -> None:
        """Counts `lines` waiting batch lines in the pool's demand (`tandem_pool_demand`)."""
        self._backlog[pool] = lines
        self._elastic.set_backlog(pool, lines)
