"""A factory mirror served from a Tandem store: the WAN carries each blob once per factory.

`tandem model mirror --store DIR --upstream https://central:5000` serves the read side of
the OCI distribution API to the factory's edges (`GET`/`HEAD` of `/v2/`, manifests and
blobs; nothing can be pushed to it) from a local `Store`, filling the store from the upstream
registry on demand:

- a manifest asked by tag is resolved with the upstream (so a moved tag is seen at once); by
  digest, it is served from the store when there;
- a model version not yet in the store is pulled into it whole (`registry.pull`, verified
  layer by layer, resumable) before its manifest is answered. One fill per digest at a time:
  edges asking together wait for the same fill, so the upstream serves each blob once however
  many edges start at the same moment (a stock pull-through cache fetches a blob again for
  every request that arrives while it is still fetching it: measured in the docs);
- a signature manifest (`sha256-<hex>.sig`) is mirrored with its small blobs, so edges that
  require signatures are served too;
- blobs are served from the store's verified files (`Range` honoured, so an edge resumes).

When the upstream cannot be reached, a tag is answered with the digest it last had here, and
pinned digests the store holds are served as usual: the factory keeps installing what it has.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from registry.artifact import OCI_MANIFEST, check_digest, parse_manifest
from registry.errors import (
    BadReference,
    ManifestRejected,
    NotFound,
    RegistryError,
    RegistryUnavailable,
)
from registry.pull import RegistryClient, execute_pull, parse_mirror, plan_pull
from registry.reference import Reference, parse_reference
from registry.signature import MAX_BUNDLE_BYTES
from registry.store import Store
from tandem.transport import ClientTLS, Transport

log = structlog.get_logger("registry.mirror")


def _error(status: int, code: str, message: str) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]})
    return web.Response(status=status, text=body, content_type="application/json")


class StoreMirror:
    """The mirror's request handlers over one store and one upstream registry."""

    def __init__(
        self,
        store: Store,
        upstream: str,
        *,
        transport: Transport,
        tls: ClientTLS | None = None,
        max_rate: int | None = None,
    ) -> None:
        self.store = store
        self._host, self._plain_http = parse_mirror(upstream)
        self._transport = transport
        self._tls = tls
        self._max_rate = max_rate
        self._fills: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tags: dict[str, str] = {}  # "repo:tag" -> the digest it last had upstream

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/", self._root)
        app.router.add_get("/v2/{name:.+}/manifests/{target}", self._manifest)
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self._blob)
        app.router.add_route("*", "/{tail:.*}", self._other)  # GET routes above also answer HEAD
        return app

    async def _other(self, request: web.Request) -> web.Response:
        if request.method in ("GET", "HEAD"):
            return _error(404, "NOT_FOUND", f"{request.path} is not part of the registry API")
        return _error(405, "UNSUPPORTED", "this mirror is read-only: push to the upstream registry")

    def _client(self, ref: Reference) -> RegistryClient:
        return RegistryClient(
            ref,
            transport=self._transport,
            plain_http=self._plain_http,
            tls=self._tls,
            max_rate=self._max_rate,
        )

    async def _root(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _manifest(self, request: web.Request) -> web.Response:
        name, target = request.match_info["name"], request.match_info["target"]
        sep = "@" if target.startswith("sha256:") else ":"
        try:
            ref = parse_reference(f"{self._host}/{name}{sep}{target}")
        except BadReference as exc:
            return _error(400, "NAME_INVALID", exc.message)
        try:
            digest = await self._resolve(ref)
        except NotFound as exc:
            return _error(404, "MANIFEST_UNKNOWN", exc.message)
        except RegistryUnavailable as exc:
            return _error(503, "UNAVAILABLE", exc.message)
        except RegistryError as exc:  # hostile or unverifiable upstream content: not mirrored
            return _error(502, "UPSTREAM_REJECTED", exc.message)
        raw = await asyncio.to_thread(self.store.manifest_path(digest).read_bytes)
        media_type = json.loads(raw).get("mediaType") or OCI_MANIFEST
        return web.Response(
            body=raw,
            headers={"Content-Type": str(media_type), "Docker-Content-Digest": digest},
        )

    async def _resolve(self, ref: Reference) -> str:
        """The digest `ref` names, with its manifest (and what it needs) in the store."""
        key = f"{ref.repository}:{ref.tag}"
        if ref.digest and self.store.manifest_path(ref.digest).is_file():
            return ref.digest
        async with self._client(ref) as client:
            try:
                raw, digest = await client.manifest(ref.target)
            except RegistryUnavailable:
                known = self._tags.get(key) if ref.tag else None
                if known and self.store.manifest_path(known).is_file():
                    log.warning("mirror_upstream_down", reference=str(ref), serving=known)
                    return known
                raise
        async with self._fills[digest]:  # edges asking together wait for one fill
            if not self.store.manifest_path(digest).is_file():
                await self._fill(ref.with_digest(digest), raw)
        if ref.tag:
            self._tags[key] = digest
        return digest

    async def _fill(self, pinned: Reference, raw: bytes) -> None:
        digest = pinned.target
        try:
            parse_manifest(raw)
        except ManifestRejected:
            await self._fill_small(pinned, raw)  # a signature, or nothing we mirror
            return
        async with self._client(pinned) as client:
            plan = await plan_pull(client, self.store)
            result = await execute_pull(plan, client, self.store, assemble=False)
        log.info("mirror_filled", reference=str(pinned), bytes=result.bytes_downloaded, digest=digest)

    async def _fill_small(self, pinned: Reference, raw: bytes) -> None:
        """A manifest that is not a model (a signature): mirrored with its blobs if they are
        all small (at most `MAX_BUNDLE_BYTES` each, ten at most), refused otherwise."""
        try:
            data = json.loads(raw)
            blobs = [data["config"], *data.get("layers", [])]
            wanted = [(check_digest(b["digest"], "blob"), int(b["size"])) for b in blobs]
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestRejected(f"{pinned}: not a manifest this mirror serves ({exc})") from None
        if len(wanted) > 10 or any(size > MAX_BUNDLE_BYTES for _, size in wanted):
            raise ManifestRejected(f"{pinned}: neither a model nor a signature; not mirrored")
        async with self._client(pinned) as client:
            for blob_digest, size in wanted:
                if not self.store.has(blob_digest):
                    data_bytes = await client.small_blob(blob_digest, size, MAX_BUNDLE_BYTES, "blob")
                    self.store.put_bytes(blob_digest, data_bytes)
        self.store.put_manifest(pinned.target, raw)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        try:
            path: Path = self.store.blob_path(digest)
        except ManifestRejected as exc:
            return _error(400, "DIGEST_INVALID", exc.message)
        if not await asyncio.to_thread(path.is_file):
            why = f"blob {digest} is not in this mirror (ask for its manifest first)"
            return _error(404, "BLOB_UNKNOWN", why)
        return web.FileResponse(
            path, headers={"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        )


async def serve(mirror: StoreMirror, host: str, port: int, *, ready: Any = None) -> None:
    """Serves `mirror` until cancelled."""
    from tandem.http_io import ConnectionTimeouts, HttpSite, app_runner

    timeouts = ConnectionTimeouts(idle_s=75.0, headers_s=10.0)
    runner = app_runner(mirror.app(), timeouts, shutdown_timeout=5.0)
    await runner.setup()
    site = HttpSite(runner, host, port, timeouts)
    await site.start()
    log.info("mirror_serving", host=host, port=site.bound_port)
    if ready is not None:
        ready(site.bound_port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
