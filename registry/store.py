"""The local content-addressed store that pulls plan against.

Layout under the root (every name is a digest we validated, never a name from a manifest):

    blobs/sha256/<hex>      verified blobs: weights chunks, settings, configs
    partial/sha256/<hex>    downloads in progress; their length is where a resume starts
    manifests/sha256/<hex>  manifests pulled, as the registry sent them
    files/sha256/<hex>      reassembled weights files, verified against the config's digest
                            (built by `registry.assembly`)
    .lock                   held (flock) while a pull writes, so two pullers never collide

A blob enters `blobs/` only by rename after its digest was verified, so anything in `blobs/`
is whole and correct; a crash leaves at most a partial file, which the next pull resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import structlog

from registry.artifact import Manifest, ModelConfig, check_digest, parse_config, parse_manifest
from registry.errors import DigestMismatch, DiskFull, ManifestRejected, RegistryError, StoreBusy

log = structlog.get_logger("registry.store")

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _hex(digest: str) -> str:
    return check_digest(digest, "store")[len("sha256:") :]


@contextlib.contextmanager
def disk_errors(what: str) -> Iterator[None]:
    """Turns a full disk into `DiskFull` (a message, not a traceback)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise DiskFull(f"disk full while {what}: {exc.strerror}") from None
        raise


class Store:
    """A directory of blobs named by digest. `min_free_bytes` is space a pull must leave free."""

    def __init__(self, root: str | os.PathLike[str], *, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        for sub in ("blobs/sha256", "partial/sha256", "manifests/sha256", "files/sha256"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- paths
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs/sha256" / _hex(digest)

    def partial_path(self, digest: str) -> Path:
        return self.root / "partial/sha256" / _hex(digest)

    def file_path(self, digest: str) -> Path:
        return self.root / "files/sha256" / _hex(digest)

    def manifest_path(self, digest: str) -> Path:
        return self.root / "manifests/sha256" / _hex(digest)

    # -- queries
    def has(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def partial_size(self, digest: str) -> int:
        try:
            return self.partial_path(digest).stat().st_size
        except FileNotFoundError:
            return 0

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def ensure_space(self, needed: int, what: str) -> None:
        free = self.free_bytes()
        if free - needed < self.min_free_bytes:
            raise DiskFull(
                f"{what} needs {needed} bytes in {self.root} but only {free} are free"
                + (f" (and {self.min_free_bytes} must stay free)" if self.min_free_bytes else "")
            )

    # -- writes
    def commit_partial(self, digest: str) -> Path:
        """Moves a verified partial download into `blobs/`."""
        dest = self.blob_path(digest)
        os.replace(self.partial_path(digest), dest)
        return dest

    def discard_partial(self, digest: str) -> None:
        self.partial_path(digest).unlink(missing_ok=True)

    def put_bytes(self, digest: str, data: bytes) -> Path:
        """Stores small bytes (a config) after checking they are what `digest` names."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise DigestMismatch(f"blob {digest} has the wrong content (got {actual})")
        dest = self.blob_path(digest)
        if not dest.exists():
            self._write_atomic(dest, data)
        return dest

    def put_manifest(self, digest: str, raw: bytes) -> Path:
        actual = "sha256:" + hashlib.sha256(raw).hexdigest()
        if actual != digest:
            raise DigestMismatch(f"manifest {digest} has the wrong content (got {actual})")
        dest = self.manifest_path(digest)
        if not dest.exists():
            self._write_atomic(dest, raw)
        return dest

    def _write_atomic(self, dest: Path, data: bytes) -> None:
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        with disk_errors(f"writing {dest.name[:12]}"):
            tmp.write_bytes(data)
            os.replace(tmp, dest)

    # -- bookkeeping
    @contextlib.contextmanager
    def lock(self, *, wait: bool = True) -> Iterator[None]:
        """Exclusive use of the store for writing (other processes included)."""
        fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise StoreBusy(f"another process is pulling into {self.root}") from None
            yield
        finally:
            os.close(fd)

    @contextlib.asynccontextmanager
    async def alock(self) -> AsyncIterator[None]:
        """`lock` for async code: waiting for another process never blocks the event loop."""
        fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load_manifest(self, manifest_digest: str) -> Manifest:
        return parse_manifest(self.manifest_path(manifest_digest).read_bytes())

    def load_config(self, manifest_digest: str) -> ModelConfig:
        """The config of a manifest this store holds (both already verified when pulled)."""
        manifest = parse_manifest(self.manifest_path(manifest_digest).read_bytes())
        return parse_config(self.read_blob(manifest.config.digest))

    def referenced(self, manifest_digest: str) -> set[str]:
        """Every blob and file digest a stored manifest needs."""
        manifest = parse_manifest(self.manifest_path(manifest_digest).read_bytes())
        refs = {manifest.config.digest, *(layer.digest for layer in manifest.layers)}
        with contextlib.suppress(FileNotFoundError, ManifestRejected):
            refs.add(parse_config(self.read_blob(manifest.config.digest)).tandem.weights.digest)
        return refs

    def gc(self, keep: set[str], *, keep_files: set[str] | None = None) -> int:
        """Deletes manifests not in `keep` and every blob, partial and file they alone used.

        `keep_files` limits which reassembled weights files survive (default: all of the kept
        versions'); once Ollama holds a copy the edge can drop its own. Returns bytes freed.
        """
        needed: set[str] = set()
        for digest in keep:
            try:
                needed |= self.referenced(digest)
            except (FileNotFoundError, RegistryError):
                log.warning("gc_keep_missing", manifest=digest)
        files_needed = needed if keep_files is None else keep_files
        freed = 0
        for sub, wanted in (
            ("manifests/sha256", keep),
            ("blobs/sha256", needed),
            ("partial/sha256", needed),
            ("files/sha256", files_needed),
        ):
            for path in (self.root / sub).iterdir():
                name = path.name.split(".tmp", 1)[0]
                if "sha256:" + name in wanted and ".tmp" not in path.name:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    freed += path.stat().st_size
                    path.unlink()
        log.info("store_gc", kept=len(keep), freed_bytes=freed)
        return freed
