"""The local content-addressed store that pulls plan against.

Layout under the root (every name is a digest we validated, never a name from a manifest):

    blobs/sha256/<hex>      verified blobs: weights chunks, settings, configs
    partial/sha256/<hex>    downloads in progress; their length is where a resume starts
    manifests/sha256/<hex>  manifests pulled, as the registry sent them
    files/sha256/<hex>      reassembled weights files, verified against the config's digest
                            (built by `registry.assembly`)
    verified/<hex>          a stamp per verified blob or file: its size, mtime and inode when
                            its digest was last checked
    pulls.json              per repository, the versions pulled, newest first (what `gc` keeps)
    .lock                   held (flock) while a pull writes, so two pullers never collide

A blob enters `blobs/` only by rename after its digest was verified. Disks and people still
change files afterwards, so nothing is reused on its name alone: a blob or file is trusted
when its size and stamp still match (a stat, no read: `check`), and hashed again when they
do not, when no stamp exists, or on demand (`verify`, and `check(..., full=True)` before a
version is switched to). A damaged one is discarded, and the next pull fetches it again.
A crash leaves at most a partial file, which the next pull resumes, and temporary files,
which the next pull removes (`clean_temporaries`, under the lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import structlog

from registry.artifact import Manifest, ModelConfig, check_digest, parse_config, parse_manifest
from registry.errors import DigestMismatch, DiskFull, ManifestRejected, RegistryError, StoreBusy

log = structlog.get_logger("registry.store")

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_HEX = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HISTORY = 8  # versions remembered per repository (gc keeps two)


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
        for sub in ("blobs/sha256", "partial/sha256", "manifests/sha256", "files/sha256", "verified"):
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

    def _stamp_path(self, digest: str) -> Path:
        return self.root / "verified" / _hex(digest)

    # -- queries
    def has(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def stamp(self, digest: str, path: Path) -> None:
        """Records that `path` was verified to hold `digest`, as it is now."""
        st = path.stat()
        self._stamp_path(digest).write_text(f"{st.st_size} {st.st_mtime_ns} {st.st_ino}\n")

    def check(self, digest: str, size: int, path: Path, *, full: bool = False) -> bool:
        """Whether `path` still holds `digest` (`size` bytes). Cheap when its stamp matches
        (one stat); otherwise, or with `full`, hashed again. A damaged file is removed."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        if st.st_size != size:
            self._discard(digest, path, f"is {st.st_size} bytes, expected {size}")
            return False
        if not full:
            try:
                if self._stamp_path(digest).read_text().split() == [
                    str(st.st_size),
                    str(st.st_mtime_ns),
                    str(st.st_ino),
                ]:
                    return True
            except FileNotFoundError:
                pass
        actual = hash_file(path)
        if actual != digest:
            self._discard(digest, path, f"holds {actual}")
            return False
        self.stamp(digest, path)
        return True

    def check_blob(self, digest: str, size: int, *, full: bool = False) -> bool:
        return self.check(digest, size, self.blob_path(digest), full=full)

    def _discard(self, digest: str, path: Path, why: str) -> None:
        log.warning("store_damaged", path=str(path), digest=digest, problem=why)
        path.unlink(missing_ok=True)
        self._stamp_path(digest).unlink(missing_ok=True)

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
        self.stamp(digest, dest)
        return dest

    def discard_partial(self, digest: str) -> None:
        self.partial_path(digest).unlink(missing_ok=True)

    def put_bytes(self, digest: str, data: bytes) -> Path:
        """Stores small bytes (a config) after checking they are what `digest` names."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise DigestMismatch(f"blob {digest} has the wrong content (got {actual})")
        dest = self.blob_path(digest)
        if not self.check(digest, len(data), dest):
            self._write_atomic(dest, data)
            self.stamp(digest, dest)
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
        for stamp in (self.root / "verified").iterdir():
            if not any((self.root / sub / stamp.name).exists() for sub in ("blobs/sha256", "files/sha256")):
                stamp.unlink(missing_ok=True)
        log.info("store_gc", kept=len(keep), freed_bytes=freed)
        return freed

    def clean_temporaries(self) -> int:
        """Removes the temporary files of writers that died (call with the lock held: then
        no live writer has one). Returns bytes freed."""
        freed = 0
        for sub in ("blobs/sha256", "manifests/sha256", "files/sha256"):
            for path in (self.root / sub).glob("*.tmp*"):
                with contextlib.suppress(FileNotFoundError):
                    freed += path.stat().st_size
                    path.unlink()
                    log.info("store_temporary_removed", path=str(path))
        return freed

    # -- what was pulled, for `gc`
    def record_pull(self, repository: str, manifest_digest: str) -> None:
        """Notes that `manifest_digest` is now the newest version pulled of `repository`."""
        history = self.pulls()
        versions = [manifest_digest, *(d for d in history.get(repository, []) if d != manifest_digest)]
        history[repository] = versions[:_HISTORY]
        tmp = self.root / f"pulls.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(history, indent=1, sort_keys=True))
        os.replace(tmp, self.root / "pulls.json")

    def pulls(self) -> dict[str, list[str]]:
        try:
            data = json.loads((self.root / "pulls.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return (
            {
                str(repo): [d for d in digests if isinstance(d, str) and _DIGEST.match(d)]
                for repo, digests in data.items()
                if isinstance(digests, list)
            }
            if isinstance(data, dict)
            else {}
        )

    def verify(self, *, full: bool = True) -> list[str]:
        """Checks every blob and reassembled file against its digest (hashing it with `full`,
        else trusting matching stamps); removes damaged ones. Returns what was wrong."""
        problems: list[str] = []
        for sub in ("blobs/sha256", "files/sha256"):
            for path in sorted((self.root / sub).iterdir()):
                if ".tmp" in path.name or not _HEX.match(path.name):
                    continue
                digest = "sha256:" + path.name
                size = path.stat().st_size
                if not self.check(digest, size, path, full=full):
                    problems.append(f"{sub.split('/')[0]}/{path.name[:12]} did not match its digest: removed")
        for path in sorted((self.root / "manifests/sha256").iterdir()):
            if ".tmp" in path.name or not _HEX.match(path.name):
                continue
            if hash_file(path) != "sha256:" + path.name:
                path.unlink(missing_ok=True)
                problems.append(f"manifests/{path.name[:12]} did not match its digest: removed")
        return problems


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return "sha256:" + h.hexdigest()
