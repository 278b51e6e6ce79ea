"""Tenant limits: requests per minute, tokens per minute, concurrent streams.

**Rates are token buckets** (the scheme Anthropic's and most gateways' rate limits use): a
tenant with `rpm: 600` has a bucket of 600 requests that refills continuously at 10 a second.
A request takes one; tokens work the same with a bucket of `tpm` tokens. Unlike a fixed
window, there is no burst of twice the limit at a window boundary and the retry hint is exact
(the time until the bucket holds enough again); unlike a sliding log, a bucket is two numbers,
not a list of timestamps. A bucket full again is the same as no bucket, so it expires then.

**Tokens are charged twice**: the request's estimate (prompt plus `max_tokens`) before it runs,
then corrected to the engine's reported usage when it ends (a refund, or a debt the bucket pays
off before the next request). A request estimated above the whole `tpm` waits for a full
bucket, then runs into debt, rather than being refused forever.

**Concurrent streams are leases**: a sorted set of lease ids scored by their expiry. The
gateway renews the leases of its running requests every third of `limits.stream_lease_seconds`
and removes a lease when its request ends; a replica that dies without doing so frees its
slots when their leases expire. Every request in flight holds one, streamed or not, so
`stream: false` is no way around it.

**One round trip per request**: one Lua script checks all three limits and takes from them
only if every one allows it, atomically, with Redis's clock (replicas' clocks never disagree).
The correction and the release at a request's end ride along with the tenant's next admission
on the same replica; what has not gone that way within 20 ms goes in one batch for all tenants.
A tenant's keys share the hash tag `{tenant}`, so the scripts run on Redis Cluster too.

**Without Redis**, and while Redis is away, `MemoryLimiter` applies the same rules to this
process's own state. `redis.on_failure: open` (the default) does that: each replica then
enforces each limit on its own, so a tenant may get up to N times its limit across N replicas
until Redis returns; `closed` refuses limited tenants' requests (503) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.state.redis_conn import Client, RedisState, Script, StateUnavailable
from gateway.state.tenants import Tenant
from tandem.errors import LimitExceeded, UpstreamUnavailable
from tandem.logs import get_logger

log = get_logger("tandem.gateway.limits")

WINDOW_MS = 60_000

# Stream slots released by one script call at most.
_MAX_RELEASES = 512

# Which limit refused, as the scripts return it.
_RPM, _TPM, _STREAMS = 1, 2, 3

_BUCKET = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local now = clock()
local function level(key, limit)
  local v = redis.call('HMGET', key, 'level', 'at')
  if not v[1] then return limit end
  local l = tonumber(v[1]) + (now - tonumber(v[2])) * limit / 60000
  if l > limit then return limit end
  return l
end
local function store(key, limit, l)
  redis.call('HSET', key, 'level', string.format('%.3f', l), 'at', now)
  redis.call('PEXPIRE', key, math.ceil((limit - l) * 60000 / limit) + 1000)
end
-- The arguments come as one space-separated string: each argument costs the client more to
-- encode than the script spends splitting them.
local A = {}
for word in string.gmatch(ARGV[1], '%S+') do A[#A + 1] = word end
-- Earlier requests' ends: their stream slots (A[first..]) and their token corrections.
local function settle(tpm_key, streams_key, tpm, delta, first)
  if #A >= first then redis.call('ZREM', streams_key, unpack(A, first, #A)) end
  if tpm > 0 and delta ~= 0 then
    local l = level(tpm_key, tpm) - delta
    if l > tpm then l = tpm end
    store(tpm_key, tpm, l)
  end
end
"""

