"""Batch records: what a batch is (OpenAI's Batch object), where it stands, and the moves
between statuses, each one a compare-and-set in Redis so that replicas racing to move the
same batch (two finishing its last lines, a cancel during finalizing) agree on one outcome.

    validating -> in_progress -> finalizing -> completed
        |              |   \\          \\-> cancelled / expired (the status finalizing aimed at)
        v              |    \\-> cancelling -> finalizing
      failed           \\-> (24 h window passed) finalizing -> expired
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.batch.keys import Keys
from gateway.state.redis_conn import Client, RedisState, Script, text
from tandem.errors import NotFound

WINDOW_SECONDS = {"24h": 24 * 3600}


class Status(enum.StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


FINISHED = frozenset({Status.FAILED, Status.COMPLETED, Status.EXPIRED, Status.CANCELLED})

# Status -> the timestamp field OpenAI sets when a batch enters it.
STAMP = {
    Status.IN_PROGRESS: "in_progress_at",
    Status.FINALIZING: "finalizing_at",
    Status.COMPLETED: "completed_at",
    Status.FAILED: "failed_at",
    Status.EXPIRED: "expired_at",
    Status.CANCELLING: "cancelling_at",
    Status.CANCELLED: "cancelled_at",
}

# KEYS[1] the job hash; ARGV[1] allowed current statuses ("a,b"), ARGV[2] the new status, then
# field/value pairs to set with it. Returns the status found (the move happened when it was
# one of the allowed ones).
_MOVE = Script(
    """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
for allowed in string.gmatch(ARGV[1], '[^,]+') do
  if allowed == current then
    redis.call('HSET', KEYS[1], 'status', ARGV[2])
    for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
    return current
  end
