"""Registering a pulled model version with the local Ollama.

Ollama's own layout is produced only here, on the edge: the weights file (and an adapter, if
any) is uploaded as a blob unless Ollama already has it (a HEAD first, so a template-only
update uploads nothing and rebuilds nothing), then `create` names the model with the
version's template, system prompt, parameters and license.

The weights file is never written out on the edge for this: its chunks are streamed from the
store, in order, straight into Ollama's blob upload, hashed on the way. Ollama checks the
digest of what it received (and refuses a mismatch); our own hash says which chunk was
damaged, so it is discarded and the next sync fetches it again. Peak disk during an update is
the chunks plus Ollama's copy: 2x the model, not 3x or 4x with a reassembled file between.

Switching the name that is served is a separate step (`switch`: Ollama's copy), taken only
after registration succeeded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import structlog

from registry.artifact import ModelConfig
from registry.errors import DigestMismatch, RegistrationFailed
from registry.store import Store
from tandem.transport import HttpClient, Response, Transport, Unreachable

log = structlog.get_logger("registry.ollama")

_MAX_ANSWER = 16 << 20
_STREAM_PIECE = 1 << 20


@dataclass(frozen=True)
class Registration:
    model: str
    weights_digest: str
    uploaded_blobs: int
    uploaded_bytes: int
    reused_blobs: int


class OllamaTarget:
    """The local Ollama's model API (blobs, create, copy, delete, tags), spoken over the
    process's one outbound `Transport`; the `ollama` package's response types parse the
    answers. (The `ollama` client itself is not used: it has its own httpx connection pool,
    and its `create_blob` hashes the whole weights file again, which the store has verified.)
    """

    def __init__(self, host: str, *, transport: Transport | None = None, timeout: float = 600.0) -> None:
        self.host = host.rstrip("/")
        self._own = transport is None
        self._transport = transport or Transport(HttpClient())
        self._timeout = timeout

    async def aclose(self) -> None:
        if self._own:
            await self._transport.close()

    async def __aenter__(self) -> OllamaTarget:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | aiohttp.payload.Payload | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        read_s: float = 30.0,
    ) -> Response:
        try:
            return await self._transport.request(
                method, f"{self.host}{path}", body, headers, connect_s=10.0, read_s=read_s
            )
        except (Unreachable, TimeoutError) as exc:
            raise RegistrationFailed(f"Ollama at {self.host} is unreachable: {exc}") from None

    async def _json(self, method: str, path: str, payload: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Status and decoded JSON answer (None when not JSON) of one small exchange."""
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else None
        resp = await self._request(method, path, body, headers)
        raw = await _read(resp, self.host)
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, None

    async def has_blob(self, digest: str) -> bool:
        resp = await self._request("HEAD", f"/api/blobs/{digest}")
        resp.release()
        return resp.status == 200

    async def stream_blob(self, digest: str, body: AsyncIterator[bytes]) -> None:
        """Uploads a blob whose bytes come from `body` (chunked transfer); Ollama verifies
        them against `digest`."""
        payload = aiohttp.payload.AsyncIterablePayload(body, content_type="application/octet-stream")
        resp = await self._request("POST", f"/api/blobs/{digest}", payload, read_s=self._timeout)
        raw = await _read(resp, self.host)
        if resp.status not in (200, 201):
            raise RegistrationFailed(f"Ollama refused blob {digest[:19]}: {_error(raw, resp.status)}")

    async def ensure_blob(self, digest: str, path: Path, size: int) -> int:
        """Uploads `path` unless Ollama has `digest`; returns the bytes uploaded.

        The file is streamed from disk (memory stays flat); Ollama checks it against `digest`."""
        if await self.has_blob(digest):
            return 0
        with path.open("rb") as f:
            body = aiohttp.payload.BufferedReaderPayload(f, content_type="application/octet-stream")
            resp = await self._request("POST", f"/api/blobs/{digest}", body, read_s=self._timeout)
            raw = await _read(resp, self.host)
        if resp.status not in (200, 201):
            raise RegistrationFailed(f"Ollama refused blob {digest[:19]}: {_error(raw, resp.status)}")
        return size

    async def create(self, model: str, **request: Any) -> None:
        body = json.dumps({"model": model, "stream": True, **request}).encode()
        resp = await self._request(
            "POST", "/api/create", body, {"Content-Type": "application/json"}, read_s=self._timeout
        )
        if resp.status != 200:
            raw = await _read(resp, self.host)
            raise RegistrationFailed(f"Ollama could not create {model}: {_error(raw, resp.status)}")
        last = ""
        pending = b""
        try:
            while piece := await resp.readany():
                pending += piece
                *lines, pending = pending.split(b"\n")
                for line in filter(None, (x.strip() for x in lines)):
                    last = self._progress(model, line) or last
                if len(pending) > _MAX_ANSWER:
                    raise RegistrationFailed(f"Ollama's create of {model} sent an oversized line")
            if pending.strip():
                last = self._progress(model, pending.strip()) or last
        except (Unreachable, TimeoutError) as exc:
            raise RegistrationFailed(f"Ollama at {self.host} is unreachable: {exc}") from None
        finally:
            resp.release()
        if last != "success":
            raise RegistrationFailed(f"Ollama's create of {model} ended with {last!r}, not success")

    @staticmethod
    def _progress(model: str, line: bytes) -> str | None:
        try:
            data = json.loads(line)
        except ValueError:
            raise RegistrationFailed(f"Ollama's create of {model} sent a line that is not JSON") from None
        if isinstance(data, dict) and data.get("error"):
            raise RegistrationFailed(f"Ollama could not create {model}: {data['error']}")
        return ollama.ProgressResponse.model_validate(data).status

    async def switch(self, source: str, served: str) -> None:
        """Points the served name at `source` in one step (Ollama's copy)."""
        status, data = await self._json("POST", "/api/copy", {"source": source, "destination": served})
        if status != 200:
            raise RegistrationFailed(f"Ollama could not copy {source} to {served}: {_error_of(data, status)}")

    async def delete(self, model: str) -> bool:
        status, data = await self._json("DELETE", "/api/delete", {"model": model})
        if status == 404:
            return False
        if status != 200:
            raise RegistrationFailed(f"Ollama could not delete {model}: {_error_of(data, status)}")
        return True

    async def digest_of(self, model: str) -> str | None:
        """The manifest digest Ollama lists for `model` (None when it has no such model)."""
        status, data = await self._json("GET", "/api/tags")
        if status != 200:
            raise RegistrationFailed(f"Ollama at {self.host} answered HTTP {status} for its model list")
        listing = ollama.ListResponse.model_validate(data)
        wanted = model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"
        for entry in listing.models:
            if entry.model == wanted:
                return entry.digest
        return None


