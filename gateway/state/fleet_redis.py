"""The edge fleet in Redis: heartbeats with a TTL and each group's desired model version.

    {p}{fleet}:edge:<edge id>   string  the edge's last heartbeat (JSON), expiring after the TTL
    {p}{fleet}:seen             zset    edge id -> time of its last heartbeat (for listing)
    {p}{fleet}:desired          hash    group -> desired version (JSON)

A status is bounded before it is stored (`gateway.fleet.check_status`). The keys share the hash
tag `{fleet}`, so each script below runs on Redis Cluster too. A
heartbeat is one round trip: store the status, index it, read the group's desired version.
Desired versions change by compare-and-set, so two operators rolling out at once cannot lose
each other's `previous` version. Keep Redis persistent (AOF) in production: desired versions
are the one piece of state here that is not rebuilt from the next heartbeats.

In the gateway (`local` given) a heartbeat still gets an answer while Redis is away: the status
is kept in this process and the reply carries the last desired version this replica saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.fleet import Desired, EdgeStatus, MemoryFleet, check_status, plan_rollback, plan_rollout
from gateway.state.redis_conn import Client, RedisState, Script, StateUnavailable, text

# KEYS: edge key, seen index, desired hash. ARGV: status JSON, ttl ms, edge id, time, group.
HEARTBEAT = Script(
    """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return redis.call('HGET', KEYS[3], ARGV[5])
"""
)

# KEYS: desired hash. ARGV: group, the JSON expected now ("" for none), the new JSON.
COMPARE_AND_SET = Script(
    """
local now = redis.call('HGET', KEYS[1], ARGV[1])
if (now or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
)


class RedisFleet:
    """A `FleetStore` on Redis. With `local`, failures fall back to it (the gateway); without,
    they raise `StateUnavailable` (the commands, which must not show a stale fleet)."""

    def __init__(self, state: RedisState, *, ttl_s: float = 35.0, local: MemoryFleet | None = None) -> None:
        self._state = state
        self.ttl_s = ttl_s
        self._local = local
        self._known: dict[str, Desired | None] = {}  # the last desired version seen, per group
        self._edge_prefix = state.key("{fleet}", "edge", "")
        self._seen = state.key("{fleet}", "seen")
        self._desired = state.key("{fleet}", "desired")

    async def record(self, status: EdgeStatus) -> None:
        await self.heartbeat(status)

    async def heartbeat(self, status: EdgeStatus) -> Desired | None:
        """Records `status` (refused with `BadRequest` when over a cap of `fleet.check_status`,
        before Redis is touched) and returns its group's desired version."""
        status.last_seen = time.time()
        keys = (self._edge_prefix + status.edge_id, self._seen, self._desired)
        stored = check_status(status)
        args = (stored, int(self.ttl_s * 1000), status.edge_id, status.last_seen, status.group)

        async def call(r: Client) -> bytes | str | None:
            return await HEARTBEAT(r, keys, args)

        try:
            raw = await self._state.run(call)
        except StateUnavailable:
            if self._local is None:
                raise
            await self._local.record(status)
            return self._known.get(status.group)
        desired = Desired.from_json(raw) if raw else None
        self._known[status.group] = desired
        return desired

    async def edges(self) -> list[EdgeStatus]:
        async def call(r: Client) -> list[EdgeStatus]:
            await r.zremrangebyscore(self._seen, "-inf", time.time() - self.ttl_s)
            ids = [text(i) for i in await r.zrange(self._seen, 0, -1)]
            if not ids:
                return []
            raws = await r.mget([self._edge_prefix + i for i in ids])
            gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
            if gone:  # expired before the index noticed
                await r.zrem(self._seen, *gone)
            return [EdgeStatus.from_json(raw) for raw in raws if raw is not None]

        try:
            found = await self._state.run(call)
        except StateUnavailable:
            if self._local is None:
                raise
            return await self._local.edges()
        return sorted(found, key=lambda e: (e.group, e.edge_id))

    async def desired(self, group: str) -> Desired | None:
        async def call(r: Client) -> bytes | str | None:
            return await r.hget(self._desired, group)

        try:
            raw = await self._state.run(call)
        except StateUnavailable:
            if self._local is None:
                raise
            return self._known.get(group)
        desired = Desired.from_json(raw) if raw else None
        self._known[group] = desired
        return desired

    async def desired_all(self) -> dict[str, Desired]:
        async def call(r: Client) -> dict[bytes | str, bytes | str]:
            return await r.hgetall(self._desired)

        found = await self._state.run(call)
        return {text(group): Desired.from_json(raw) for group, raw in sorted(found.items())}

    async def update_desired(self, group: str, change: Callable[[Desired | None], Desired]) -> Desired:
        """Applies `change` to the group's desired version atomically (compare-and-set, retried
        when another writer got there first); returns the new version."""
        while True:

            async def read(r: Client) -> bytes | str | None:
                return await r.hget(self._desired, group)

            raw = await self._state.run(read)
            new = change(Desired.from_json(raw) if raw else None)
            expected = raw or b""

            async def write(r: Client, new: Desired = new, expected: bytes | str = expected) -> int:
                return await COMPARE_AND_SET(r, (self._desired,), (group, expected, new.to_json()))

            if await self._state.run(write):
                self._known[group] = new
                return new

    async def rollout(
        self, group: str, reference: str, digest: str = "", canary_percent: int = 100
    ) -> Desired:
        return await self.update_desired(
            group, lambda now: plan_rollout(now, reference, digest, canary_percent)
        )

    async def rollback(self, group: str) -> Desired:
        return await self.update_desired(group, lambda now: plan_rollback(group, now))

    async def set_desired(self, group: str, desired: Desired) -> None:
        await self.update_desired(group, lambda _: desired)
