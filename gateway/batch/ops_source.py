"""The ops page's view of batch jobs (`gateway/ops/batches.py`'s `BatchSource`), read from the
Batch API's job store: the active batches, newest first."""

from __future__ import annotations

from gateway.batch.jobs import JobStore
from gateway.ops.batches import BatchSummary

MAX_SHOWN = 50  # a page, not an archive: the Batch API lists the rest per tenant


class ActiveBatches:
    def __init__(self, jobs: JobStore) -> None:
        self._jobs = jobs

    async def batches(self) -> list[BatchSummary]:
        records = [r for i in await self._jobs.active() if (r := await self._jobs.load(i)) is not None]
        records.sort(key=lambda r: r.created_at, reverse=True)
        return [
            BatchSummary(
                id=r.id,
                tenant=r.tenant,
                status=r.status.value,
                model=", ".join(r.pools),
                total=r.total,
                completed=r.completed,
                failed=r.failed,
                created_at=float(r.created_at),
            )
            for r in records[:MAX_SHOWN]
        ]
