"""The edge's model sync: keep the served model at the desired version, never half-way.

Given a desired reference (from the edge config now; from the gateway's heartbeat reply via
`set_desired` once the fleet rollout lands), one sync:

1. pulls the version into the local store (only missing layers; verified; resumable); with
   `require_signature`, a version not signed with `public_key` is refused here, so it is
   never registered nor served;
2. registers it with the local Ollama under a version-specific name
   (`qwen3:14b` -> `qwen3:14b-tandem-<12 hex of the manifest digest>`), uploading the weights
   only if Ollama lacks them;
3. switches the served name to it with Ollama's copy: one step, taken only after 1 and 2
   succeeded, so a failed or interrupted sync never changes what is served;
4. keeps the previous version (its Ollama model and its blobs) for `rollback`, and removes
   older ones from Ollama and from the store.

State (desired, current, previous, last error) is a JSON file replaced atomically after each
change, so a restart picks up where the process stopped: an interrupted pull resumes from its
partial files. An unreachable registry or Ollama is retried with capped exponential backoff
while the current model keeps serving.

Usage (what the edge server does):

    sync = ModelSync(ModelSyncConfig.model_validate(cfg.model_sync), ollama_url=cfg.ollama.url)
    task = asyncio.create_task(sync.run())
    ...
    sync.status(); await sync.rollback(); sync.set_desired("registry:5000/models/qwen3:v8")
    await sync.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential, wait_random

from registry.errors import BadReference, ManifestRejected, RegistryError
from registry.ollama_register import OllamaTarget, Registration, register
from registry.pull import PullResult, execute_pull, first_source, parse_mirror, sources
from registry.reference import Reference, parse_reference
from registry.store import Store
from tandem.transport import ClientTLS, HttpClient, Transport

log = structlog.get_logger("edge_agent.model_sync")


class ModelSyncConfig(BaseModel):
    """The `model_sync` section of the edge config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    desired: str | None = Field(
        None, description="REGISTRY/models/NAME:TAG to serve; none: wait for the gateway"
    )
    served_name: str = Field(
        ..., min_length=1, description="the Ollama model name clients use, e.g. qwen3:14b"
    )
    store_dir: Path = Path("/var/lib/tandem/models")
    state_file: Path | None = None  # default: <store_dir>/sync-state.json
    ollama_url: str | None = None  # default: the edge's ollama.url
    plain_http: bool = False
    tls: ClientTLS | None = Field(None, description="the registry's CA / client certificate (https)")
    concurrency: int = Field(4, ge=1, le=64)
    max_rate: int | None = Field(None, gt=0, description="download cap in bytes/s")
    mirrors: list[str] = Field(
        default_factory=list,
        description="registries tried before the reference's own, in order: http(s)://HOST[:PORT] "
        "(a factory mirror: a pull-through cache of the central registry)",
    )
    download_window: str | None = Field(
        None,
        pattern=r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$",
        description="HH:MM-HH:MM, local time: layers are downloaded only then (e.g. 22:00-06:00)",
    )
    min_free_bytes: int = Field(0, ge=0)
    poll_seconds: float = Field(300.0, gt=0, description="how often a moving tag is re-checked")
    retry_initial_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float = Field(300.0, gt=0)
    keep_weights_file: bool = False  # Ollama holds a copy once registered; the chunks stay for deltas
    require_signature: bool = Field(
        False, description="serve only versions signed with the key `public_key` (model-signing)"
    )
    public_key: Path | None = Field(None, description="EC public key (PEM) signatures must verify with")

    @field_validator("mirrors")
    @classmethod
    def _mirror_urls(cls, mirrors: list[str]) -> list[str]:
        for mirror in mirrors:
            try:
                parse_mirror(mirror)
            except BadReference as exc:
                raise ValueError(exc.message) from None
        return mirrors

    @model_validator(mode="after")
    def _key_for_signatures(self) -> ModelSyncConfig:
        if self.require_signature and self.public_key is None:
            raise ValueError("require_signature needs public_key")
        return self