async def _read(resp: Response, host: str) -> bytes:
    """A small answer's body (at most `_MAX_ANSWER` bytes); ends the exchange."""
    body = bytearray()
    try:
        while piece := await resp.readany():
            body += piece
            if len(body) > _MAX_ANSWER:
                raise RegistrationFailed(f"Ollama at {host} sent an answer over {_MAX_ANSWER} bytes")
    except (Unreachable, TimeoutError) as exc:
        raise RegistrationFailed(f"Ollama at {host} is unreachable: {exc}") from None
    finally:
        resp.release()
    return bytes(body)


def _error(raw: bytes, status: int) -> str:
    try:
        return _error_of(json.loads(raw), status)
    except ValueError:
        return f"HTTP {status}"


def _error_of(data: Any, status: int) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return f"HTTP {status}"


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


class _ChunkStream:
    """The weights file's bytes, read from its chunks in order (1 MiB at a time, off the
    loop) and hashed as they go, so what Ollama was sent can be checked afterwards."""

    def __init__(self, store: Store, config: ModelConfig) -> None:
        self._store = store
        self._chunks = config.tandem.chunks
        self.hash = hashlib.sha256()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            with self._store.blob_path(chunk.digest).open("rb", buffering=0) as f:
                left = chunk.size
                while left:
                    piece = await asyncio.to_thread(f.read, min(_STREAM_PIECE, left))
                    if not piece:
                        break
                    self.hash.update(piece)
                    left -= len(piece)
                    yield piece


async def upload_weights(target: OllamaTarget, store: Store, config: ModelConfig) -> int:
    """Gives Ollama the weights file, streamed from its chunks, unless Ollama has it (then
    nothing is read or rebuilt); returns the bytes uploaded.

    When the bytes do not make the file the config names (Ollama refuses them, or our own
    hash disagrees), every chunk is hashed again: damaged ones are discarded and named (the
    next sync fetches them), else the config's whole-file digest is named as wrong."""
    weights = config.tandem.weights
    if await target.has_blob(weights.digest):
        return 0
    stream = _ChunkStream(store, config)
    refused: RegistrationFailed | None = None
    try:
        await target.stream_blob(weights.digest, stream.__aiter__())
    except RegistrationFailed as exc:
        refused = exc
    if refused is None and "sha256:" + stream.hash.hexdigest() == weights.digest:
        return weights.size
    damaged = [
        c.digest
        for c in config.tandem.chunks
        if not await asyncio.to_thread(store.check_blob, c.digest, c.size, full=True)
    ]
    if damaged:
        raise DigestMismatch(
            f"{len(damaged)} chunk(s) of {weights.filename} were damaged in the store "
            f"({', '.join(d[:19] for d in damaged)}): discarded, the next sync fetches them again"
        )
    if refused is not None and "digest mismatch" not in refused.message:
        raise refused
    raise DigestMismatch(
        f"the chunks of {weights.filename} all match their digests but do not make a file with "
        f"the config's digest {weights.digest}: the version's config is wrong (re-push it)"
    )


async def register(target: OllamaTarget, model: str, store: Store, manifest_digest: str) -> Registration:
    """Creates `model` in Ollama from a pulled version (its chunks in the store)."""
    config = store.load_config(manifest_digest)
    weights = config.tandem.weights
    weights_uploaded = await upload_weights(target, store, config)
    uploads: list[tuple[str, Path, int]] = []
    adapters: dict[str, str] = {}
    if config.tandem.ollama.adapter is not None:
        adapter = config.tandem.ollama.adapter
        size = next(
            layer.size for layer in store.load_manifest(manifest_digest).layers if layer.digest == adapter
        )
        uploads.append((adapter, store.blob_path(adapter), size))
        adapters["adapter.gguf"] = adapter
    uploaded, blobs = weights_uploaded, 1 if weights_uploaded else 0
    for digest, path, size in uploads:
        n = await target.ensure_blob(digest, path, size)
        uploaded += n
        blobs += 1 if n else 0
    request: dict[str, Any] = {"files": {weights.filename: weights.digest}, **_settings(store, config)}
    if adapters:
        request["adapters"] = adapters
    await target.create(model, **request)
    result = Registration(model, weights.digest, blobs, uploaded, len(uploads) + 1 - blobs)
    log.info("ollama_registered", model=model, uploaded_bytes=uploaded, reused_blobs=result.reused_blobs)
    return result