end
return current
"""
)


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


@dataclass(slots=True)
class BatchRecord:
    id: str
    tenant: str
    input_file_id: str
    completion_window: str
    status: Status
    created_at: int
    expires_at: int
    endpoint: str = "/v1/chat/completions"
    metadata: dict[str, str] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    pools: list[str] = field(default_factory=list)  # each has a queue of this batch's lines
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    final: str = ""  # what finalizing ends in: completed, cancelled or expired
    stamps: dict[str, int] = field(default_factory=dict)

    def to_hash(self) -> dict[str, str]:
        h = {
            "tenant": self.tenant,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status.value,
            "created_at": str(self.created_at),
            "expires_at": str(self.expires_at),
            "endpoint": self.endpoint,
            "metadata": orjson.dumps(self.metadata).decode(),
            "errors": orjson.dumps(self.errors).decode(),
            "pools": orjson.dumps(self.pools).decode(),
            "total": str(self.total),
            "completed": str(self.completed),
            "failed": str(self.failed),
        }
        h.update({k: str(v) for k, v in self.stamps.items()})
        return h

    @classmethod
    def from_hash(cls, batch_id: str, raw: dict[Any, Any]) -> BatchRecord:
        h = {text(k): text(v) for k, v in raw.items()}
        return cls(
            id=batch_id,
            tenant=h["tenant"],
            input_file_id=h["input_file_id"],
            completion_window=h["completion_window"],
            status=Status(h["status"]),
            created_at=int(h["created_at"]),
            expires_at=int(h["expires_at"]),
            endpoint=h.get("endpoint", "/v1/chat/completions"),
            metadata=orjson.loads(h.get("metadata", "null")),
            errors=orjson.loads(h.get("errors", "[]")),
            pools=orjson.loads(h.get("pools", "[]")),
            total=int(h.get("total", 0)),
            completed=int(h.get("completed", 0)),
            failed=int(h.get("failed", 0)),
            output_file_id=h.get("output_file_id") or None,
            error_file_id=h.get("error_file_id") or None,
            final=h.get("final", ""),
            stamps={name: int(h[name]) for name in STAMP.values() if name in h},
        )

    @property
    def done(self) -> int:
        return self.completed + self.failed

    def to_openai(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status.value,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }
        for name in STAMP.values():
            body[name] = self.stamps.get(name)
        return body


def batch_not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")


class JobStore:
    """Batch records in Redis: create, read, list per tenant, move between statuses."""

    def __init__(self, redis: RedisState, keys: Keys, *, retention_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_s = retention_s

    async def create(self, record: BatchRecord) -> None:
        async def call(r: Client) -> None:
            seq = await r.incr(self.keys.seq)
            pipe = r.pipeline(transaction=True)
            pipe.hset(self.keys.job(record.id), mapping=dict[Any, Any](record.to_hash()))
            pipe.zadd(self.keys.jobs(record.tenant), {record.id: seq})
            pipe.sadd(self.keys.active, record.id)
            await pipe.execute()

        await self.redis.run(call)

    async def load(self, batch_id: str) -> BatchRecord | None:
        """Any tenant's batch (the workers' view); None when there is none."""
        raw = await self.redis.run(lambda r: r.hgetall(self.keys.job(batch_id)))
        return BatchRecord.from_hash(batch_id, raw) if raw else None

    async def get(self, tenant: str, batch_id: str) -> BatchRecord:
        """The tenant's batch; `NotFound` when it is another tenant's or not there."""
        record = await self.load(batch_id)
        if record is None or record.tenant != tenant:
            raise batch_not_found(batch_id)
        return record

    async def page(self, tenant: str, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        """The tenant's batches, newest first, after the batch `after`; and whether more follow."""
        key = self.keys.jobs(tenant)

        async def call(r: Client) -> list[Any]:
            start = 0
            if after:
                rank: Any = await r.zrevrank(key, after)
                if rank is None:
                    raise batch_not_found(after)
                start = int(rank) + 1
            return list(await r.zrevrange(key, start, start + limit))

        ids = [text(i) for i in await self.redis.run(call)]
        records = [rec for i in ids[:limit] if (rec := await self.load(i)) is not None]
        return records, len(ids) > limit

    async def active(self) -> list[str]:
        ids = await self.redis.run(lambda r: r.smembers(self.keys.active))
        return sorted(text(i) for i in ids)

    async def active_count(self, tenant: str) -> int:
        records = [await self.load(i) for i in await self.active()]
        return sum(1 for rec in records if rec is not None and rec.tenant == tenant)

    async def move(self, batch_id: str, allowed: set[Status], to: Status, **fields: str | int) -> bool:
        """Moves the batch to `to` if its status is one of `allowed` (atomically); True if moved."""
        args: list[str] = [",".join(sorted(s.value for s in allowed)), to.value]
        stamp = STAMP.get(to)
        if stamp is not None and stamp not in fields:
            fields[stamp] = int(time.time())
        for name, value in fields.items():
            args += [name, str(value)]
        found = await self.redis.run(lambda r: _MOVE(r, [self.keys.job(batch_id)], args))
        return found is not None and text(found) in {s.value for s in allowed}

    async def update(self, batch_id: str, **fields: str | int) -> None:
        mapping: dict[Any, Any] = {k: str(v) for k, v in fields.items()}
        await self.redis.run(lambda r: r.hset(self.keys.job(batch_id), mapping=mapping))

    async def retire(self, batch_id: str) -> None:
        """A finished batch leaves the active set; its record stays, for retrieve and list,
        until its retention has passed (`expire`)."""
        gone_at = int(time.time() + self.retention_s)

        async def call(r: Client) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.srem(self.keys.active, batch_id)
            pipe.zadd(self.keys.expiry, {f"job:{batch_id}": gone_at})
            await pipe.execute()

        await self.redis.run(call)

    async def expire(self, batch_id: str) -> None:
        """Deletes a finished batch's record whose retention has passed."""
        record = await self.load(batch_id)

        async def call(r: Client) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.delete(self.keys.job(batch_id))
            if record is not None:
                pipe.zrem(self.keys.jobs(record.tenant), batch_id)
            pipe.zrem(self.keys.expiry, f"job:{batch_id}")
            await pipe.execute()

        await self.redis.run(call)
