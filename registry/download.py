"""Downloading layers into the store: resumable, verified while streaming, all on the event loop.

Each transfer is a GET over the process's one outbound `Transport` (`registry.http`: the
registry's credentials, its 401 challenge answered again when a token expires mid-pull,
redirects to object storage followed without the credentials). The body is read with
`readany()` as it arrives; the pieces are handed, in order, to a worker thread that hashes
them and writes them at their offset in the partial file (sha256 and `pwrite` release the
GIL), while the loop goes on reading: the network is never read from a thread, and hashing
never stalls the other transfers. A transfer keeps at most `_MAX_PENDING` bytes between the
socket and the disk (beyond that it waits for the writer before reading on, and the
transport's flow control holds the sender), so memory stays flat whatever the layer size.

The guarantees:

- a layer grows in `partial/sha256/<hex>`; after an interruption it resumes with
  `Range: bytes=N-` after re-hashing the N bytes on disk (a registry that ignores the range
  gets the layer restarted);
- the sha256 is computed over exactly the bytes written; only a verified blob is renamed
  into `blobs/`; a mismatch discards the partial file and fetches the layer once more from
  scratch, a second mismatch is a `DigestMismatch` naming the layer;
- a registry that announces or sends more bytes than the manifest declares is refused
  (`ManifestRejected`); network errors and 5xx are retried with backoff, resuming each time;
- a cancelled transfer stops at once; what it received is written out first, a valid
  prefix for the next resume;
- memory is bounded per transfer, whatever the layer size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from registry.errors import (
    DigestMismatch,
    ManifestRejected,
    RegistryUnavailable,
    status_error,
    tls_hint,
)
from registry.http import MAX_ERROR_BODY, RegistryHttp
from registry.progress import Progress
from registry.store import Store, disk_errors
from tandem.transport import Response, Unreachable

log = structlog.get_logger("registry.download")

_HASH_READ = 1 << 20
_REPORT_EVERY = 4 << 20  # progress and rate-limit bookkeeping per 4 MiB, not per read
# Bytes received but not yet hashed and written, per transfer, before reading waits.
_MAX_PENDING = 1 << 20


class _Transient(Exception):
    """A transfer that stopped for a reason worth resuming (connection lost, 5xx)."""


class _Mismatch(Exception):
    def __init__(self, actual: str, reason: str) -> None:
        super().__init__(reason)
        self.actual = actual
        self.reason = reason


class RateLimit:
    """A shared byte budget per second across all transfers (`--max-rate`)."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._start = time.monotonic()
        self._sent = 0

    def pause_for(self, n: int) -> float:
        """Counts `n` bytes; returns how long the caller should sleep to stay within the rate."""
        self._sent += n
        return self._sent / self._rate - (time.monotonic() - self._start)


@dataclass
class _Transfer:
    """One layer's transfer, shared by its attempts (retries resume; counts accumulate)."""

    digest: str
    size: int
    label: str
    progress: Progress
    moved: int = 0  # bytes received over the network, every attempt included


