"""`Batches`: the Batch API's operations (create, retrieve, list, cancel) and a batch's end
(finalize: the output and error files, the final status), over the file store, the records and
the work queue. The HTTP routes (`routes.py`) and the workers (`worker.py`) both use it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import orjson

from gateway.batch import outputs
from gateway.batch.files import FileStore
from gateway.batch.jobs import (
    FINISHED,
    WINDOW_SECONDS,
    BatchRecord,
    JobStore,
    Status,
    new_batch_id,
)
from gateway.batch.lines import ENDPOINT, parse_lines
from gateway.batch.queue import WorkQueue
from gateway.config import Batch as BatchConfig
from gateway.state.redis_conn import text
from tandem.errors import BadRequest, NotFound, RateLimited, TandemError
from tandem.logs import get_logger
from tandem.wire import openai as wire

if TYPE_CHECKING:
    from gateway.service import GatewayService
    from gateway.state import Tenant

log = get_logger("tandem.gateway.batch")

MAX_METADATA = 16


def check_metadata(metadata: Any) -> dict[str, str] | None:
    """OpenAI's rules: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA:
        raise BadRequest(f"metadata must be an object of at most {MAX_METADATA} pairs", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise BadRequest(
                f"metadata[{key[:64]!r}]: keys are at most 64 characters, values strings of at most 512",
                param="metadata",
            )
    return metadata


def tenant_name(tenant: Tenant | None) -> str:
    return tenant.name if tenant is not None else ""


class Batches:
    def __init__(
        self,
        config: BatchConfig,
        files: FileStore,
        jobs: JobStore,
        queue: WorkQueue,
        gateway: GatewayService,
    ) -> None:
        self.config = config
        self.files = files
        self.jobs = jobs
        self.queue = queue
        self.gateway = gateway

    async def create(
        self,
        tenant: Tenant | None,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
    ) -> BatchRecord:
        """Validates the batch and its lines and queues them; a line the gateway would refuse
        (unknown model, a model the tenant may not use, too long) fails the batch with errors
        naming each such line, as OpenAI's `validating` step does."""
        if endpoint != ENDPOINT:
            raise BadRequest(f"endpoint must be {ENDPOINT!r}, got {endpoint!r}", param="endpoint")
        if completion_window not in WINDOW_SECONDS:
            raise BadRequest(
                f"completion_window must be '24h', got {completion_window!r}", param="completion_window"
            )
        name = tenant_name(tenant)
        file = await self.files.get(name, input_file_id)
        if file.purpose != "batch":
            raise BadRequest(
                f"file {input_file_id} has purpose {file.purpose!r}, not 'batch'", param="input_file_id"
            )
        active = await self.jobs.active_count(name)
        if active >= self.config.max_active_batches:
            raise RateLimited(
                f"this tenant has {active} unfinished batches, its limit (batch.max_active_batches)",
                retry_after=60,
            )
        now = int(time.time())
        record = BatchRecord(
            id=new_batch_id(),
            tenant=name,
            input_file_id=input_file_id,
            completion_window=completion_window,
            status=Status.VALIDATING,
            created_at=now,
            expires_at=now + WINDOW_SECONDS[completion_window],
            metadata=metadata,
        )
        await self.jobs.create(record)
        try:
            lines = parse_lines(
                await self.files.content(name, input_file_id), max_lines=self.config.max_lines
            )
            by_pool: dict[str, list[tuple[int, str, bytes]]] = defaultdict(list)
            errors: list[dict[str, Any]] = []
            for line in lines:
                try:
                    _, pool = self.gateway.decide(wire.parse_request(line.body), tenant)
                except TandemError as err:
                    errors.append(
                        {
                            "code": err.kind,
                            "message": err.message,
                            "param": getattr(err, "param", None),
                            "line": line.number,
                        }
                    )
                    continue
                by_pool[pool.name].append((line.number, line.custom_id, line.body))
            if errors:
                await self.fail(record, errors)
            else:
                for pool_name, pool_lines in by_pool.items():
                    await self.queue.enqueue(record.id, pool_name, pool_lines)
                await self.jobs.update(record.id, total=len(lines), pools=_json_list(sorted(by_pool)))
                await self.jobs.move(record.id, {Status.VALIDATING}, Status.IN_PROGRESS)
        except TandemError as err:
            await self.fail(record, [{"code": err.kind, "message": err.message, "param": None, "line": None}])
        log.info("batch_created", batch=record.id, input_file=input_file_id)
        return await self.jobs.get(name, record.id)

    async def fail(self, record: BatchRecord, errors: list[dict[str, Any]]) -> None:
        await self.jobs.update(record.id, errors=_json_list(errors))
        await self.jobs.move(record.id, {Status.VALIDATING}, Status.FAILED)
        await self.jobs.retire(record.id)

    async def cancel(self, tenant: Tenant | None, batch_id: str) -> BatchRecord:
        """Stops a batch: no more of its lines start; those running finish, and it ends
        `cancelled` with what completed in its output file."""
        name = tenant_name(tenant)
        record = await self.jobs.get(name, batch_id)
        if record.status in FINISHED or record.status in (Status.CANCELLING, Status.FINALIZING):
            if record.status not in (Status.CANCELLING, Status.CANCELLED):
                raise BadRequest(
                    f"Cannot cancel a batch with status '{record.status.value}'.", param="batch_id"
                )
            return record
        await self.jobs.move(batch_id, {Status.VALIDATING, Status.IN_PROGRESS}, Status.CANCELLING)
        log.info("batch_cancelling", batch=batch_id)
        return await self.jobs.get(name, batch_id)

    # --- the end of a batch ------------------------------------------------------------------

    async def finish(self, record: BatchRecord, final: Status, allowed: set[Status]) -> bool:
        """Moves the batch to finalizing (aiming at `final`) if it is in one of `allowed`, and
        if this caller made that move, finalizes it. True when this caller finalized it."""
        if not await self.jobs.move(record.id, allowed, Status.FINALIZING, final=final.value):
            return False
        await self.finalize(record.id)
        return True

    async def finalize(self, batch_id: str) -> None:
        """Writes the output and error files and ends the batch. Safe to run again (a replica
        that died here is replaced by the sweep): file ids follow from the batch id."""
        record = await self.jobs.load(batch_id)
        if record is None or record.status is not Status.FINALIZING:
            return
        final = Status(record.final or Status.COMPLETED.value)
        results = await self.queue.results(batch_id)
        if final is Status.EXPIRED:
            try:
                data = await self.files.content(record.tenant, record.input_file_id)
            except NotFound:  # its owner deleted the input: the unrun lines cannot be named
                data = b""
            lines = parse_lines(data, max_lines=self.config.max_lines) if data else []
            for line in lines:
                if line.custom_id not in results:
                    results[line.custom_id] = outputs.stored(
                        line.number, False, outputs.expired(line.custom_id)
                    )
        out, err, completed, failed = outputs.assemble(results)
        suffix = batch_id.removeprefix("batch_")
        fields: dict[str, str | int] = {"completed": completed, "failed": failed}
        if out:
            stored = await self.files.put(
                record.tenant, f"{batch_id}_output.jsonl", "batch_output", out, file_id=f"file-{suffix}-out"
            )
            fields["output_file_id"] = stored.id
        if err:
            stored = await self.files.put(
                record.tenant, f"{batch_id}_error.jsonl", "batch_output", err, file_id=f"file-{suffix}-err"
            )
            fields["error_file_id"] = stored.id
        await self.jobs.move(batch_id, {Status.FINALIZING}, final, **fields)
        await self.jobs.retire(batch_id)
        await self.queue.drop(batch_id, record.pools)
        log.info("batch_finished", batch=batch_id, status=final.value, completed=completed, failed=failed)

    # --- retention ----------------------------------------------------------------------------

    async def prune(self, now: float, most: int = 200) -> int:
        """Deletes the files and finished batches whose retention had passed by `now` (at most
        `most` of them; the sweep calls again); returns how many."""
        expiry = self.jobs.keys.expiry
        due = await self.jobs.redis.run(lambda r: r.zrangebyscore(expiry, "-inf", now, start=0, num=most))
        for member in due:
            kind, _, ident = text(member).partition(":")
            if kind == "file":
                await self.files.expire(ident)
            elif kind == "job":
                await self.jobs.expire(ident)
        if due:
            log.info("batch_retention_pruned", deleted=len(due))
        return len(due)


def _json_list(items: list[Any]) -> str:
    return orjson.dumps(items).decode()
