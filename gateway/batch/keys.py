"""Where the Batch API keeps things in Redis (prefix `tandem:` by default).

Every key carries the hash tag `{batch}`, so on Redis Cluster they share one slot and the
scripts that update several of them at once (a line's result, its count and its ack) stay
atomic.

    {p}{batch}:file:<id>         hash    tenant, filename, purpose, bytes, created_at, lines
    {p}{batch}:body:<id>         string  the file's bytes (absent with batch.files_dir)
    {p}{batch}:files:<tenant>    zset    the tenant's file ids, by creation order (listing)
    {p}{batch}:job:<id>          hash    a batch record (see jobs.py)
    {p}{batch}:jobs:<tenant>     zset    the tenant's batch ids, by creation order (listing)
    {p}{batch}:seq               string  the creation counter behind both orders
    {p}{batch}:active            set     ids of batches not finished yet (every tenant)
    {p}{batch}:q:<id>:<pool>     stream  the lines of a batch for one pool; group `workers`
    {p}{batch}:res:<id>          hash    custom_id -> result (written once, HSETNX)
    {p}{batch}:reporter          string  the replica that reports the backlog (a lease)
    {p}{batch}:expiry            zset    file:<id> and job:<id> -> when they are deleted (retention)
"""

from __future__ import annotations

GROUP = "workers"


class Keys:
    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}{{batch}}:"

    def file(self, file_id: str) -> str:
        return f"{self.base}file:{file_id}"

    def body(self, file_id: str) -> str:
        return f"{self.base}body:{file_id}"

    def files(self, tenant: str) -> str:
        return f"{self.base}files:{tenant}"

    def job(self, batch_id: str) -> str:
        return f"{self.base}job:{batch_id}"

    def jobs(self, tenant: str) -> str:
        return f"{self.base}jobs:{tenant}"

    @property
    def seq(self) -> str:
        return f"{self.base}seq"

    @property
    def active(self) -> str:
        return f"{self.base}active"

    def queue(self, batch_id: str, pool: str) -> str:
        return f"{self.base}q:{batch_id}:{pool}"

    def results(self, batch_id: str) -> str:
        return f"{self.base}res:{batch_id}"

    @property
    def expiry(self) -> str:
        return f"{self.base}expiry"

    @property
    def reporter(self) -> str:
        return f"{self.base}reporter"
