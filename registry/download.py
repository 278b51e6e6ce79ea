"""Downloading layers into the store: resumable, verified while streaming, one thread each.

Each transfer runs in a thread of its own over a blocking HTTP/1.1 connection (the standard
library's `http.client`, connections kept alive and reused). The thread reads the body
straight into one reused 128 KiB buffer, hashes it and writes it at its offset in the partial
file while the bytes are still in the CPU cache: sha256, socket reads and file writes all
release the GIL, so transfers run truly in parallel and no byte is copied in Python. This is
where the CPU goes on an edge box (sha256 alone is ~0.7 CPU-seconds per GiB), and measured on
the 2-CPU reference VM it costs ~1.5 CPU-seconds per GiB received, hashed and written against
~1.9 for aiohttp with hashing handed to threads and ~3 for httpx (figures and the comparison
in docs/model-distribution.md). Manifests, configs and the auth handshake stay on httpx
(`registry.pull`); a transfer that meets a 401 asks that client to answer the challenge
(`reauth`) and goes on with the header it got.

The guarantees:

- a layer grows in `partial/sha256/<hex>`; after an interruption it resumes with
  `Range: bytes=N-` after re-hashing the N bytes on disk (a registry that ignores the range
  gets the layer restarted);
- the sha256 is computed over exactly the bytes written; only a verified blob is renamed
  into `blobs/`; a mismatch discards the partial file and fetches the layer once more from
  scratch, a second mismatch is a `DigestMismatch` naming the layer;
- a registry that announces or sends more bytes than the manifest declares is refused
  (`ManifestRejected`); network errors and 5xx are retried with backoff, resuming each time;
- memory is one buffer per transfer, whatever the layer size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from registry.errors import (
    DigestMismatch,
    ManifestRejected,
    RegistryError,
    RegistryUnavailable,
    status_error,
)
from registry.progress import Progress
from registry.store import Store, disk_errors

log = structlog.get_logger("registry.download")

# Read, hash and write one buffer while it is in L2: on the reference VM 128-256 KiB costs
# ~1.5 CPU-s/GiB, 1 MiB ~2.2 and 4 MiB ~3.2 (the bytes fall out of cache between steps).
_BUFFER = 128 << 10
_HASH_READ = 1 << 20
_REPORT_EVERY = 4 << 20  # progress and rate-limit bookkeeping per 4 MiB, not per read
_MAX_REDIRECTS = 5
_MAX_ERROR_BODY = 64 << 10


class _Transient(Exception):
    """A transfer that stopped for a reason worth resuming (connection lost, 5xx)."""


class _Mismatch(Exception):
    def __init__(self, actual: str, reason: str) -> None:
        super().__init__(reason)
        self.actual = actual
        self.reason = reason


class _Unauthorized(Exception):
    """The registry answered 401: the auth header must be renewed (`reauth`) first."""


class _Stopped(Exception):
    """The awaiting task was cancelled; the thread leaves the partial file as it is."""


class RateLimit:
    """A shared byte budget per second across all transfers (`--max-rate`); thread-safe."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._start = time.monotonic()
        self._sent = 0
        self._lock = threading.Lock()

    def pause_for(self, n: int) -> float:
        """Counts `n` bytes; returns how long the caller should sleep to stay within the rate."""
        with self._lock:
            self._sent += n
            return self._sent / self._rate - (time.monotonic() - self._start)


@dataclass
class _Transfer:
    """One layer's transfer, shared by its attempts (retries resume; counts accumulate)."""

    digest: str
    size: int
    label: str
    progress: Progress
    stop: threading.Event = field(default_factory=threading.Event)
    moved: int = 0  # bytes received over the network, every attempt included
    conn: http.client.HTTPConnection | None = None  # the connection reading now, if any

    def abort(self) -> None:
        """Stops the transfer thread at once, even mid-read (shuts its socket down)."""
        self.stop.set()
        conn = self.conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


