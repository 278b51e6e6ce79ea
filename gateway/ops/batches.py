"""What the ops page shows of batch jobs, through one small interface.

The Batch API (`gateway/batch/`) is optional: a gateway without it shows no batches. Whatever
keeps batches provides a `BatchSource`; the gateway's default is `NoBatches`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """One batch job as the ops page lists it."""

    id: str
    tenant: str
    status: str  # the Batch API's status: validating, in_progress, finalizing, completed, ...
    model: str = ""
    total: int = 0  # requests in the batch
    completed: int = 0
    failed: int = 0
    created_at: float = 0.0  # unix time


class BatchSource(Protocol):
    async def batches(self) -> list[BatchSummary]:
        """The batches worth an operator's look (those not finished, and recently finished ones),
        newest first."""
        ...


class NoBatches:
    """A gateway without batching: nothing to show."""

    async def batches(self) -> list[BatchSummary]:
        return []