class _Writer:
    """Hashes and writes a transfer's pieces in order, in a worker thread, behind the reads:
    the worker takes whatever has queued up since its last pass, until the queue is empty."""

    def __init__(self, fd: int, hasher: Any, offset: int, pool: ThreadPoolExecutor) -> None:
        self._fd = fd
        self._hasher = hasher
        self._offset = offset  # the worker's; read by the loop only when no worker runs
        self._pool = pool
        self._lock = threading.Lock()
        self._queue: list[bytes] = []
        self._queued = 0  # bytes received and not yet on disk
        self._job: concurrent.futures.Future[None] | None = None  # the running worker, if any
        self._failed: concurrent.futures.Future[None] | None = None  # a worker that raised

    def _work(self, pieces: list[bytes]) -> None:
        offset = self._offset
        for piece in pieces:
            self._hasher.update(piece)
            _pwrite_all(self._fd, memoryview(piece), offset)
            offset += len(piece)
        self._offset = offset

    def _drain(self) -> None:
        while True:
            with self._lock:
                pieces, self._queue = self._queue, []
                if not pieces:
                    self._job = None
                    return
            try:
                self._work(pieces)
            except BaseException:
                with self._lock:
                    self._failed = self._job
                    self._job = None
                raise
            with self._lock:
                self._queued -= sum(map(len, pieces))

    async def add(self, piece: bytes) -> None:
        with self._lock:
            failed = self._failed
            self._queue.append(piece)
            self._queued += len(piece)
            job = self._job
            if job is None and failed is None:
                job = self._job = self._pool.submit(self._drain)
            backlog = self._queued
        if failed is not None:
            failed.result()  # a disk error surfaces here
        if backlog >= _MAX_PENDING and job is not None:
            # The reader waits for the disk. Shielded: a cancelled reader must not cancel a
            # worker that has not started yet (it would never run, and `_job` never clear).
            await asyncio.shield(asyncio.wrap_future(job))

    async def flush(self) -> None:
        """Everything received is hashed and on disk, in order. Also after a cancellation
        (waiting synchronously for the worker: at most `_MAX_PENDING` bytes behind), so what
        was received is a valid prefix for the next resume."""
        try:
            while (job := self._job) is not None:
                await asyncio.shield(asyncio.wrap_future(job))
        finally:
            while (job := self._job) is not None:
                if job.cancel():  # not started: its pieces are written just below, here
                    with self._lock:
                        if self._job is job:
                            self._job = None
                    break
                concurrent.futures.wait([job])
            if self._failed is not None:
                self._failed.result()
            if self._queue:
                pieces, self._queue = self._queue, []
                self._work(pieces)


