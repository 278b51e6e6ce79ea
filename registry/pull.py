"""Pulling a model version into the local store: plan, then move only what is missing.

1. Fetch the manifest (size-capped) and the config, verify their digests, and refuse
   anything hostile (`registry.artifact`).
2. Plan by digest against the store: each layer is present (reused), partially downloaded
   (resumed from where it stopped) or missing. The plan is reported before a byte moves.
3. Download the missing blobs in parallel with httpx: a partial file grows under
   `partial/`, an interrupted transfer resumes with an HTTP Range request, the sha256 is
   computed while streaming, and only a verified blob is renamed into `blobs/`. A blob whose
   bytes do not match its digest is discarded and fetched once more from scratch; a second
   mismatch fails with a message that names the blob.
4. Reassemble the weights file from its chunks and verify the whole file's digest and size.

oras-py has no parallel, resumable or verified download, so this part is our own.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from registry.artifact import (
    DEFAULT_LIMITS,
    OCI_MANIFEST,
    Limits,
    Manifest,
    ModelConfig,
    check_consistent,
    chunk_label,
    parse_config,
    parse_manifest,
)
from registry.auth import Credentials, RegistryAuth, resolve_credentials
from registry.errors import (
    AuthFailed,
    DigestMismatch,
    ManifestRejected,
    NotFound,
    RegistryError,
    RegistryUnavailable,
)
from registry.progress import NullProgress, Progress
from registry.reference import Reference
from registry.store import Store, disk_errors

log = structlog.get_logger("registry.pull")

_HASH_READ = 4 << 20


class _Transient(Exception):
    """A transfer that stopped for a reason worth resuming (connection lost, 5xx)."""


class _Mismatch(Exception):
    def __init__(self, actual: str, reason: str) -> None:
        super().__init__(reason)
        self.actual = actual
        self.reason = reason


@dataclass
class BlobPlan:
    digest: str
    size: int
    label: str
    state: Literal["present", "resume", "download"]
    have: int = 0  # bytes already in the partial file


@dataclass
class PullPlan:
    ref: Reference
    manifest_digest: str
    manifest_raw: bytes
    manifest: Manifest
    config: ModelConfig
    metadata_bytes: int
    blobs: list[BlobPlan]

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.blobs)

    @property
    def reused_bytes(self) -> int:
        return sum(b.size for b in self.blobs if b.state == "present")

    @property
    def resumed_bytes(self) -> int:
        return sum(b.have for b in self.blobs if b.state == "resume")

    @property
    def to_download_bytes(self) -> int:
        return sum(b.size - b.have for b in self.blobs if b.state != "present")

    def describe(self) -> list[str]:
        moving = [b for b in self.blobs if b.state != "present"]
        lines = [
            f"{self.ref} -> {self.manifest_digest}",
            f"  {len(self.blobs)} layers, {_h(self.total_bytes)}: {len(self.blobs) - len(moving)} present "
            f"({_h(self.reused_bytes)}), {len(moving)} to fetch ({_h(self.to_download_bytes)}"
            + (f", resuming {_h(self.resumed_bytes)} already here" if self.resumed_bytes else "")
            + ")",
        ]
        for b in moving:
            extra = f" (resume at {_h(b.have)})" if b.state == "resume" else ""
            lines.append(f"    {b.digest[7:19]}  {_h(b.size):>10}  {b.label}{extra}")
        return lines


@dataclass
class PullResult:
    reference: str
    digest: str
    weights_path: Path | None
    layers_total: int = 0
    layers_downloaded: int = 0
    layers_reused: int = 0
    bytes_total: int = 0
    bytes_downloaded: int = 0
    bytes_reused: int = 0
    bytes_resumed: int = 0
    metadata_bytes: int = 0
    refetched: int = 0
    seconds: float = 0.0  # the whole pull, reassembly included
    transfer_seconds: float = 0.0  # downloads only
    downloaded: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Bytes per second moved over the network (layers only)."""
        return self.bytes_downloaded / self.transfer_seconds if self.transfer_seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "weights": str(self.weights_path) if self.weights_path else None,
            "layers": {
                "total": self.layers_total,
                "downloaded": self.layers_downloaded,
                "reused": self.layers_reused,
            },
            "bytes": {
                "total": self.bytes_total,
                "downloaded": self.bytes_downloaded,
                "reused": self.bytes_reused,
                "resumed": self.bytes_resumed,
                "metadata": self.metadata_bytes,
            },
            "refetched": self.refetched,
            "seconds": round(self.seconds, 3),
            "transfer_seconds": round(self.transfer_seconds, 3),
            "throughput_bytes_per_s": round(self.throughput),
        }