class Version(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    reference: str
    digest: str
    ollama_model: str
    activated_at: float = 0.0


class SyncState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    desired: str | None = None
    current: Version | None = None
    previous: Version | None = None
    created: list[str] = Field(default_factory=list)  # version-specific Ollama models we made
    last_error: str | None = None
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    failures: int = 0


Outcome = Literal["idle", "up_to_date", "switched"]


def seconds_until_window(window: str, now: datetime.datetime) -> float:
    """0 inside `window` ("HH:MM-HH:MM", may wrap past midnight), else seconds until it opens."""
    start_s, end_s = window.split("-")
    start = datetime.time.fromisoformat(start_s)
    end = datetime.time.fromisoformat(end_s)
    t = now.time()
    inside = start <= t < end if start < end else (t >= start or t < end)
    if inside or start == end:
        return 0.0
    opens = datetime.datetime.combine(now.date(), start)
    if opens <= now:
        opens += datetime.timedelta(days=1)
    return (opens - now).total_seconds()


def versioned_name(served: str, digest: str) -> str:
    base, _, tag = served.partition(":")
    return f"{base}:{tag or 'latest'}-tandem-{digest[7:19]}"


class ModelSync:
    """Background sync of one served model. One instance per served name."""

    def __init__(
        self, config: ModelSyncConfig, *, ollama_url: str | None = None, transport: Transport | None = None
    ) -> None:
        """`transport`: the edge's one outbound transport (`EdgeService.transport`), used for
        the registry and Ollama alike; without one, each sync makes its own and closes it."""
        self.config = config
        self.transport = transport
        self.store = Store(config.store_dir, min_free_bytes=config.min_free_bytes)
        self._state_path = config.state_file or config.store_dir / "sync-state.json"
        self._ollama_url = config.ollama_url or ollama_url or "http://127.0.0.1:11434"
        self.state = self._load_state()
        if self.state.desired is None and config.desired:
            self.state.desired = config.desired
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = False
        self._syncing = False
        self._next_attempt_at: float | None = None
        self.last_pull: PullResult | None = None
        self.waiting_for_window = False
        self.last_registration: Registration | None = None

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[Transport]:
        """The edge's transport, or one for this sync (closed after it) when none was given."""
        if self.transport is not None:
            yield self.transport
            return
        own = Transport(HttpClient())
        try:
            yield own
        finally:
            await own.close()

    # ------------------------------------------------------------------ state file

    def _load_state(self) -> SyncState:
        try:
            return SyncState.model_validate_json(self._state_path.read_bytes())
        except FileNotFoundError:
            return SyncState()
        except ValueError as exc:
            # A state file we cannot read must not stop the edge; start over (the store remains).
            log.error("sync_state_unreadable", path=str(self._state_path), error=str(exc))
            return SyncState()

    def _save_state(self) -> None:
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path.with_name(self._state_path.name + ".tmp")
        with tmp.open("w") as f:
            f.write(self.state.model_dump_json(indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_path)

    # ------------------------------------------------------------------ control

    def set_desired(self, reference: str) -> None:
        """A new desired version (validated now; synced by `run` in the background)."""
        parse_reference(reference)
        if reference != self.state.desired:
            self.state.desired = reference
            self._save_state()
            log.info("model_desired", reference=reference)
        self._wake.set()

    def status(self) -> dict[str, Any]:
        s = self.state
        return {
            "served_name": self.config.served_name,
            "desired": s.desired,
            "current": s.current.model_dump() if s.current else None,
            "previous": s.previous.model_dump() if s.previous else None,
            "syncing": self._syncing,
            "last_error": s.last_error,
            "failures": s.failures,
            "last_attempt_at": s.last_attempt_at,
            "last_success_at": s.last_success_at,
            "next_attempt_at": self._next_attempt_at,
            "waiting_for_download_window": self.waiting_for_window,
        }

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Syncs now, then whenever woken or every `poll_seconds`; backs off after failures.

        Failures are retried by tenacity with capped, jittered exponential waits; `set_desired`
        and `stop` cut a wait short.
        """
        while not self._stopping:
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(Exception),
                wait=wait_exponential(
                    multiplier=self.config.retry_initial_seconds, max=self.config.retry_max_seconds
                )
                + wait_random(0, self.config.retry_initial_seconds),
                sleep=self._pause,
                before_sleep=self._log_retry,
            )
            async for attempt in retrying:
                with attempt:
                    if self._stopping:
                        return
                    await self.sync_once()
            await self._pause(self.config.poll_seconds)
        self._next_attempt_at = None

    async def _pause(self, seconds: float) -> None:
        self._next_attempt_at = time.time() + seconds
        self._wake.clear()
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    def _log_retry(self, state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("model_sync_retry", error=self.state.last_error, retry_in_s=round(wait, 1))

    async def sync_once(self) -> Outcome:
        """One attempt to serve the desired version. Raises on failure (state records it)."""
        async with self._lock:
            desired = self.state.desired
            if not desired:
                return "idle"
            self._syncing = True
            self.state.last_attempt_at = time.time()
            try:
                outcome = await self._sync(parse_reference(desired))
            except Exception as exc:
                self.state.failures += 1
                self.state.last_error = exc.message if isinstance(exc, RegistryError) else repr(exc)
                self._save_state()
                log.error("model_sync_failed", desired=desired, error=self.state.last_error)
                raise
            finally:
                self._syncing = False
            self.state.failures = 0
            self.state.last_error = None
            self.state.last_success_at = time.time()
            self._save_state()
            return outcome

    async def _sync(self, ref: Reference) -> Outcome:
        served = self.config.served_name
        async with (
            self._transport() as transport,
            first_source(
                sources(ref, self.config.mirrors, plain_http=self.config.plain_http),
                self.store,
                transport=transport,
                tls=self.config.tls,
                max_rate=self.config.max_rate,
            ) as (client, plan),
            OllamaTarget(self._ollama_url, transport=transport) as ollama,
        ):
            current = self.state.current
            if (
                current
                and current.digest == plan.manifest_digest
                and await ollama.digest_of(served) == await ollama.digest_of(current.ollama_model)
            ):
                return "up_to_date"
            log.info("model_sync_plan", lines=plan.describe())
            if plan.to_download_bytes:
                await self._wait_for_window()
            self.last_pull = await execute_pull(
                plan,
                client,
                self.store,
                concurrency=self.config.concurrency,
                public_key=self.config.public_key if self.config.require_signature else None,
                # Ollama gets the weights streamed from the chunks (`register`): the file is
                # written out only when a signature must be checked over it, or it is kept.
                assemble=self.config.require_signature or self.config.keep_weights_file,
            )
            name = versioned_name(served, plan.manifest_digest)
            if name not in self.state.created:
                self.state.created.append(name)
                self._save_state()  # so a crash after create still lets GC find it
            self.last_registration = await register(ollama, name, self.store, plan.manifest_digest)
            await ollama.switch(name, served)  # the one step that changes what is served
            new = Version(
                reference=str(ref), digest=plan.manifest_digest, ollama_model=name, activated_at=time.time()
            )
            if current and current.digest != new.digest:
                self.state.previous = current
            self.state.current = new
            self._save_state()
            log.info("model_switched", served=served, reference=str(ref), digest=new.digest)
            await self._collect(ollama)
        return "switched"

    async def _wait_for_window(self) -> None:
        """Holds the download until the configured window opens (the current model serves)."""
        while self.config.download_window and not self._stopping:
            wait = seconds_until_window(self.config.download_window, datetime.datetime.now())
            if wait <= 0:
                return
            log.info("model_sync_waiting_for_window", window=self.config.download_window, seconds=wait)
            self.waiting_for_window = True
            try:
                await self._pause(wait)
            finally:
                self.waiting_for_window = False
        if self._stopping:
            raise RegistryError("stopped while waiting for the download window")

    async def rollback(self) -> Version:
        """Serves the previous version again, at once (it is still registered with Ollama).

        The desired reference is pinned to that version's digest so the loop does not roll
        forward again; `set_desired` moves on when the rollout says so.
        """
        async with self._lock:
            previous, current = self.state.previous, self.state.current
            if previous is None:
                raise RegistryError("no previous version to roll back to")
            async with (
                self._transport() as transport,
                OllamaTarget(self._ollama_url, transport=transport) as ollama,
            ):
                await ollama.switch(previous.ollama_model, self.config.served_name)
            pinned = parse_reference(previous.reference)
            self.state.desired = str(pinned.with_digest(previous.digest))
            self.state.current = previous.model_copy(update={"activated_at": time.time()})
            self.state.previous = current
            self._save_state()
            log.warning("model_rolled_back", served=self.config.served_name, digest=previous.digest)
            return self.state.current

    async def _collect(self, ollama: OllamaTarget) -> None:
        """Drops versions older than current and previous, from Ollama and from the store."""
        keep = [v for v in (self.state.current, self.state.previous) if v is not None]
        keep_models = {v.ollama_model for v in keep}
        for name in list(self.state.created):
            if name in keep_models:
                continue
            try:
                await ollama.delete(name)
            except RegistryError as exc:
                log.warning("ollama_gc_failed", model=name, error=exc.message)
                continue
            self.state.created.remove(name)
        self._save_state()
        keep_files: set[str] | None = None if self.config.keep_weights_file else set()
        async with self.store.alock():
            await asyncio.to_thread(self.store.gc, {v.digest for v in keep}, keep_files=keep_files)


__all__ = ["BadReference", "ManifestRejected", "ModelSync", "ModelSyncConfig", "SyncState", "Version"]