class BlobFetcher:
    """Fetches layers of one repository into a `Store`, over `http` (`RegistryHttp`)."""

    def __init__(
        self,
        http: RegistryHttp,
        *,
        base: str,
        repository: str,
        max_rate: int | None = None,
        retries: int = 5,
        max_writers: int = 64,
    ) -> None:
        self._http = http
        self._base = base
        self._registry = http.registry
        self._repository = repository
        self._rate = RateLimit(max_rate) if max_rate else None
        self._retries = retries
        # Small rate caps get smooth shaping; large ones are checked once per 4 MiB.
        self._report_every = min(_REPORT_EVERY, max(128 << 10, max_rate // 16)) if max_rate else _REPORT_EVERY
        self._pool = ThreadPoolExecutor(max_workers=max_writers, thread_name_prefix="pull-write")

    async def aclose(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True)

    async def fetch(
        self,
        digest: str,
        size: int,
        label: str,
        store: Store,
        progress: Progress,
        on_refetch: Callable[[], None],
    ) -> int:
        """Fetches one layer into the store (resuming a partial file); returns bytes moved."""
        transfer = _Transfer(digest, size, label, progress)
        for attempt in (1, 2):
            try:
                await self._fetch_with_retries(transfer, store)
            except _Mismatch as mismatch:
                store.discard_partial(digest)
                if attempt == 2:
                    raise DigestMismatch(
                        f"layer {digest} ({label}) from {self._registry} failed verification twice: "
                        f"{mismatch.reason} (got {mismatch.actual}); "
                        "the registry's copy is corrupt, re-push it"
                    ) from None
                log.warning("blob_rejected_refetching", digest=digest, reason=mismatch.reason)
                progress.restart(digest, size)
                on_refetch()
                continue
            with disk_errors("storing a layer"):
                store.commit_partial(digest)
            return transfer.moved
        raise AssertionError("unreachable")

    async def _fetch_with_retries(self, transfer: _Transfer, store: Store) -> None:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_Transient),
                stop=stop_after_attempt(self._retries),
                wait=wait_exponential(multiplier=0.25, max=8),
                reraise=True,
            ):
                with attempt:
                    await self._fetch_once(transfer, store)
        except _Transient as exc:
            raise RegistryUnavailable(
                f"download of {transfer.digest[:19]} ({transfer.label}) kept failing: {exc}"
            ) from None

    async def _fetch_once(self, transfer: _Transfer, store: Store) -> None:
        digest, size = transfer.digest, transfer.size
        path = store.partial_path(digest)
        have = store.partial_size(digest)
        if have > size:
            store.discard_partial(digest)
            have = 0
        hasher = hashlib.sha256()
        if have:
            await asyncio.to_thread(_hash_prefix, path, have, hasher)
        if have < size:
            url = f"{self._base}/blobs/{digest}"
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                resp = await self._http.get(url, headers)
            except (Unreachable, TimeoutError) as exc:
                raise _Transient(tls_hint(f"cannot reach {self._registry}: {exc}")) from None
            try:
                have, hasher = await self._accept(resp, transfer, store, have, hasher)
                with disk_errors("downloading a layer"):
                    have = await self._stream(resp, transfer, store, have, hasher)
            finally:
                resp.release()  # read to its end: reused; otherwise closed
            if have < size:
                raise _Transient(f"connection ended after {have} of {size} bytes")
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise _Mismatch(actual, "content does not match the digest")

    async def _accept(
        self, resp: Response, transfer: _Transfer, store: Store, have: int, hasher: Any
    ) -> tuple[int, Any]:
        """Checks the response before a byte is written; returns where writing starts."""
        digest, size, label = transfer.digest, transfer.size, transfer.label
        if resp.status == 416:
            await resp.drain(MAX_ERROR_BODY)
            store.discard_partial(digest)
            raise _Transient("registry refused the resume range; restarting the layer")
        err = status_error(
            resp.status,
            f"layer {digest}",
            self._registry,
            self._repository,
            credentials_from=self._http.auth.source,
        )
        if err is not None:
            await resp.drain(MAX_ERROR_BODY)
            if isinstance(err, RegistryUnavailable):
                raise _Transient(err.message)
            raise err
        if have and (resp.status != 206 or not _range_starts_at(resp, have)):
            have, hasher = 0, hashlib.sha256()  # no Range support: start over
        announced = _announced_total(resp)
        if announced is not None and announced != size:
            store.discard_partial(digest)
            raise ManifestRejected(
                f"layer {digest} ({label}): the manifest says {size} bytes but the registry "
                f"holds {announced}: refusing a manifest whose sizes lie"
            )
        return have, hasher

    async def _stream(self, resp: Response, transfer: _Transfer, store: Store, have: int, hasher: Any) -> int:
        """Reads the body into the partial file from `have` on; returns the bytes now on disk."""
        size = transfer.size
        unreported = 0
        fd = os.open(store.partial_path(transfer.digest), os.O_WRONLY | os.O_CREAT, 0o644)
        writer = _Writer(fd, hasher, have, self._pool)
        try:
            os.ftruncate(fd, have)
            try:
                while True:
                    try:
                        piece = await resp.readany()
                    except (Unreachable, TimeoutError) as exc:
                        raise _Transient(str(exc)) from None
                    if not piece:
                        break
                    if have + len(piece) > size:
                        raise _TooLong()
                    await writer.add(piece)
                    have += len(piece)
                    transfer.moved += len(piece)
                    unreported += len(piece)
                    if unreported >= self._report_every:
                        await self._report(transfer, unreported)
                        unreported = 0
            finally:
                await writer.flush()
            # Closing a file with fresh dirty pages can take milliseconds: not on the loop.
            closing, fd = fd, -1
            await asyncio.get_running_loop().run_in_executor(self._pool, os.close, closing)
        except _TooLong:
            os.close(fd)
            fd = -1
            store.discard_partial(transfer.digest)
            raise ManifestRejected(
                f"layer {transfer.digest} ({transfer.label}): the registry sent more than "
                f"the {size} bytes the manifest declares"
            ) from None
        finally:
            if fd >= 0:
                os.close(fd)
            if unreported:
                transfer.progress.advance(transfer.digest, unreported)
        return have

    async def _report(self, transfer: _Transfer, n: int) -> None:
        transfer.progress.advance(transfer.digest, n)
        if self._rate and (pause := self._rate.pause_for(n)) > 0:
            await asyncio.sleep(pause)


class _TooLong(Exception):
    """The registry sent more bytes than the layer holds."""


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _announced_total(resp: Response) -> int | None:
    """The blob's full size as the response states it (Content-Range total or Content-Length)."""
    if resp.status == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _range_starts_at(resp: Response, start: int) -> bool:
    return resp.headers.get("Content-Range", "").startswith(f"bytes {start}-")


def _hash_prefix(path: Path, n: int, hasher: Any) -> None:
    with path.open("rb", buffering=0) as f:
        buf = bytearray(_HASH_READ)
        view = memoryview(buf)
        while n > 0:
            got = f.readinto(view[: min(_HASH_READ, n)])
            if not got:
                break
            hasher.update(view[:got])
            n -= got
