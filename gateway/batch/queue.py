"""The work queue: a batch's lines in Redis Streams, one stream per (batch, pool), read by every
replica through one consumer group.

- A replica takes new lines with XREADGROUP; each stays in the group's pending list, owned by
  that replica, until it is acknowledged. While a replica runs a line it renews its claim
  (XCLAIM ... JUSTID resets the idle time).
- A replica that dies (`kill -9`) renews nothing: once its lines have been idle for
  `batch.claim_idle_seconds`, any other replica takes them over with XAUTOCLAIM and runs them.
- Exactly once in the output: a line's result is written with HSETNX keyed by its custom_id,
  its count and its acknowledgement in the same script. A line run twice (its first runner
  was presumed dead, but was only slow) finds its result already there and adds nothing.
- A line that failed for a reason that may pass (no endpoint free, engine down) is added again
  with its attempt count raised and the old entry acknowledged, in one script.
- The backlog of a pool is the lines nobody has taken yet: the group's `lag` on its streams.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from gateway.batch.keys import GROUP, Keys
from gateway.state.redis_conn import Client, RedisState, Script, text

# KEYS: results hash, job hash, stream. ARGV: custom_id, result, counter field, entry id.
# Returns 1 when this result is the line's first (it was counted), 0 when one was there.
_RECORD = Script(
    """
local first = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if first == 1 then redis.call('HINCRBY', KEYS[2], ARGV[3], 1) end
redis.call('XACK', KEYS[3], '"""
    + GROUP
    + """', ARGV[4])
return first
"""
)

# KEYS: results hash, stream. ARGV: custom_id, entry id, then the new entry's field/value pairs.
# Adds the line again (unless a result arrived meanwhile) and acknowledges the old entry.
_REQUEUE = Script(
    """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  local fields = {}
  for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', KEYS[2], '*', unpack(fields))
end
redis.call('XACK', KEYS[2], '"""
    + GROUP
    + """', ARGV[2])
return 1
"""
)

ENQUEUE_CHUNK = 500


@contextlib.asynccontextmanager
async def _dropped_is_empty() -> AsyncIterator[None]:
    """A queue dropped by the replica that finished its batch reads as empty (not as Redis
    failing, which would take the gateway's shared state down for a probe period)."""
    try:
        yield
    except ResponseError as exc:
        if "NOGROUP" not in str(exc) and "no such key" not in str(exc).lower():
            raise


@dataclass(frozen=True, slots=True)
class Entry:
    """A line taken from a queue."""

    stream: str
    entry_id: str
    batch_id: str
    pool: str
    custom_id: str
    number: int
    body: bytes
    attempt: int

    def fields(self, attempt: int) -> dict[str, str | bytes]:
        return {"cid": self.custom_id, "n": str(self.number), "body": self.body, "a": str(attempt)}


