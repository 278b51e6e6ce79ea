"""The Batch API (OpenAI's `/v1/files` and `/v1/batches`), durable in Redis and run on the
pools' spare capacity; see docs/batches.md.

    lines.py     the input file's lines, checked at upload (errors name the line)
    files.py     input, output and error files (metadata in Redis; bodies in Redis or a directory)
    jobs.py      batch records and their status moves (compare-and-set in Redis)
    queue.py     the lines to run: Redis Streams, a consumer group, results written once
    capacity.py  how many lines a pool may start now (share, reserve, back-off)
    worker.py    a replica's worker: dispatch, claim renewal, sweep (finish, backlog)
    batches.py   create, cancel, finalize
    outputs.py   output and error lines in OpenAI's format, with the route
    routes.py    the HTTP routes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.batch.batches import Batches
from gateway.batch.capacity import SpareCapacity
from gateway.batch.files import FileStore
from gateway.batch.jobs import JobStore
from gateway.batch.keys import Keys
from gateway.batch.queue import WorkQueue
from gateway.batch.worker import BatchWorker
from gateway.state.redis_conn import RedisState, StateHealth

if TYPE_CHECKING:
    from gateway.service import GatewayService


@dataclass
class BatchSystem:
    batches: Batches
    worker: BatchWorker
    redis: RedisState  # its own connections (see `batch.redis_timeout_seconds`)

    @classmethod
    def build(cls, gateway: GatewayService) -> BatchSystem | None:
        """The Batch API of this gateway; None when it is off or there is no Redis to keep it."""
        config = gateway.config.batch
        shared = gateway.config.redis
        if not config.enabled or shared.url is None:
            return None
        redis = RedisState(
            shared.model_copy(update={"timeout_seconds": config.redis_timeout_seconds}),
            # The gateway's own state logs an outage of this Redis once; batch work just pauses.
            StateHealth(log_transitions=False),
        )
        keys = Keys(redis.prefix)
        batches = Batches(
            config,
            FileStore(redis, keys, config.files_dir, retention_s=config.retention_days * 86400),
            JobStore(redis, keys, retention_s=config.retention_days * 86400),
            WorkQueue(redis, keys),
            gateway,
        )
        capacity = SpareCapacity(config, gateway.balancer, gateway.elastic)
        return cls(batches, BatchWorker(batches, gateway, capacity), redis)

    async def start(self) -> None:
        await self.redis.check()
        await self.worker.start()

    async def stop(self, grace_s: float) -> None:
        await self.worker.stop(grace_s)
        await self.redis.close()


__all__ = ["BatchSystem", "BatchWorker", "Batches"]