class _Connections:
    """Idle keep-alive connections per origin, shared by the transfer threads."""

    def __init__(self, timeout: float, ssl_context: ssl.SSLContext | None) -> None:
        self._timeout = timeout
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str], queue.SimpleQueue[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def _queue(self, origin: tuple[str, str]) -> queue.SimpleQueue[http.client.HTTPConnection]:
        with self._lock:
            return self._idle.setdefault(origin, queue.SimpleQueue())

    def get(self, origin: tuple[str, str]) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to `origin` and whether it was reused (a reused one may be stale)."""
        with contextlib.suppress(queue.Empty):
            return self._queue(origin).get_nowait(), True
        scheme, netloc = origin
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                netloc, timeout=self._timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(netloc, timeout=self._timeout)
        return conn, False

    def put(self, origin: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        self._queue(origin).put(conn)

    def close(self) -> None:
        with self._lock:
            queues, self._idle = list(self._idle.values()), {}
        for q in queues:
            with contextlib.suppress(queue.Empty):
                while True:
                    q.get_nowait().close()


class BlobFetcher:
    """Fetches layers of one repository into a `Store`.

    `authorization()` gives the Authorization header to send (or None); `reauth(url)` renews
    it after a 401 (the httpx client answers the registry's challenge). Call `aclose` when done.
    """

    def __init__(
        self,
        *,
        base: str,
        registry: str,
        repository: str,
        authorization: Callable[[], str | None],
        reauth: Callable[[str], Awaitable[None]],
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        max_rate: int | None = None,
        retries: int = 5,
        max_transfers: int = 64,
    ) -> None:
        self._base = base
        self._registry = registry
        self._repository = repository
        self._authorization = authorization
        self._reauth = reauth
        self._connections = _Connections(timeout, ssl_context)
        self._rate = RateLimit(max_rate) if max_rate else None
        self._retries = retries
        # Small rate caps get smooth shaping; large ones are checked once per 4 MiB.
        self._report_every = min(_REPORT_EVERY, max(_BUFFER, max_rate // 16)) if max_rate else _REPORT_EVERY
        self._threads = ThreadPoolExecutor(max_workers=max_transfers, thread_name_prefix="pull")

    async def aclose(self) -> None:
        await asyncio.to_thread(self._threads.shutdown, wait=True)
        self._connections.close()

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
                    await self._fetch_authorized(transfer, store)
        except _Transient as exc:
            raise RegistryUnavailable(
                f"download of {transfer.digest[:19]} ({transfer.label}) kept failing: {exc}"
            ) from None

    async def _fetch_authorized(self, transfer: _Transfer, store: Store) -> None:
        url = f"{self._base}/blobs/{transfer.digest}"
        try:
            await self._in_thread(transfer, store, url)
        except _Unauthorized:
            await self._reauth(url)
            try:
                await self._in_thread(transfer, store, url)
            except _Unauthorized:
                err = status_error(401, f"layer {transfer.digest}", self._registry, self._repository)
                assert err is not None
                raise err from None

    async def _in_thread(self, transfer: _Transfer, store: Store, url: str) -> None:
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._threads, self._fetch_once, transfer, store, url)
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # The thread stops now; what it wrote is a valid prefix for the next resume.
            job.add_done_callback(lambda f: f.cancelled() or f.exception())
            transfer.abort()
            raise

    # ------------------------------------------------------------------ in the transfer thread

    def _fetch_once(self, transfer: _Transfer, store: Store, url: str) -> None:
        digest, size = transfer.digest, transfer.size
        path = store.partial_path(digest)
        have = store.partial_size(digest)
        if have > size:
            store.discard_partial(digest)
            have = 0
        hasher = hashlib.sha256()
        if have:
            _hash_prefix(path, have, hasher)
        if have < size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with self._open(url, headers, transfer) as resp:
                have, hasher = self._accept(resp, transfer, store, have, hasher)
                with disk_errors("downloading a layer"):
                    have = self._stream(resp, transfer, store, have, hasher)
            if have < size:
                raise _Transient(f"connection ended after {have} of {size} bytes")
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise _Mismatch(actual, "content does not match the digest")

    def _accept(
        self, resp: http.client.HTTPResponse, transfer: _Transfer, store: Store, have: int, hasher: Any
    ) -> tuple[int, Any]:
        """Checks the response before a byte is written; returns where writing starts."""
        digest, size, label = transfer.digest, transfer.size, transfer.label
        if resp.status == 416:
            store.discard_partial(digest)
            raise _Transient("registry refused the resume range; restarting the layer")
        if resp.status == 401:
            raise _Unauthorized()
        err = status_error(resp.status, f"layer {digest}", self._registry, self._repository)
        if isinstance(err, RegistryUnavailable):
            raise _Transient(err.message)
        if err is not None:
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

    def _stream(
        self, resp: http.client.HTTPResponse, transfer: _Transfer, store: Store, have: int, hasher: Any
    ) -> int:
        """Reads the body into the partial file from `have` on; returns the bytes now on disk."""
        size = transfer.size
        buf = bytearray(_BUFFER)
        view = memoryview(buf)
        unreported = 0
        fd = os.open(store.partial_path(transfer.digest), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, have)
            while True:
                if transfer.stop.is_set():
                    raise _Stopped()
                # One byte more than the layer can hold, so a registry sending extra is caught.
                n = _read(resp, view[: min(_BUFFER, size - have + 1)])
                if not n:
                    break
                if have + n > size:
                    os.close(fd)
                    fd = -1
                    store.discard_partial(transfer.digest)
                    raise ManifestRejected(
                        f"layer {transfer.digest} ({transfer.label}): the registry sent more than "
                        f"the {size} bytes the manifest declares"
                    )
                chunk = view[:n]
                hasher.update(chunk)
                _pwrite_all(fd, chunk, have)
                have += n
                transfer.moved += n
                unreported += n
                if unreported >= self._report_every:
                    self._report(transfer, unreported)
                    unreported = 0
        finally:
            if fd >= 0:
                os.close(fd)
            if unreported:
                self._report(transfer, unreported)
        return have

    def _report(self, transfer: _Transfer, n: int) -> None:
        transfer.progress.advance(transfer.digest, n)
        if self._rate and (pause := self._rate.pause_for(n)) > 0:
            transfer.stop.wait(pause)

    @contextlib.contextmanager
    def _open(
        self, url: str, headers: dict[str, str], transfer: _Transfer
    ) -> Iterator[http.client.HTTPResponse]:
        """GET `url` following redirects; the connection goes back to the pool if reusable."""
        headers = dict(headers)
        if auth := self._authorization():
            headers["Authorization"] = auth
        for _ in range(_MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            origin = (parts.scheme, parts.netloc)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            conn, resp = self._request(origin, target, headers)
            transfer.conn = conn
            location = resp.getheader("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                self._finish(origin, conn, resp)
                redirect = urljoin(url, location)
                if urlsplit(redirect)[:2] != parts[:2]:
                    headers.pop("Authorization", None)  # never hand registry credentials to storage
                url = redirect
                continue
            try:
                yield resp
            except BaseException:
                conn.close()
                raise
            finally:
                transfer.conn = None
            self._finish(origin, conn, resp)
            return
        raise RegistryError(f"{self._registry} redirected a layer download more than {_MAX_REDIRECTS} times")

    def _request(
        self, origin: tuple[str, str], target: str, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        while True:
            conn, reused = self._connections.get(origin)
            try:
                conn.request("GET", target, headers=headers)
                return conn, conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused:
                    continue  # the server closed an idle keep-alive connection; open a new one
                raise _Transient(f"cannot reach {origin[1]}: {exc.__class__.__name__}: {exc}") from None

    def _finish(
        self, origin: tuple[str, str], conn: http.client.HTTPConnection, resp: http.client.HTTPResponse
    ) -> None:
        """Reads what is left of a (small) body and keeps the connection if it can be reused."""
        try:
            leftover = resp.read(_MAX_ERROR_BODY + 1) if not resp.isclosed() else b""
        except (OSError, http.client.HTTPException):
            leftover = b"x" * (_MAX_ERROR_BODY + 1)
        if resp.will_close or len(leftover) > _MAX_ERROR_BODY or not resp.isclosed():
            conn.close()
        else:
            self._connections.put(origin, conn)


def _read(resp: http.client.HTTPResponse, into: memoryview) -> int:
    try:
        return resp.readinto(into)
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(f"{exc.__class__.__name__}: {exc}") from None


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _announced_total(resp: http.client.HTTPResponse) -> int | None:
    """The blob's full size as the response states it (Content-Range total or Content-Length)."""
    if resp.status == 206:
        total = (resp.getheader("Content-Range") or "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.getheader("Content-Length")
    return int(length) if length and length.isdigit() else None


def _range_starts_at(resp: http.client.HTTPResponse, start: int) -> bool:
    return (resp.getheader("Content-Range") or "").startswith(f"bytes {start}-")


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