class WorkQueue:
    def __init__(self, redis: RedisState, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def enqueue(self, batch_id: str, pool: str, lines: Sequence[tuple[int, str, bytes]]) -> None:
        """Adds `(number, custom_id, body)` lines to the batch's queue for `pool`."""
        stream = self.keys.queue(batch_id, pool)

        async def call(r: Client) -> None:
            await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
            for start in range(0, len(lines), ENQUEUE_CHUNK):
                pipe = r.pipeline(transaction=False)
                for number, custom_id, body in lines[start : start + ENQUEUE_CHUNK]:
                    fields: dict[Any, Any] = {"cid": custom_id, "n": str(number), "body": body, "a": "1"}
                    pipe.xadd(stream, fields)
                await pipe.execute()

        await self.redis.run(call)

    async def take(self, batch_id: str, pool: str, consumer: str, count: int) -> list[Entry]:
        """Up to `count` lines nobody has taken yet."""
        stream = self.keys.queue(batch_id, pool)

        async def call(r: Client) -> Any:
            async with _dropped_is_empty():
                return await r.xreadgroup(GROUP, consumer, {stream: ">"}, count=count)

        reply = await self.redis.run(call)
        entries: list[Any] = []
        for _name, items in reply or []:
            entries.extend(items)
        return [self._entry(stream, batch_id, pool, eid, f) for eid, f in entries if f]

    async def reclaim(
        self, batch_id: str, pool: str, consumer: str, idle_s: float, count: int
    ) -> list[Entry]:
        """Up to `count` lines another replica took and has not touched for `idle_s` (it died)."""
        stream = self.keys.queue(batch_id, pool)

        async def call(r: Client) -> Any:
            async with _dropped_is_empty():
                return await r.xautoclaim(stream, GROUP, consumer, int(idle_s * 1000), "0-0", count=count)

        reply = await self.redis.run(call)
        claimed = reply[1] if reply else []
        return [self._entry(stream, batch_id, pool, eid, f) for eid, f in claimed if f]

    async def touch(self, stream: str, consumer: str, entry_ids: Sequence[str]) -> None:
        """Renews this replica's claim on lines it is running (their idle time starts again)."""

        async def call(r: Client) -> None:
            async with _dropped_is_empty():
                await r.xclaim(stream, GROUP, consumer, 0, list(entry_ids), justid=True)

        if entry_ids:
            await self.redis.run(call)

    async def record(self, entry: Entry, result: bytes, *, ok: bool) -> bool:
        """Writes the line's result once; True when this was its first (and it was counted)."""
        keys = [self.keys.results(entry.batch_id), self.keys.job(entry.batch_id), entry.stream]
        args = [entry.custom_id, result, "completed" if ok else "failed", entry.entry_id]
        first = await self.redis.run(lambda r: _RECORD(r, keys, args))
        return bool(int(first))

    async def requeue(self, entry: Entry, attempt: int) -> None:
        """Puts the line back as attempt `attempt` (unless its result arrived meanwhile)."""
        args: list[Any] = [entry.custom_id, entry.entry_id]
        for name, value in entry.fields(attempt).items():
            args += [name, value]
        keys = [self.keys.results(entry.batch_id), entry.stream]
        await self.redis.run(lambda r: _REQUEUE(r, keys, args))

    async def skip(self, entry: Entry) -> None:
        """Acknowledges a line that will not run (its batch was cancelled or has expired)."""
        await self.redis.run(lambda r: r.xack(entry.stream, GROUP, entry.entry_id))

    async def backlog(self, batch_id: str, pool: str) -> tuple[int, int]:
        """(lines nobody has taken yet, lines taken and not finished) of one queue."""
        stream = self.keys.queue(batch_id, pool)

        async def call(r: Client) -> tuple[int, int]:
            groups: Any = []
            async with _dropped_is_empty():
                groups = await r.xinfo_groups(stream)
            for g in groups:
                info = {text(k): v for k, v in g.items()}
                if text(info["name"]) == GROUP:
                    return int(info.get("lag") or 0), int(info.get("pending") or 0)
            return 0, 0

        return await self.redis.run(call)

    async def results(self, batch_id: str) -> dict[str, bytes]:
        raw = await self.redis.run(lambda r: r.hgetall(self.keys.results(batch_id)))
        return {text(k): v for k, v in raw.items() if isinstance(v, bytes)}

    async def drop(self, batch_id: str, pools: Sequence[str]) -> None:
        """Deletes a finished batch's queues and results (its files hold what is kept)."""
        names = [self.keys.queue(batch_id, p) for p in pools] + [self.keys.results(batch_id)]
        await self.redis.run(lambda r: r.delete(*names))

    def _entry(self, stream: str, batch_id: str, pool: str, eid: Any, f: dict[Any, Any]) -> Entry:
        fields = {text(k): v for k, v in f.items()}
        return Entry(
            stream=stream,
            entry_id=text(eid),
            batch_id=batch_id,
            pool=pool,
            custom_id=text(fields["cid"]),
            number=int(text(fields["n"])),
            body=bytes(fields["body"]),
            attempt=int(text(fields.get("a", b"1"))),
        )