def _h(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class _RateLimit:
    """A shared byte budget per second across all downloads (`--max-rate`)."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._start = time.monotonic()
        self._sent = 0

    async def consume(self, n: int) -> None:
        self._sent += n
        ahead = self._sent / self._rate - (time.monotonic() - self._start)
        if ahead > 0:
            await asyncio.sleep(ahead)


class RegistryClient:
    """Async reads from one repository: manifests, small blobs, and resumable downloads."""

    def __init__(
        self,
        ref: Reference,
        *,
        plain_http: bool = False,
        creds: Credentials | None = None,
        limits: Limits = DEFAULT_LIMITS,
        timeout: float = 30.0,
        max_rate: int | None = None,
        retries: int = 5,
    ) -> None:
        self.ref = ref
        self.limits = limits
        self._base = f"{'http' if plain_http else 'https'}://{ref.registry}/v2/{ref.repository}"
        self._client = httpx.AsyncClient(
            auth=RegistryAuth(creds or resolve_credentials(ref.registry)),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=True,  # registries may redirect blob GETs to object storage
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self._rate = _RateLimit(max_rate) if max_rate else None
        self._retries = retries

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def _read_capped(
        self, url: str, cap: int, what: str, headers: dict[str, str] | None = None
    ) -> tuple[httpx.Headers, bytes]:
        try:
            async with self._client.stream("GET", url, headers=headers) as resp:
                self._check_status(resp, what)
                body = bytearray()
                async for chunk in resp.aiter_raw():
                    body += chunk
                    if len(body) > cap:
                        raise ManifestRejected(f"{what} is larger than the {cap}-byte limit")
                return resp.headers, bytes(body)
        except httpx.TransportError as exc:
            raise RegistryUnavailable(
                f"cannot reach {self.ref.registry}: {exc.__class__.__name__}: {exc}"
            ) from None

    def _check_status(self, resp: httpx.Response, what: str) -> None:
        if resp.status_code in (200, 206):
            return
        if resp.status_code == 404:
            raise NotFound(f"{what} not found on {self.ref.registry}")
        if resp.status_code in (401, 403):
            raise AuthFailed(
                f"{self.ref.registry} refused access to {self.ref.repository} (HTTP {resp.status_code}); "
                "set TANDEM_REGISTRY_USERNAME/PASSWORD or log in with a docker-style config"
            )
        if resp.status_code >= 500 or resp.status_code == 429:
            raise RegistryUnavailable(f"{self.ref.registry} answered HTTP {resp.status_code} for {what}")
        raise RegistryError(f"{self.ref.registry} answered HTTP {resp.status_code} for {what}")

    async def manifest(self, target: str) -> tuple[bytes, str]:
        """The raw manifest and its verified digest."""
        what = (
            f"manifest {self.ref.repository_ref}:{target}"
            if not target.startswith("sha256:")
            else f"manifest {target}"
        )
        headers, raw = await self._read_capped(
            f"{self._base}/manifests/{target}",
            self.limits.max_manifest_bytes,
            what,
            headers={"Accept": OCI_MANIFEST},
        )
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if target.startswith("sha256:") and digest != target:
            raise DigestMismatch(f"manifest {target} has the wrong content (got {digest})")
        announced = headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise DigestMismatch(f"registry announced manifest digest {announced} but sent {digest}")
        return raw, digest

    async def small_blob(self, digest: str, size: int, cap: int, what: str) -> bytes:
        if size > cap:
            raise ManifestRejected(f"{what} declares {size} bytes, over the {cap} limit")
        _, data = await self._read_capped(f"{self._base}/blobs/{digest}", cap, what)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest or len(data) != size:
            raise DigestMismatch(f"{what} {digest} has the wrong content ({len(data)} bytes, {actual})")
        return data

    async def download(
        self, blob: BlobPlan, store: Store, progress: Progress, on_bytes: Callable[[int], None]
    ) -> int:
        """Fetches `blob` into the store (resuming a partial file); returns bytes moved."""
        moved = 0
        for attempt in (1, 2):
            try:
                moved += await self._fetch_with_retries(blob, store, progress, on_bytes)
            except _Mismatch as mismatch:
                store.discard_partial(blob.digest)
                if attempt == 2:
                    raise DigestMismatch(
                        f"layer {blob.digest} ({blob.label}) from {self.ref.registry} failed "
                        f"verification twice: {mismatch.reason} (got {mismatch.actual}); "
                        "the registry's copy is corrupt, re-push it"
                    ) from None
                log.warning("blob_rejected_refetching", digest=blob.digest, reason=mismatch.reason)
                on_bytes(-1)  # tells the caller a refetch happened
                continue
            with disk_errors("storing a layer"):
                store.commit_partial(blob.digest)
            return moved
        raise AssertionError("unreachable")

    async def _fetch_with_retries(
        self, blob: BlobPlan, store: Store, progress: Progress, on_bytes: Callable[[int], None]
    ) -> int:
        moved = 0
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_Transient),
                stop=stop_after_attempt(self._retries),
                wait=wait_exponential(multiplier=0.25, max=8),
                reraise=True,
            ):
                with attempt:
                    moved += await self._fetch_once(blob, store, progress, on_bytes)
        except _Transient as exc:
            raise RegistryUnavailable(
                f"download of {blob.digest[:19]} ({blob.label}) kept failing: {exc}"
            ) from None
        return moved

    async def _fetch_once(
        self, blob: BlobPlan, store: Store, progress: Progress, on_bytes: Callable[[int], None]
    ) -> int:
        path = store.partial_path(blob.digest)
        have = store.partial_size(blob.digest)
        if have > blob.size:
            store.discard_partial(blob.digest)
            have = 0
        hasher = hashlib.sha256()
        if have:
            await asyncio.to_thread(_hash_prefix, path, have, hasher)
        moved = 0
        if have < blob.size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                async with self._client.stream(
                    "GET", f"{self._base}/blobs/{blob.digest}", headers=headers
                ) as resp:
                    if resp.status_code == 416:
                        store.discard_partial(blob.digest)
                        raise _Transient("registry refused the resume range; restarting the layer")
                    try:
                        self._check_status(resp, f"layer {blob.digest}")
                    except RegistryUnavailable as exc:
                        raise _Transient(str(exc)) from None
                    if have and (resp.status_code != 206 or not _range_starts_at(resp, have)):
                        have, hasher = 0, hashlib.sha256()  # no Range support: start over
                    announced = _announced_total(resp, have)
                    if announced is not None and announced != blob.size:
                        store.discard_partial(blob.digest)
                        raise ManifestRejected(
                            f"layer {blob.digest} ({blob.label}): the manifest says {blob.size} bytes "
                            f"but the registry holds {announced}: refusing a manifest whose sizes lie"
                        )
                    with disk_errors("downloading a layer"), path.open("r+b" if have else "wb") as out:
                        out.seek(have)
                        out.truncate()
                        sink = _Sink(out, hasher)
                        try:
                            async for chunk in resp.aiter_raw():
                                if have + len(chunk) > blob.size:
                                    await sink.drain()
                                    out.close()
                                    store.discard_partial(blob.digest)
                                    raise ManifestRejected(
                                        f"layer {blob.digest} ({blob.label}): the registry sent more than "
                                        f"the {blob.size} bytes the manifest declares"
                                    )
                                await sink.add(chunk)
                                have += len(chunk)
                                moved += len(chunk)
                                progress.advance(blob.digest, len(chunk))
                                on_bytes(len(chunk))
                                if self._rate:
                                    await self._rate.consume(len(chunk))
                            await sink.flush()
                        finally:
                            await sink.drain()
            except httpx.TransportError as exc:
                raise _Transient(f"{exc.__class__.__name__}: {exc}") from None
            if have < blob.size:
                raise _Transient(f"connection ended after {have} of {blob.size} bytes")
        actual = "sha256:" + hasher.hexdigest()
        if actual != blob.digest:
            raise _Mismatch(actual, "content does not match the digest")
        return moved


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from parallel downloads: a named one, if any task raised one."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(group)
    named = [e for e in leaves if isinstance(e, RegistryError)]
    return (named or leaves)[0]


class _Sink:
    """Hashes and writes a download off the event loop, 256 KiB at a time, one batch in flight.

    sha256 and file writes release the GIL, so with several downloads running the network
    reads of one overlap the hashing and writing of another.
    """

    _BATCH = 256 << 10

    def __init__(self, out: Any, hasher: Any) -> None:
        self._out = out
        self._hasher = hasher
        self._buf = bytearray()
        self._pending: asyncio.Future[None] | None = None

    def _write(self, data: bytearray) -> None:
        self._hasher.update(data)
        self._out.write(data)

    async def add(self, chunk: bytes) -> None:
        self._buf += chunk
        if len(self._buf) >= self._BATCH:
            await self.flush()

    async def flush(self) -> None:
        await self.drain()
        if self._buf:
            data, self._buf = self._buf, bytearray()
            self._pending = asyncio.ensure_future(asyncio.to_thread(self._write, data))

    async def drain(self) -> None:
        """Waits for the batch in flight; afterwards the file holds every byte handed off."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending


def _announced_total(resp: httpx.Response, have: int) -> int | None:
    """The blob's full size as the response states it (Content-Range total or Content-Length)."""
    if resp.status_code == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _range_starts_at(resp: httpx.Response, start: int) -> bool:
    value = resp.headers.get("Content-Range", "")
    return value.startswith(f"bytes {start}-")


def _hash_prefix(path: Path, n: int, hasher: Any) -> None:
    with path.open("rb") as f:
        while n > 0:
            buf = f.read(min(_HASH_READ, n))
            if not buf:
                break
            hasher.update(buf)
            n -= len(buf)


async def fetch_artifact(
    client: RegistryClient, target: str
) -> tuple[bytes, str, Manifest, ModelConfig, bytes]:
    """Manifest and config, verified and validated: what `inspect` shows and a pull plans from."""
    raw, digest = await client.manifest(target)
    manifest = parse_manifest(raw, client.limits)
    config_raw = await client.small_blob(
        manifest.config.digest, manifest.config.size, client.limits.max_config_bytes, "config"
    )
    config = parse_config(config_raw, client.limits)
    check_consistent(manifest, config)
    return raw, digest, manifest, config, config_raw


async def plan_pull(client: RegistryClient, store: Store) -> PullPlan:
    ref = client.ref
    raw, digest, manifest, config, config_raw = await fetch_artifact(client, ref.target)
    store.put_bytes(manifest.config.digest, config_raw)
    labels = {c.digest: chunk_label(c.kind, c.first, c.last) for c in config.tandem.chunks}
    blobs: dict[str, BlobPlan] = {}
    for layer in manifest.layers:
        if layer.digest in blobs:
            continue
        label = labels.get(layer.digest, layer.role) if layer.role == "weights" else layer.role
        if store.has(layer.digest):
            blobs[layer.digest] = BlobPlan(layer.digest, layer.size, label, "present")
        elif (have := store.partial_size(layer.digest)) and have <= layer.size:
            blobs[layer.digest] = BlobPlan(layer.digest, layer.size, label, "resume", have)
        else:
            blobs[layer.digest] = BlobPlan(layer.digest, layer.size, label, "download")
    return PullPlan(ref, digest, raw, manifest, config, len(raw) + len(config_raw), list(blobs.values()))


async def execute_pull(
    plan: PullPlan,
    client: RegistryClient,
    store: Store,
    *,
    concurrency: int = 4,
    progress: Progress | None = None,
    assemble: bool = True,
) -> PullResult:
    """Moves what the plan says is missing, verifies it, and reassembles the weights file."""
    progress = progress or NullProgress()
    started = time.monotonic()
    result = PullResult(
        reference=str(plan.ref),
        digest=plan.manifest_digest,
        weights_path=None,
        layers_total=len(plan.blobs),
        bytes_total=plan.total_bytes,
        metadata_bytes=plan.metadata_bytes,
    )
    weights = plan.config.tandem.weights
    needed = plan.to_download_bytes + (
        0 if not assemble or store.file_path(weights.digest).exists() else weights.size
    )
    store.ensure_space(needed, f"pulling {plan.ref}")
    sem = asyncio.Semaphore(max(1, concurrency))

    def count(n: int) -> None:
        if n < 0:
            result.refetched += 1

    async def one(blob: BlobPlan) -> None:
        async with sem:
            if store.has(blob.digest):  # another puller finished it meanwhile
                result.layers_reused += 1
                result.bytes_reused += blob.size
                return
            have = store.partial_size(blob.digest)
            progress.start(blob.digest, f"{blob.label[:40]} {blob.digest[7:19]}", blob.size - have)
            moved = await client.download(blob, store, progress, count)
            progress.finish(blob.digest)
            result.layers_downloaded += 1
            result.bytes_downloaded += moved
            result.bytes_resumed += blob.size - moved if moved < blob.size else 0
            result.downloaded.append(blob.digest)

    async with store.alock():
        present = [b for b in plan.blobs if b.state == "present" and store.has(b.digest)]
        result.layers_reused += len(present)
        result.bytes_reused += sum(b.size for b in present)
        try:
            async with asyncio.TaskGroup() as group:
                for blob in plan.blobs:
                    if blob not in present:
                        group.create_task(one(blob))
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        result.transfer_seconds = time.monotonic() - started
        if assemble:
            result.weights_path = await asyncio.to_thread(store.assemble, plan.config)
        store.put_manifest(plan.manifest_digest, plan.manifest_raw)
        result.seconds = time.monotonic() - started
    log.info("model_pulled", **result.summary())
    return result


async def pull_model(
    ref: Reference,
    store: Store,
    *,
    plain_http: bool = False,
    creds: Credentials | None = None,
    concurrency: int = 4,
    max_rate: int | None = None,
    progress: Progress | None = None,
    on_plan: Callable[[PullPlan], None] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    assemble: bool = True,
) -> PullResult:
    """Plans, reports the plan to `on_plan`, then pulls. The one-call form the CLI and edge use."""
    async with RegistryClient(
        ref, plain_http=plain_http, creds=creds, limits=limits, max_rate=max_rate
    ) as client:
        plan = await plan_pull(client, store)
        if on_plan:
            on_plan(plan)
        return await execute_pull(
            plan, client, store, concurrency=concurrency, progress=progress, assemble=assemble
        )