# KEYS: rpm bucket, tpm bucket, streams set.
# A: rpm, tpm, tokens, streams, lease ("-": none), lease ttl ms, then the settlement of earlier
# requests of the tenant: token correction, leases to release...
# Returns {0, 0} when admitted, else {which limit, milliseconds until it would allow this}.
ADMIT = Script(
    _BUCKET
    + """
local rpm, tpm, cost = tonumber(A[1]), tonumber(A[2]), tonumber(A[3])
local streams, lease, ttl = tonumber(A[4]), A[5], tonumber(A[6])
settle(KEYS[2], KEYS[3], tpm, tonumber(A[7]), 8)
local r, t
if rpm > 0 then
  r = level(KEYS[1], rpm)
  if r < 1 then return {1, math.ceil((1 - r) * 60000 / rpm)} end
end
if tpm > 0 then
  t = level(KEYS[2], tpm)
  local need = math.min(cost, tpm)
  if t < need then return {2, math.ceil((need - t) * 60000 / tpm)} end
end
if streams > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= streams then return {3, 0} end
  redis.call('ZADD', KEYS[3], now + ttl, lease)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
if rpm > 0 then store(KEYS[1], rpm, r - 1) end
if tpm > 0 then store(KEYS[2], tpm, t - cost) end
return {0, 0}
"""
)

# KEYS: tpm bucket, streams set. A: tpm, token correction (negative: a refund), leases...
SETTLE = Script(_BUCKET + "settle(KEYS[1], KEYS[2], tonumber(A[1]), tonumber(A[2]), 3)\nreturn 1\n")

