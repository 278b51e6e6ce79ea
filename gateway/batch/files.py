"""Batch files: input JSONL uploaded with `purpose=batch`, output and error JSONL written when a
batch finishes. Metadata lives in Redis; bodies in Redis or in `batch.files_dir` (a directory
every replica shares), bounded by `batch.max_file_bytes`. A tenant sees only its own files.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.batch.keys import Keys
from gateway.state.redis_conn import Client, RedisState, text
from tandem.errors import BadRequest, NotFound

PURPOSES = ("batch", "batch_output")


def file_not_found(file_id: str) -> NotFound:
    """No such file for this tenant (404): another tenant's file is not there either."""
    return NotFound(f"No such File object: {file_id}", param="file_id")


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    lines: int = 0
    expires_at: int | None = None  # None: stored before retention existed, kept until deleted

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_hash(cls, file_id: str, h: dict[Any, Any]) -> StoredFile:
        f = {text(k): text(v) for k, v in h.items()}
        return cls(
            id=file_id,
            tenant=f["tenant"],
            filename=f["filename"],
            purpose=f["purpose"],
            bytes=int(f["bytes"]),
            created_at=int(f["created_at"]),
            lines=int(f.get("lines", 0)),
            expires_at=int(f["expires_at"]) if f.get("expires_at") else None,
        )


class FileStore:
    def __init__(
        self, redis: RedisState, keys: Keys, directory: Path | None = None, *, retention_s: float
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.directory = directory
        self.retention_s = retention_s
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    async def put(
        self, tenant: str, filename: str, purpose: str, data: bytes, *, lines: int = 0, file_id: str = ""
    ) -> StoredFile:
        """Stores a file (its body first, then the metadata that makes it visible)."""
        if purpose not in PURPOSES:
            raise BadRequest(f"purpose must be 'batch', got {purpose!r}", param="purpose")
        now = int(time.time())
        expires_at = now + int(self.retention_s)
        stored = StoredFile(
            file_id or new_file_id(), tenant, filename, purpose, len(data), now, lines, expires_at
        )
        meta: dict[Any, Any] = {
            "tenant": tenant,
            "filename": filename,
            "purpose": purpose,
            "bytes": str(stored.bytes),
            "created_at": str(stored.created_at),
            "lines": str(lines),
            "expires_at": str(expires_at),
        }
        if self.directory is not None:
            await asyncio.to_thread(_write_atomically, self._path(stored.id), data)

        async def call(r: Client) -> None:
            order = await r.incr(self.keys.seq)
            pipe = r.pipeline(transaction=True)
            if self.directory is None:
                pipe.set(self.keys.body(stored.id), data)
            pipe.hset(self.keys.file(stored.id), mapping=meta)
            pipe.zadd(self.keys.files(tenant), {stored.id: order})
            pipe.zadd(self.keys.expiry, {f"file:{stored.id}": expires_at})
            await pipe.execute()

        await self.redis.run(call)
        return stored

    async def get(self, tenant: str, file_id: str) -> StoredFile:
        """The tenant's file `file_id`; `FileNotFound` when it is not the tenant's or not there."""
        h = await self.redis.run(lambda r: r.hgetall(self.keys.file(file_id)))
        if not h:
            raise file_not_found(file_id)
        stored = StoredFile.from_hash(file_id, h)
        if stored.tenant != tenant:
            raise file_not_found(file_id)
        return stored

    async def content(self, tenant: str, file_id: str) -> bytes:
        await self.get(tenant, file_id)
        if self.directory is not None:
            try:
                return await asyncio.to_thread(self._path(file_id).read_bytes)
            except FileNotFoundError:
                raise file_not_found(file_id) from None
        data = await self.redis.run(lambda r: r.get(self.keys.body(file_id)))
        if data is None:
            raise file_not_found(file_id)
        return data if isinstance(data, bytes) else data.encode()

    async def page(
        self, tenant: str, *, after: str | None, limit: int, newest_first: bool, purpose: str | None
    ) -> tuple[list[StoredFile], bool]:
        """The tenant's files in creation order (newest first, or oldest), after the file
        `after`, of one `purpose` if given; and whether more follow."""
        key = self.keys.files(tenant)
        rank_of = "zrevrank" if newest_first else "zrank"
        span = max(limit + 1, 100)  # ids read per round; a purpose filter may skip some

        async def ids_from(start: int) -> list[str]:
            async def call(r: Client) -> list[Any]:
                read = r.zrevrange if newest_first else r.zrange
                return list(await read(key, start, start + span - 1))

            return [text(i) for i in await self.redis.run(call)]

        start = 0
        if after:
            rank: Any = await self.redis.run(lambda r: getattr(r, rank_of)(key, after))
            if rank is None:
                raise file_not_found(after)
            start = int(rank) + 1
        found: list[StoredFile] = []
        while len(found) <= limit:
            ids = await ids_from(start)
            if not ids:
                break
            start += len(ids)
            for stored in await self._load(ids):
                if purpose is None or stored.purpose == purpose:
                    found.append(stored)
        return found[:limit], len(found) > limit

    async def _load(self, ids: list[str]) -> list[StoredFile]:
        """The files of `ids` that still exist, in that order."""

        async def call(r: Client) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for file_id in ids:
                pipe.hgetall(self.keys.file(file_id))
            return list(await pipe.execute())

        hashes = await self.redis.run(call)
        return [StoredFile.from_hash(i, h) for i, h in zip(ids, hashes, strict=True) if h]

    async def delete(self, tenant: str, file_id: str) -> None:
        await self.get(tenant, file_id)
        await self._remove(tenant, file_id)

    async def expire(self, file_id: str) -> None:
        """Deletes a file whose retention has passed, whoever owns it (gone already: nothing)."""
        h = await self.redis.run(lambda r: r.hgetall(self.keys.file(file_id)))
        await self._remove(StoredFile.from_hash(file_id, h).tenant if h else None, file_id)

    async def _remove(self, tenant: str | None, file_id: str) -> None:
        async def call(r: Client) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.delete(self.keys.file(file_id), self.keys.body(file_id))
            if tenant is not None:
                pipe.zrem(self.keys.files(tenant), file_id)
            pipe.zrem(self.keys.expiry, f"file:{file_id}")
            await pipe.execute()

        await self.redis.run(call)
        if self.directory is not None:
            self._path(file_id).unlink(missing_ok=True)
        if self.directory is not None:
            self._path(file_id).unlink(missing_ok=True)

    def _path(self, file_id: str) -> Path:
        assert self.directory is not None
        return self.directory / file_id


def _write_atomically(path: Path, data: bytes) -> None:
    # Written beside and renamed: a reader never sees half a file, a crash leaves no partial one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
