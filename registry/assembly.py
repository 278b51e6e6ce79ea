"""Reassembling the weights file from its chunks, verified, while the chunks arrive.

The weights file is the concatenation of its chunks in the config's order. An `Assembler`
appends each chunk as soon as it and every chunk before it are in the store (a pull starts it
beside the downloads and tells it when a layer lands), hashing exactly the bytes it writes:
the whole-file sha256 checked against the config is a verification of the assembled file
itself, and it is ready moments after the last chunk lands instead of a second pass later.
Writing to disk is started as the file grows (an `fdatasync` in a helper thread, one at a
time), so the closing `fsync` has little left to wait for. The file appears under its digest
only by rename, after its digest, size and fsync all check out and the pull as a whole
succeeded (a pull that fails on a later layer leaves no weights file behind).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import structlog

from registry.artifact import ChunkEntry, ModelConfig
from registry.errors import DigestMismatch, RegistryError
from registry.store import Store, disk_errors

log = structlog.get_logger("registry.assembly")

_BUFFER = 256 << 10  # read, hash and write one buffer while it is in the CPU cache
_WRITEBACK_EVERY = 64 << 20


class AssemblyCancelled(RegistryError):
    """The pull stopped before every chunk arrived; nothing was left behind."""


class Assembler:
    """Builds one weights file in the store: `run` (blocking: call it in a thread) writes and
    verifies it, `commit` puts it in place once the whole pull succeeded, `discard` drops it.
    `chunk_ready` and `cancel` may be called from any thread."""

    def __init__(
        self,
        store: Store,
        config: ModelConfig,
        on_bytes: Callable[[int], None] | None = None,
        *,
        full_check: bool = False,
    ) -> None:
        """`full_check`: a weights file already in the store is hashed again before it is
        reused (otherwise its size and stamp decide, `Store.check`)."""
        self._full_check = full_check
        self._store = store
        self._weights = config.tandem.weights
        self._chunks = config.tandem.chunks
        self._on_bytes = on_bytes
        self._changed = threading.Condition()
        self._cancelled = False

    @property
    def path(self) -> Path:
        return self._store.file_path(self._weights.digest)

    @property
    def built(self) -> Path:
        """Where the verified file is after `run`: its temporary name, or its place if it was
        there already."""
        return self._tmp if self._tmp.exists() else self.path

    @property
    def _tmp(self) -> Path:
        return self.path.with_name(self.path.name + f".tmp{os.getpid()}")

    def chunk_ready(self) -> None:
        """A layer was committed to the store: the assembler checks whether it can go on."""
        with self._changed:
            self._changed.notify_all()

    def cancel(self) -> None:
        with self._changed:
            self._cancelled = True
            self._changed.notify_all()

    def run(self) -> None:
        """Writes and verifies the weights file (fsynced, under a temporary name); `commit`
        then puts it in place. Nothing to do when the store already has it."""
        dest = self.path
        if self._store.check(self._weights.digest, self._weights.size, dest, full=self._full_check):
            return
        self._store.ensure_space(self._weights.size, "reassembling the weights file")
        whole = hashlib.sha256()
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        writeback = _Writeback(fd)
        done = False
        try:
            with disk_errors("reassembling the weights file"):
                buf = memoryview(bytearray(_BUFFER))
                for chunk in self._chunks:
                    self._wait_for(chunk.digest)
                    self._append(chunk, fd, whole, buf, writeback)
                writeback.finish()
                os.fsync(fd)
            size = os.fstat(fd).st_size
            actual = "sha256:" + whole.hexdigest()
            if actual != self._weights.digest or size != self._weights.size:
                raise DigestMismatch(self._explain(size, actual))
            done = True
        finally:
            writeback.abandon()
            os.close(fd)
            if not done:
                self.discard()

    def commit(self) -> Path:
        """Puts the verified file in place under its digest (after `run`); returns its path."""
        dest = self.path
        if self._tmp.exists():
            os.replace(self._tmp, dest)
            _fsync_dir(dest.parent)
            self._store.stamp(self._weights.digest, dest)
        return dest

    def discard(self) -> None:
        """Removes a file `run` built but that will not be committed (the pull failed)."""
        self._tmp.unlink(missing_ok=True)

    def _wait_for(self, digest: str) -> None:
        with self._changed:
            while not self._store.has(digest):
                if self._cancelled:
                    raise AssemblyCancelled("the pull stopped before the weights file was complete")
                self._changed.wait()

    def _append(
        self, chunk: ChunkEntry, fd: int, whole: hashlib._Hash, buf: memoryview, writeback: _Writeback
    ) -> None:
        with self._store.blob_path(chunk.digest).open("rb", buffering=0) as src:
            left = chunk.size
            while left:
                n = src.readinto(buf[: min(len(buf), left)])
                if not n:
                    break  # a short blob: the size check below names it
                part = buf[:n]
                whole.update(part)
                _write_all(fd, part)
                left -= n
                writeback.grew(n)
                if self._on_bytes:
                    self._on_bytes(n)

    def _explain(self, size: int, actual: str) -> str:
        """Why the file is wrong: chunks that no longer match their digest (discarded, so the
        next pull fetches them again), or a config whose whole-file digest disagrees with them."""
        weights = self._weights
        damaged = [c.digest for c in self._chunks if not _blob_matches(self._store, c.digest)]
        for digest in damaged:
            self._store.blob_path(digest).unlink(missing_ok=True)
        detail = (
            f"{len(damaged)} chunk(s) in the store were damaged and were discarded; pull again"
            if damaged
            else "every chunk matches its own digest, so the config's whole-file digest is wrong"
        )
        return (
            f"reassembled {weights.filename} is {size} bytes with digest {actual}, "
            f"but the config says {weights.size} bytes, {weights.digest}: {detail}"
        )


def assemble(store: Store, config: ModelConfig, on_bytes: Callable[[int], None] | None = None) -> Path:
    """Assembles the weights file from chunks already in the store (blocking)."""
    assembler = Assembler(store, config, on_bytes)
    assembler.run()
    return assembler.commit()


class _Writeback:
    """Starts writing the growing file to disk in a helper thread, so the final fsync is short.

    An error of a background fdatasync is raised by the next `grew` or by `finish`: the kernel
    reports a write-back error to one fsync only, so it must not be lost here.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._since = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def grew(self, n: int) -> None:
        self._since += n
        if self._since < _WRITEBACK_EVERY:
            return
        if self._pending is not None:
            if not self._pending.done():
                return
            self._pending.result()
        self._since = 0
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writeback")
        self._pending = self._pool.submit(os.fdatasync, self._fd)

    def finish(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def abandon(self) -> None:
        """Waits for a write-back in flight (so the file can be closed) and ignores its result."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending = None


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _fsync_dir(path: Path) -> None:
    """Makes a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _blob_matches(store: Store, digest: str) -> bool:
    h = hashlib.sha256()
    try:
        with store.blob_path(digest).open("rb", buffering=0) as f:
            while block := f.read(1 << 20):
                h.update(block)
    except FileNotFoundError:
        return False
    return "sha256:" + h.hexdigest() == digest