# KEYS: streams set. ARGV: lease ttl ms, lease ids still running. Renews those still held.
RENEW = Script(
    """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
)


@dataclass(slots=True)
class Settlement:
    """What ended requests of one tenant still have to tell Redis."""

    tenant: Tenant
    delta: int = 0  # tokens to add to the charges (negative: a refund)
    leases: list[str] = field(default_factory=list)  # stream slots to release


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: int  # _RPM, _TPM or _STREAMS
    retry_after_ms: int


@dataclass(slots=True)
class Grant:
    """A request admitted under its tenant's limits; `TenantLimits.finish` settles it."""

    tenant: Tenant
    tokens: int  # charged at admission
    lease: str  # the concurrent-stream slot held; "" when the tenant has no such limit
    shared: bool  # admitted by Redis (True) or by this process's state
    done: bool = False


class MemoryLimiter:
    """The limits on this process's own state (no Redis, or Redis away)."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (tenant, kind) -> level, at
        self._leases: dict[str, set[str]] = {}

    def _level(self, key: tuple[str, str], limit: int, now: float) -> float:
        held = self._buckets.get(key)
        if held is None:
            return float(limit)
        level, at = held
        return min(float(limit), level + (now - at) * limit / WINDOW_MS)

    def admit(self, tenant: Tenant, tokens: int, lease: str) -> Refusal | None:
        now = time.monotonic() * 1000
        r = t = 0.0
        if tenant.rpm:
            r = self._level((tenant.name, "rpm"), tenant.rpm, now)
            if r < 1:
                return Refusal(_RPM, _ceil((1 - r) * WINDOW_MS / tenant.rpm))
        if tenant.tpm:
            t = self._level((tenant.name, "tpm"), tenant.tpm, now)
            need = min(tokens, tenant.tpm)
            if t < need:
                return Refusal(_TPM, _ceil((need - t) * WINDOW_MS / tenant.tpm))
        if tenant.streams:
            held = self._leases.setdefault(tenant.name, set())
            if len(held) >= tenant.streams:
                return Refusal(_STREAMS, 0)
            held.add(lease)
        if tenant.rpm:
            self._buckets[(tenant.name, "rpm")] = (r - 1, now)
        if tenant.tpm:
            self._buckets[(tenant.name, "tpm")] = (t - tokens, now)
        return None

    def settle(self, tenant: Tenant, delta: int, lease: str) -> None:
        if lease:
            self._leases.get(tenant.name, set()).discard(lease)
        if tenant.tpm and delta:
            now = time.monotonic() * 1000
            key = (tenant.name, "tpm")
            self._buckets[key] = (min(float(tenant.tpm), self._level(key, tenant.tpm, now) - delta), now)


class RedisLimiter:
    """The limits in Redis, shared by every replica (see the module docstring for the scheme)."""

    def __init__(self, state: RedisState, lease_ttl_s: float) -> None:
        self._state = state
        self._ttl_ms = int(lease_ttl_s * 1000)

    def _keys(self, tenant: str) -> tuple[str, str, str]:
        base = self._state.key("lim", "{" + tenant + "}")
        return f"{base}:rpm", f"{base}:tpm", f"{base}:streams"

    async def admit(
        self, tenant: Tenant, tokens: int, lease: str, settled: Settlement | None = None
    ) -> Refusal | None:
        """Checks and takes from every limit at once; first applies `settled`, the ends of the
        tenant's earlier requests (so they cost no round trip of their own)."""
        keys = self._keys(tenant.name)
        words = [tenant.rpm, tenant.tpm, tokens, tenant.streams, lease or "-", self._ttl_ms]
        words += [settled.delta, *settled.leases] if settled else [0]
        args = (" ".join(map(str, words)),)

        async def call(r: Client) -> Any:
            return await ADMIT(r, keys, args)

        which, wait_ms = await self._state.run(call)
        return None if which == 0 else Refusal(int(which), int(wait_ms))

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        """Applies the ends of requests of many tenants in one round trip."""
        calls = [
            (self._keys(s.tenant.name)[1:], (" ".join(map(str, (s.tenant.tpm, s.delta, *s.leases))),))
            for s in settlements
        ]

        async def call(r: Client) -> None:
            await SETTLE.many(r, calls)

        await self._state.run(call)

    async def renew(self, leases: dict[str, list[str]]) -> None:
        """Extends the leases still running, per tenant, in one round trip."""
        calls = [((self._keys(tenant)[2],), (self._ttl_ms, *ids)) for tenant, ids in leases.items()]

        async def call(r: Client) -> None:
            await RENEW.many(r, calls)

        await self._state.run(call)


class TenantLimits:
    """What the gateway asks before a request runs (`acquire`) and tells when it ends (`finish`).

    Uses Redis when there is one and it answers; this process's state otherwise (or a 503, with
    `on_failure: closed`). A grant remembers which state admitted it and is settled there. The
    end of a request admitted by Redis rides along with the tenant's next admission on this
    replica, or goes out within `settle_delay_s` with every other pending one in one batch.
    """

    def __init__(
        self,
        shared: RedisLimiter | None = None,
        *,
        on_failure: Literal["open", "closed"] = "open",
        lease_ttl_s: float = 30.0,
        retry_after_s: float = 1.0,
        settle_delay_s: float = 0.02,
    ) -> None:
        self.local = MemoryLimiter()
        self.shared = shared
        self.on_failure = on_failure
        self.lease_ttl_s = lease_ttl_s
        self.retry_after_s = retry_after_s
        self.settle_delay_s = settle_delay_s
        self._replica = os.urandom(4).hex()
        self._ids = itertools.count()
        self._running: dict[str, Grant] = {}  # lease -> grant, for leases held in Redis
        self._pending: dict[str, Settlement] = {}  # tenant -> ends not yet told to Redis
        self._flush: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewal: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.shared is not None and self._renewal is None:
            self._renewal = asyncio.create_task(self._renew_leases(), name="limits-renew")

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        tasks = [*self._tasks, *([self._renewal] if self._renewal else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._renewal = None
        if self._pending and self.shared is not None:
            with contextlib.suppress(StateUnavailable):
                await self.shared.settle(self._take())

    async def acquire(self, tenant: Tenant | None, tokens: int) -> Grant | None:
        """Admits a request of ~`tokens` tokens or raises `LimitExceeded` naming the limit."""
        if tenant is None or not tenant.limited:
            return None
        lease = f"{self._replica}:{next(self._ids):x}" if tenant.streams else ""
        refusal: Refusal | None
        shared = self.shared is not None
        if self.shared is not None:
            try:
                refusal = await self.shared.admit(tenant, tokens, lease, self._pending.pop(tenant.name, None))
            except StateUnavailable:
                if self.on_failure == "closed":
                    raise UpstreamUnavailable(
                        "tenant limits cannot be checked: shared state (Redis) is unreachable "
                        "(redis.on_failure=closed)",
                        retry_after=self.retry_after_s,
                    ) from None
                shared = False
        if not shared:
            refusal = self.local.admit(tenant, tokens, lease)
        if refusal is not None:
            raise self._refused(tenant, tokens, refusal)
        grant = Grant(tenant=tenant, tokens=tokens, lease=lease, shared=shared)
        if shared and lease:
            self._running[lease] = grant
        return grant

    def finish(self, grant: Grant | None, used_tokens: int | None) -> None:
        """Releases the grant's stream slot and corrects its token charge to `used_tokens`
        (None: keep the estimate). Never waits: Redis hears of it with the next admission."""
        if grant is None or grant.done:
            return
        grant.done = True
        tenant = grant.tenant
        delta = used_tokens - grant.tokens if used_tokens is not None and tenant.tpm else 0
        if not grant.lease and not delta:
            return
        if not grant.shared:
            self.local.settle(tenant, delta, grant.lease)
            return
        pending = self._pending.get(tenant.name)
        if pending is None:
            pending = self._pending[tenant.name] = Settlement(tenant)
        pending.tenant = tenant
        pending.delta += delta
        if grant.lease:
            self._running.pop(grant.lease, None)
            pending.leases.append(grant.lease)
            if len(pending.leases) >= _MAX_RELEASES:  # bounded script arguments
                self._flush_now()
                return
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self.settle_delay_s, self._flush_now)

    def _take(self) -> list[Settlement]:
        pending, self._pending = list(self._pending.values()), {}
        return pending

    def _flush_now(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._pending:
            task = asyncio.create_task(self._send(self._take()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, settlements: list[Settlement]) -> None:
        assert self.shared is not None
        try:
            await self.shared.settle(settlements)
        except StateUnavailable:
            # Leases left behind expire; the token corrections are lost (at most one request's
            # estimate each).
            log.debug("settlements_dropped", tenants=len(settlements))

    async def _renew_leases(self) -> None:
        assert self.shared is not None
        while True:
            await asyncio.sleep(self.lease_ttl_s / 3)
            by_tenant: dict[str, list[str]] = {}
            for lease, grant in self._running.items():
                by_tenant.setdefault(grant.tenant.name, []).append(lease)
            if by_tenant:
                with contextlib.suppress(StateUnavailable):
                    await self.shared.renew(by_tenant)

    def _refused(self, tenant: Tenant, tokens: int, refusal: Refusal) -> LimitExceeded:
        wait = max(refusal.retry_after_ms / 1000, 1.0) if refusal.retry_after_ms else self.retry_after_s
        name = repr(tenant.name)
        if refusal.limit == _RPM:
            return LimitExceeded(
                f"tenant {name} is over its requests-per-minute limit (rpm={tenant.rpm}); "
                f"retry in {wait:.0f}s",
                limit="rpm",
                retry_after=wait,
            )
        if refusal.limit == _TPM:
            return LimitExceeded(
                f"tenant {name} is over its tokens-per-minute limit (tpm={tenant.tpm}; this request "
                f"counts about {tokens} tokens); retry in {wait:.0f}s",
                limit="tpm",
                retry_after=wait,
            )
        return LimitExceeded(
            f"tenant {name} already has {tenant.streams} requests in flight, its concurrent-stream "
            f"limit (streams={tenant.streams})",
            limit="streams",
            retry_after=wait,
        )


def _ceil(x: float) -> int:
    return int(-(-x // 1))
