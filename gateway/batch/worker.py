"""The batch worker of one gateway replica: takes lines from the queues when its pools have
spare capacity, runs each through the same path as an interactive request
(`GatewayService.complete`: the same route decision, tenant limits, endpoint choice, retries
and fallbacks), writes each result once, and finishes batches.

Three loops:
- **dispatch**: for each pool with spare capacity (`capacity.py`), lines from the active
  batches' queues: first those another replica claimed and left idle (it died), then new ones;
- **renew**: this replica's claim on the lines it is running, so no one takes them over;
- **sweep**: batches to finish (all lines done but the replica that did the last one died,
  cancelled ones with nothing left running, expired ones, a finalize that died half-way), and
  the backlog of every pool for its demand metric (one replica reports it, holding a lease);
  that replica also deletes the files and finished batches past `batch.retention_days`.

A line fails for good on a refusal of the request itself (400, 403, 404) or after
`batch.max_attempts` engine failures; "no free slot" and tenant rate limits only delay it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.batch import outputs
from gateway.batch.batches import Batches
from gateway.batch.capacity import SpareCapacity
from gateway.batch.jobs import BatchRecord, Status
from gateway.batch.queue import Entry
from gateway.state.redis_conn import StateUnavailable
from tandem.errors import (
    PermissionDenied,
    RateLimited,
    TandemError,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tandem.logs import bind_request, get_logger, outside_requests
from tandem.wire import openai as wire

if TYPE_CHECKING:
    from gateway.service import GatewayService
    from gateway.state import Tenant

log = get_logger("tandem.gateway.batch")

# Failures that may pass: the line is tried again (engine failures count as attempts).
TRANSIENT = (RateLimited, UpstreamUnavailable, UpstreamTimeout, UpstreamFailed)
ACTIVE_CACHE_S = 0.5
TENANT_CACHE_S = 5.0


class BatchWorker:
    def __init__(self, batches: Batches, gateway: GatewayService, capacity: SpareCapacity) -> None:
        self.batches = batches
        self.gateway = gateway
        self.capacity = capacity
        self.config = batches.config
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._tasks: list[asyncio.Task[None]] = []
        self._lines: set[asyncio.Task[None]] = set()
        self._running: dict[str, set[str]] = defaultdict(set)  # stream -> entry ids being run
        self._active: list[BatchRecord] = []
        self._active_at = -1.0
        self._tenants: dict[str, tuple[float, Tenant | None]] = {}
        self._reclaimed_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._stopping = False

    async def start(self) -> None:
        for loop in (self._dispatch, self._renew, self._sweep):
            self._tasks.append(asyncio.get_running_loop().create_task(self._forever(loop)))

    async def stop(self, grace_s: float) -> None:
        """Stops taking lines and lets those running finish for up to `grace_s`; lines still
        running then are left claimed, and another replica runs them after the idle timeout."""
        self._stopping = True
        self._wake.set()
        if self._lines:
            await asyncio.wait(self._lines, timeout=grace_s)
        for task in [*self._tasks, *self._lines]:
            task.cancel()
        for task in [*self._tasks, *self._lines]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _forever(self, loop: Callable[[], Awaitable[float]]) -> None:
        """Runs one loop's step until stopped; Redis being away pauses it, nothing more."""
        while not self._stopping:
            try:
                pause = await loop()
            except StateUnavailable:
                pause = self.gateway.config.redis.probe_seconds
            except Exception:
                outside_requests(log.exception, "batch_loop_failed", loop=loop.__name__)
                pause = 1.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    # --- dispatch ----------------------------------------------------------------------------

    async def _dispatch(self) -> float:
        if self._stopping:
            return 1.0
        active = [r for r in await self._in_progress() if r.status is Status.IN_PROGRESS]
        now = time.monotonic()
        for pool in {p for r in active for p in r.pools}:
            for record in active:
                if pool not in record.pools:
                    continue
                free = self.capacity.free(pool)
                if free <= 0:
                    break
                queue = self.batches.queue
                stream = queue.keys.queue(record.id, pool)
                entries: list[Entry] = []
                if now - self._reclaimed_at.get(stream, 0.0) >= self.config.claim_idle_seconds / 4:
                    self._reclaimed_at[stream] = now
                    entries = await queue.reclaim(
                        record.id, pool, self.consumer, self.config.claim_idle_seconds, free
                    )
                    entries = [e for e in entries if e.entry_id not in self._running[stream]]
                if len(entries) < free:
                    entries += await queue.take(record.id, pool, self.consumer, free - len(entries))
                for entry in entries:
                    self._launch(entry, record)
        return self.config.poll_seconds

    async def _in_progress(self) -> list[BatchRecord]:
        now = time.monotonic()
        if now - self._active_at >= ACTIVE_CACHE_S:
            records = [await self.batches.jobs.load(i) for i in await self.batches.jobs.active()]
            self._active = [r for r in records if r is not None]
            self._active_at = now
        return self._active

    def _launch(self, entry: Entry, record: BatchRecord) -> None:
        self.capacity.started(entry.pool)
        self._running[entry.stream].add(entry.entry_id)
        task = asyncio.get_running_loop().create_task(self._run(entry, record))
        self._lines.add(task)
        task.add_done_callback(self._lines.discard)

    async def _run(self, entry: Entry, record: BatchRecord) -> None:
        rid = outputs.request_id()
        bind_request(rid, batch=entry.batch_id, custom_id=entry.custom_id)
        delay: float | None = None
        attempt = entry.attempt
        handed_over = False
        try:
            current = await self.batches.jobs.load(entry.batch_id)
            if current is None or current.status is not Status.IN_PROGRESS:
                await self.batches.queue.skip(entry)  # cancelled or expired meanwhile
                return
            try:
                tenant = await self._tenant(record.tenant)  # a tenant deleted since: the line fails
                req = wire.parse_request(entry.body)
                req.request_id, req.stream, req.tenant = rid, False, record.tenant
                self.capacity.handed_over(entry.pool)
                handed_over = True
                result = await self.gateway.complete(req, tenant)
            except TRANSIENT as err:
                counts = not isinstance(err, RateLimited)
                if counts and entry.attempt >= self.config.max_attempts:
                    await self._record(entry, outputs.failed(entry.custom_id, rid, err), ok=False)
                    return
                delay = err.retry_after or self.gateway.config.limits.retry_after_seconds
                attempt = entry.attempt + 1 if counts else entry.attempt
                log.info("batch_line_retry", error=err.message, attempt=entry.attempt, after_s=delay)
                return
            except TandemError as err:  # a refusal of the request itself
                await self._record(entry, outputs.failed(entry.custom_id, rid, err), ok=False)
                return
            except StateUnavailable:
                raise
            except Exception:
                # A fault of ours: fail the line rather than have every replica retry it forever.
                log.exception("batch_line_crashed")
                failure = TandemError("internal error while running this request")
                await self._record(entry, outputs.failed(entry.custom_id, rid, failure), ok=False)
                return
            await self._record(entry, outputs.succeeded(entry.custom_id, rid, result), ok=True)
        except StateUnavailable:
            return  # the line stays claimed: it is run again after the idle timeout
        finally:
            self._running[entry.stream].discard(entry.entry_id)
            self.capacity.finished(entry.pool, handed_over=handed_over)
            self._wake.set()
            if delay is not None:
                await self._requeue_later(entry, delay, attempt)

    async def _requeue_later(self, entry: Entry, delay: float, attempt: int) -> None:
        # Engine failures count as attempts; waiting for a slot or a rate limit does not. If
        # this replica dies while waiting, the line is still claimed and is run again anyway.
        await asyncio.sleep(delay)
        with contextlib.suppress(StateUnavailable):
            await self.batches.queue.requeue(entry, attempt)

    async def _record(self, entry: Entry, line: bytes, *, ok: bool) -> None:
        first = await self.batches.queue.record(entry, outputs.stored(entry.number, ok, line), ok=ok)
        if not first:
            log.info("batch_line_duplicate_dropped")
            return
        record = await self.batches.jobs.load(entry.batch_id)
        if record is not None and record.total and record.done >= record.total:
            await self.batches.finish(record, Status.COMPLETED, {Status.IN_PROGRESS})

    async def _tenant(self, name: str) -> Tenant | None:
        if not self.gateway.auth.required:
            return None
        now = time.monotonic()
        cached = self._tenants.get(name)
        if cached is None or now - cached[0] >= TENANT_CACHE_S:
            cached = (now, await self.gateway.state.tenants.tenant(name))
            self._tenants[name] = cached
        if cached[1] is None:
            raise PermissionDenied(f"the batch's tenant {name!r} no longer exists")
        return cached[1]

    # --- renew -------------------------------------------------------------------------------

    async def _renew(self) -> float:
        for stream, ids in list(self._running.items()):
            if ids:
                await self.batches.queue.touch(stream, self.consumer, sorted(ids))
        return self.config.claim_idle_seconds / 3

    # --- sweep -------------------------------------------------------------------------------

    async def _sweep(self) -> float:
        now = int(time.time())
        stale = now - int(self.config.claim_idle_seconds)
        reporting = await self._hold_reporter_lease()
        backlog: dict[str, int] = defaultdict(int)
        for batch_id in await self.batches.jobs.active():
            record = await self.batches.jobs.load(batch_id)
            if record is None:
                continue
            running = 0
            for name in record.pools:
                lag, pending = await self.batches.queue.backlog(record.id, name)
                if record.status is Status.IN_PROGRESS:
                    backlog[name] += lag
                running += pending
            await self._settle(record, now, stale, running)
        for pool in self.gateway.config.pools:
            self.capacity.report_backlog(pool.name, backlog.get(pool.name, 0) if reporting else 0)
        if reporting:  # one replica deletes what outlived its retention
            await self.batches.prune(now)
        return self.config.sweep_seconds

    async def _settle(self, record: BatchRecord, now: int, stale: int, running: int) -> None:
        """Moves a batch on when nobody else will: see the module's docstring."""
        status, batches = record.status, self.batches
        if status is Status.IN_PROGRESS and record.total and record.done >= record.total:
            await batches.finish(record, Status.COMPLETED, {Status.IN_PROGRESS})
        elif status is Status.IN_PROGRESS and now >= record.expires_at:
            await batches.finish(record, Status.EXPIRED, {Status.IN_PROGRESS})
        elif status is Status.CANCELLING and (
            running == 0 or record.stamps.get("cancelling_at", now) < stale
        ):
            await batches.finish(record, Status.CANCELLED, {Status.CANCELLING})
        elif status is Status.FINALIZING and record.stamps.get("finalizing_at", now) < stale:
            # The replica finalizing it died: take it over (a new finalizing_at claims it).
            if await batches.jobs.move(record.id, {Status.FINALIZING}, Status.FINALIZING):
                await batches.finalize(record.id)
        elif status is Status.VALIDATING and record.created_at < now - 600:
            lost = "the gateway replica validating this batch stopped before it finished"
            await batches.fail(
                record, [{"code": "validation_lost", "message": lost, "param": None, "line": None}]
            )

    async def _hold_reporter_lease(self) -> bool:
        """Whether this replica reports the backlog: it holds (or takes, or renews) the lease."""
        key = self.batches.queue.keys.reporter
        ttl_ms = int(self.config.sweep_seconds * 3 * 1000)

        async def call(r: Any) -> bool:
            if await r.set(key, self.consumer, nx=True, px=ttl_ms):
                return True
            holder = await r.get(key)
            if holder is not None and holder.decode() == self.consumer:
                await r.pexpire(key, ttl_ms)
                return True
            return False

        return await self.batches.queue.redis.run(call)
