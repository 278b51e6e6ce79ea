"""Pulling a model version into the local store: plan, then move only what is missing.

1. Fetch the manifest (size-capped) and the config, verify their digests, and refuse
   anything hostile (`registry.artifact`).
2. Plan by digest against the store: each layer is present (reused), partially downloaded
   (resumed from where it stopped) or missing. The plan is reported before a byte moves.
3. Download the missing blobs in parallel (`registry.download`, on the event loop): a
   partial file grows under `partial/`, an interrupted transfer resumes with an HTTP Range
   request, the sha256 is computed while streaming, and only a verified blob is renamed into
   `blobs/`. A blob whose bytes do not match its digest is discarded and fetched once more
   from scratch; a second mismatch fails with a message that names the blob.
4. Meanwhile reassemble the weights file (`registry.assembly`): each chunk is appended as soon
   as it and the chunks before it are in the store, hashing what is written; the whole file's
   digest and size are verified, it is fsynced and renamed into place.

With a public key, the version must be signed (`registry.signature`): an unsigned one is
refused before a byte moves, one whose files do not match the signature before its weights
file is put in place.

Every request (manifests, configs, the auth handshake, layers) goes over one
`tandem.transport.Transport`: the edge passes its own, so proxies, TLS and connection reuse
are the same as for its engine calls; the CLI builds one per command. oras-py has no
parallel, resumable or verified download, so this part is our own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import structlog

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
from registry.assembly import Assembler
from registry.auth import Credentials, RegistryAuth, resolve_credentials
from registry.download import BlobFetcher
from registry.errors import (
    AuthFailed,
    BadReference,
    DigestMismatch,
    ManifestRejected,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    SignatureRejected,
    status_error,
    tls_hint,
)
from registry.http import MAX_ERROR_BODY, RegistryHttp, read_capped
from registry.progress import NullProgress, Progress
from registry.reference import Reference
from registry.signature import (
    MAX_BUNDLE_BYTES,
    MAX_SIGNATURE_MANIFEST_BYTES,
    model_files,
    parse_signature_manifest,
    signature_tag,
    verify_files,
)
from registry.store import Store
from tandem.transport import ClientTLS, HttpClient, Transport, Unreachable

log = structlog.get_logger("registry.pull")


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
    signature: str | None = None  # the tag of the signature verified, when one was required
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
            "signature": self.signature,
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


class RegistryClient:
    """Async reads from one repository: manifests, small blobs, and resumable downloads."""

    def __init__(
        self,
        ref: Reference,
        *,
        transport: Transport | None = None,
        plain_http: bool = False,
        tls: ClientTLS | None = None,
        creds: Credentials | None = None,
        limits: Limits = DEFAULT_LIMITS,
        timeout: float = 30.0,
        max_rate: int | None = None,
        retries: int = 5,
    ) -> None:
        """`transport`: the process's outbound transport (one is made, and closed on exit,
        when none is given). `tls`: the registry's CA / client certificate / verify
        (https only; none: the system's CAs)."""
        self.ref = ref
        self.limits = limits
        self._own_transport = transport is None
        self.transport = transport or Transport(HttpClient())
        self._base = f"{'http' if plain_http else 'https'}://{ref.registry}/v2/{ref.repository}"
        self._auth = RegistryAuth(creds or resolve_credentials(ref.registry))
        self.http = RegistryHttp(
            self.transport, registry=ref.registry, auth=self._auth, tls=tls, timeout=timeout
        )
        self._blobs = BlobFetcher(
            self.http,
            base=self._base,
            repository=ref.repository,
            max_rate=max_rate,
            retries=retries,
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._blobs.aclose()
        if self._own_transport:
            await self.transport.close()

    async def _read_capped(
        self, url: str, cap: int, what: str, headers: dict[str, str] | None = None
    ) -> tuple[Any, bytes]:
        try:
            resp = await self.http.get(url, headers)
            err = status_error(
                resp.status, what, self.ref.registry, self.ref.repository, credentials_from=self._auth.source
            )
            if err is not None:
                await resp.drain(MAX_ERROR_BODY)
                raise err
            return resp.headers, await read_capped(resp, cap, what)
        except (Unreachable, TimeoutError) as exc:
            raise RegistryUnavailable(tls_hint(f"cannot reach {self.ref.registry}: {exc}")) from None

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

    async def signature(self, manifest_digest: str) -> bytes | None:
        """The signature bundle kept for `manifest_digest` (verified by its digest), or None."""
        tag = signature_tag(manifest_digest)
        try:
            _, raw = await self._read_capped(
                f"{self._base}/manifests/{tag}",
                MAX_SIGNATURE_MANIFEST_BYTES,
                f"signature {tag}",
                headers={"Accept": OCI_MANIFEST},
            )
        except NotFound:
            return None
        digest, size = parse_signature_manifest(raw, manifest_digest)
        return await self.small_blob(digest, size, MAX_BUNDLE_BYTES, "signature bundle")

    async def download(
        self, blob: BlobPlan, store: Store, progress: Progress, on_refetch: Callable[[], None]
    ) -> int:
        """Fetches `blob` into the store (resuming a partial file); returns bytes moved."""
        return await self._blobs.fetch(blob.digest, blob.size, blob.label, store, progress, on_refetch)


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


async def plan_pull(client: RegistryClient, store: Store, *, full_check: bool = False) -> PullPlan:
    """What must move. A layer the store has is reused only if it still checks out: size and
    stamp (`Store.check`; with `full_check`, its sha256 again); a damaged one is discarded
    and planned for download."""
    ref = client.ref
    raw, digest, manifest, config, config_raw = await fetch_artifact(client, ref.target)
    store.put_bytes(manifest.config.digest, config_raw)
    labels = {c.digest: chunk_label(c.kind, c.first, c.last) for c in config.tandem.chunks}
    blobs: dict[str, BlobPlan] = {}
    for layer in manifest.layers:
        if layer.digest in blobs:
            continue
        label = labels.get(layer.digest, layer.role) if layer.role == "weights" else layer.role
        if await asyncio.to_thread(store.check_blob, layer.digest, layer.size, full=full_check):
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
    public_key: Path | None = None,
    full_check: bool = False,
) -> PullResult:
    """Moves what the plan says is missing, verifies it, and reassembles the weights file.

    With `public_key` the version must be signed (`registry.signature`) with the matching
    private key: an unsigned version is refused before a byte moves, and one whose files do
    not match its signature is refused before its weights file is put in place.
    """
    if public_key is not None and not assemble:
        raise ValueError("verifying a signature needs the reassembled weights file (assemble=True)")
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
    bundle = await _required_signature(client, plan) if public_key is not None else None
    sem = asyncio.Semaphore(max(1, concurrency))
    assembler = Assembler(store, plan.config, full_check=full_check) if assemble else None

    def refetched() -> None:
        result.refetched += 1

    async def one(blob: BlobPlan) -> None:
        async with sem:
            if store.has(blob.digest):  # another puller finished it meanwhile
                result.layers_reused += 1
                result.bytes_reused += blob.size
                return
            have = store.partial_size(blob.digest)
            progress.start(blob.digest, f"{blob.label[:40]} {blob.digest[7:19]}", blob.size - have)
            moved = await client.download(blob, store, progress, refetched)
            progress.finish(blob.digest)
            if assembler:
                assembler.chunk_ready()
            result.layers_downloaded += 1
            result.bytes_downloaded += moved
            result.bytes_resumed += blob.size - moved if moved < blob.size else 0
            result.downloaded.append(blob.digest)

    async with store.alock():
        store.clean_temporaries()  # a killed pull's leftovers: no live writer holds the lock
        present = [b for b in plan.blobs if b.state == "present" and store.has(b.digest)]
        result.layers_reused += len(present)
        result.bytes_reused += sum(b.size for b in present)
        # The weights file is assembled beside the downloads, chunk by chunk as they land.
        assembling = _in_own_thread(assembler.run) if assembler else None
        try:
            async with asyncio.TaskGroup() as group:
                for blob in plan.blobs:
                    if blob not in present:
                        group.create_task(one(blob))
            result.transfer_seconds = time.monotonic() - started
            if assembler and assembling:
                await assembling
                if public_key is not None and bundle is not None:
                    files = model_files(plan.config, assembler.built, store.blob_path)
                    await asyncio.to_thread(verify_files, files, bundle, public_key, str(plan.ref))
                    result.signature = signature_tag(plan.manifest_digest)
                result.weights_path = await asyncio.to_thread(assembler.commit)
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        finally:
            if assembler and assembling and result.weights_path is None:
                assembler.cancel()  # the pull failed: the assembler stops, its file is dropped
                with contextlib.suppress(Exception):
                    await asyncio.shield(assembling)
                assembler.discard()
        store.put_manifest(plan.manifest_digest, plan.manifest_raw)
        store.record_pull(plan.ref.repository_ref, plan.manifest_digest)
        result.seconds = time.monotonic() - started
    log.info("model_pulled", **result.summary())
    return result


async def _required_signature(client: RegistryClient, plan: PullPlan) -> bytes:
    bundle = await client.signature(plan.manifest_digest)
    if bundle is None:
        raise SignatureRejected(
            f"{plan.ref} ({plan.manifest_digest}) is not signed (no {signature_tag(plan.manifest_digest)} "
            "in the registry) and this pull requires a signature"
        )
    return bundle


def _in_own_thread(fn: Callable[[], None]) -> asyncio.Future[None]:
    """Runs `fn` in a thread of its own (it may wait a long time; it must not hold a worker of
    a shared pool), as a future of the running loop."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assemble")
    future = asyncio.get_running_loop().run_in_executor(pool, fn)
    pool.shutdown(wait=False)  # the thread ends with `fn`
    return future


@dataclass(frozen=True)
class Source:
    """One registry to pull a reference from: a factory mirror, or the reference's own."""

    ref: Reference
    plain_http: bool

    def __str__(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.ref.registry}"


def sources(ref: Reference, mirrors: list[str], *, plain_http: bool) -> list[Source]:
    """The registries to try, in order: each mirror (`http://host:port` or `https://host`;
    it serves the same repositories, e.g. a pull-through cache of the central registry), then
    the reference's own registry."""
    out: list[Source] = []
    for mirror in mirrors:
        host, mirror_plain = parse_mirror(mirror)
        out.append(Source(replace(ref, registry=host), plain_http=mirror_plain))
    out.append(Source(ref, plain_http))
    return out


def parse_mirror(text: str) -> tuple[str, bool]:
    """`http://HOST[:PORT]` or `https://HOST[:PORT]` -> (host, plain HTTP?)."""
    scheme, sep, host = text.partition("://")
    host = host.rstrip("/")
    if not sep or scheme not in ("http", "https") or not host or "/" in host:
        raise BadReference(f"mirror {text!r} must be http://HOST[:PORT] or https://HOST[:PORT]")
    return host, scheme == "http"


# What makes a source worth skipping for the next one: it is down, lacks the version, or
# will not let us in. A version that is hostile or does not verify is not retried elsewhere.
_NEXT_SOURCE = (RegistryUnavailable, NotFound, AuthFailed)


@contextlib.asynccontextmanager
async def first_source(
    candidates: list[Source], store: Store, *, full_check: bool = False, **client_kw: Any
) -> AsyncIterator[tuple[RegistryClient, PullPlan]]:
    """A client and a plan from the first source that answers; the error of the last one
    (with what the others said) when none does."""
    failures: list[str] = []
    creds = client_kw.pop("creds", None)
    for i, source in enumerate(candidates):
        # Credentials given for the reference's registry go to it alone; a mirror gets its own
        # (from the environment or a docker-style config, by host).
        own = source.ref.registry == candidates[-1].ref.registry
        client = RegistryClient(
            source.ref, plain_http=source.plain_http, creds=creds if own else None, **client_kw
        )
        try:
            plan = await plan_pull(client, store, full_check=full_check)
        except _NEXT_SOURCE as exc:
            await client.__aexit__(None, None, None)
            if i == len(candidates) - 1:
                if failures:
                    exc.message += " (also tried: " + "; ".join(failures) + ")"
                raise
            failures.append(f"{source}: {exc.message}")
            log.warning("pull_source_skipped", source=str(source), error=exc.message)
            continue
        except BaseException:
            await client.__aexit__(None, None, None)
            raise
        try:
            yield client, plan
        finally:
            await client.__aexit__(None, None, None)
        return
    raise RegistryError("no registry to pull from")  # `sources` always gives at least one


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
    public_key: Path | None = None,
    transport: Transport | None = None,
    tls: ClientTLS | None = None,
    full_check: bool = False,
    mirrors: list[str] | None = None,
) -> PullResult:
    """Plans, reports the plan to `on_plan`, then pulls. The one-call form the CLI and edge use.

    `public_key`: require a signature that verifies with it (see `execute_pull`).
    `transport`: the process's outbound transport (none: one for this pull).
    `mirrors`: registries tried before the reference's own (`sources`)."""
    async with first_source(
        sources(ref, mirrors or [], plain_http=plain_http),
        store,
        full_check=full_check,
        transport=transport,
        tls=tls,
        creds=creds,
        limits=limits,
        max_rate=max_rate,
    ) as (client, plan):
        if on_plan:
            on_plan(plan)
        return await execute_pull(
            plan,
            client,
            store,
            concurrency=concurrency,
            progress=progress,
            assemble=assemble,
            public_key=public_key,
            full_check=full_check,
        )
