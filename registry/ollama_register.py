"""Registering a pulled model version with the local Ollama.

Ollama's own layout is produced only here, on the edge: the reassembled weights file (and
an adapter, if any) is uploaded as a blob unless Ollama already has it (a HEAD first, so a
template-only update uploads nothing), then `create` names the model with the version's
template, system prompt, parameters and license. Switching the name that is served is a
separate step (`switch`: Ollama's copy), taken only after registration succeeded.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import structlog

from registry.artifact import ModelConfig
from registry.assembly import assemble
from registry.errors import RegistrationFailed
from registry.store import Store

log = structlog.get_logger("registry.ollama")


@dataclass(frozen=True)
class Registration:
    model: str
    weights_digest: str
    uploaded_blobs: int
    uploaded_bytes: int
    reused_blobs: int


class OllamaTarget:
    """The local Ollama, spoken to with the `ollama` client (plus httpx for the blob HEAD,
    which the client does not offer)."""

    def __init__(self, host: str, *, timeout: float = 600.0) -> None:
        self.host = host.rstrip("/")
        self._client = ollama.AsyncClient(host=self.host, timeout=timeout)
        self._http = httpx.AsyncClient(base_url=self.host, timeout=30.0)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._client.close()

    async def __aenter__(self) -> OllamaTarget:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def has_blob(self, digest: str) -> bool:
        try:
            resp = await self._http.head(f"/api/blobs/{digest}")
        except httpx.TransportError as exc:
            raise RegistrationFailed(
                f"Ollama at {self.host} is unreachable: {exc.__class__.__name__}"
            ) from None
        return resp.status_code == 200

    async def ensure_blob(self, digest: str, path: Path, size: int) -> int:
        """Uploads `path` unless Ollama has `digest`; returns the bytes uploaded."""
        if await self.has_blob(digest):
            return 0
        try:
            got = await self._client.create_blob(path)
        except ollama.ResponseError as exc:
            raise RegistrationFailed(f"Ollama refused blob {digest[:19]}: {exc.error}") from None
        except (httpx.TransportError, ConnectionError) as exc:
            raise RegistrationFailed(f"Ollama at {self.host} is unreachable: {exc}") from None
        if got != digest:
            raise RegistrationFailed(f"Ollama stored {path.name} as {got}, expected {digest}")
        return size

    async def create(self, model: str, **request: Any) -> None:
        try:
            last = ""
            async for progress in await self._client.create(model=model, stream=True, **request):
                last = progress.status or last
        except ollama.ResponseError as exc:
            raise RegistrationFailed(f"Ollama could not create {model}: {exc.error}") from None
        except (httpx.TransportError, ConnectionError) as exc:
            raise RegistrationFailed(f"Ollama at {self.host} is unreachable: {exc}") from None
        if last != "success":
            raise RegistrationFailed(f"Ollama's create of {model} ended with {last!r}, not success")

    async def switch(self, source: str, served: str) -> None:
        """Points the served name at `source` in one step (Ollama's copy)."""
        try:
            await self._client.copy(source, served)
        except ollama.ResponseError as exc:
            raise RegistrationFailed(f"Ollama could not copy {source} to {served}: {exc.error}") from None
        except (httpx.TransportError, ConnectionError) as exc:
            raise RegistrationFailed(f"Ollama at {self.host} is unreachable: {exc}") from None

    async def delete(self, model: str) -> bool:
        try:
            await self._client.delete(model)
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                return False
            raise RegistrationFailed(f"Ollama could not delete {model}: {exc.error}") from None
        except (httpx.TransportError, ConnectionError) as exc:
            raise RegistrationFailed(f"Ollama at {self.host} is unreachable: {exc}") from None
        return True

    async def digest_of(self, model: str) -> str | None:
        """The manifest digest Ollama lists for `model` (None when it has no such model)."""
        try:
            listing = await self._client.list()
        except (httpx.TransportError, ConnectionError) as exc:
            raise RegistrationFailed(f"Ollama at {self.host} is unreachable: {exc}") from None
        wanted = model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"
        for entry in listing.models:
            if entry.model == wanted:
                return entry.digest
        return None


def _settings(store: Store, config: ModelConfig) -> dict[str, Any]:
    """The create request's template/system/license/parameters, read from the store."""
    out: dict[str, Any] = {}
    ollama_cfg = config.tandem.ollama
    for role in ("template", "system", "license"):
        digest = getattr(ollama_cfg, role)
        if digest is not None:
            out[role] = store.read_blob(digest).decode("utf-8")
    if ollama_cfg.params is not None:
        params = json.loads(store.read_blob(ollama_cfg.params))
        if not isinstance(params, dict):
            raise RegistrationFailed("the version's params layer is not a JSON object")
        out["parameters"] = params
    return out


async def register(target: OllamaTarget, model: str, store: Store, manifest_digest: str) -> Registration:
    """Creates `model` in Ollama from a pulled version (weights reassembled in the store)."""
    config = store.load_config(manifest_digest)
    weights = config.tandem.weights
    weights_path = await asyncio.to_thread(assemble, store, config)  # a no-op when already there
    uploads = [(weights.digest, weights_path, weights.size)]
    adapters: dict[str, str] = {}
    if config.tandem.ollama.adapter is not None:
        adapter = config.tandem.ollama.adapter
        size = next(
            layer.size for layer in store.load_manifest(manifest_digest).layers if layer.digest == adapter
        )
        uploads.append((adapter, store.blob_path(adapter), size))
        adapters["adapter.gguf"] = adapter
    uploaded = blobs = 0
    for digest, path, size in uploads:
        n = await target.ensure_blob(digest, path, size)
        uploaded += n
        blobs += 1 if n else 0
    request: dict[str, Any] = {"files": {weights.filename: weights.digest}, **_settings(store, config)}
    if adapters:
        request["adapters"] = adapters
    await target.create(model, **request)
    result = Registration(model, weights.digest, blobs, uploaded, len(uploads) - blobs)
    log.info("ollama_registered", model=model, uploaded_bytes=uploaded, reused_blobs=result.reused_blobs)
    return result
