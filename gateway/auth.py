"""Who is calling: an API key resolved to its tenant (and the key's role), once per request.

The faces find the key (HTTP `Authorization: Bearer <key>`; gRPC metadata `authorization:
Bearer <key>`, as the edge agent's uplink sends it, or `x-api-key`) and call
`Authenticator.authenticate`. What it learns about a key (its tenant, or that there is none)
is kept for `auth.cache_seconds`, so Redis is asked about a key at most once per period per
replica rather than on every request, and a revoked key stops working everywhere within that
period. Concurrent requests with the same uncached key share one lookup.

While Redis is away, keys this replica already knows keep working (their tenant as last seen);
a key it has never seen cannot be checked, and gets 503 with a retry hint rather than a 401
that would tell its owner the key is bad.

`authenticate` answers the caller's tenant (the HTTP face); `identify` the whole `Principal`,
the key's role and bound edge included (the gRPC face, where `Heartbeat` needs an edge key).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from gateway.state.redis_conn import StateUnavailable
from gateway.state.tenants import Principal, Tenant, TenantStore, key_digest, well_formed
from tandem.errors import Unauthenticated, UpstreamUnavailable

MISSING = "missing API key: send it as 'Authorization: Bearer <key>'"
INVALID = "invalid API key"
# Bounds on what a flood of made-up keys can make a replica remember.
MAX_KNOWN = 100_000
MAX_UNKNOWN = 10_000


def credential(authorization: str | None, api_key: str | None = None) -> str | None:
    """The key from an `Authorization: Bearer` value or an `x-api-key` value; None when neither
    holds one ("" when the Authorization header uses another scheme: a key, but not a valid one)."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    if api_key:
        return api_key.strip()
    return None


@dataclass(slots=True)
class _Known:
    principal: Principal | None
    at: float


class Authenticator:
    def __init__(
        self,
        store: TenantStore,
        *,
        required: bool,
        cache_seconds: float = 2.0,
        retry_after_s: float = 1.0,
    ) -> None:
        self.store = store
        self.required = required
        self.cache_seconds = cache_seconds
        self.retry_after_s = retry_after_s
        self._known: dict[str, _Known] = {}  # key digest -> who it speaks for
        self._unknown: dict[str, _Known] = {}  # key digest -> (None) for well-formed bad keys
        self._lookups: dict[str, asyncio.Task[Principal | None]] = {}

    async def authenticate(self, key: str | None) -> Tenant | None:
        """The caller's tenant; None when authentication is off. Raises `Unauthenticated` for a
        missing or unknown key, `UpstreamUnavailable` when an unseen key cannot be checked."""
        principal = await self.identify(key)
        return None if principal is None else principal.tenant

    async def identify(self, key: str | None) -> Principal | None:
        """Who the key speaks for (tenant, role, bound edge); None when authentication is off.
        Raises as `authenticate` does."""
        if not self.required:
            return None
        if not key:
            raise Unauthenticated(MISSING if key is None else INVALID)
        if not well_formed(key):
            raise Unauthenticated(INVALID)
        digest = key_digest(key)
        now = time.monotonic()
        entry = self._known.get(digest) or self._unknown.get(digest)
        if entry is None or now - entry.at >= self.cache_seconds:
            entry = await self._refresh(digest, entry, now)
        if entry.principal is None:
            raise Unauthenticated(INVALID)
        return entry.principal

    async def _refresh(self, digest: str, stale: _Known | None, now: float) -> _Known:
        try:
            principal = await asyncio.shield(self._lookup(digest))
        except StateUnavailable:
            if stale is not None:
                return stale  # a key known before Redis went away keeps working
            raise UpstreamUnavailable(
                "the API key cannot be checked now: shared state is unreachable",
                retry_after=self.retry_after_s,
            ) from None
        entry = _Known(principal, now)
        if principal is None:
            self._known.pop(digest, None)
            _remember(self._unknown, digest, entry, MAX_UNKNOWN)
        else:
            self._unknown.pop(digest, None)
            _remember(self._known, digest, entry, MAX_KNOWN)
        return entry

    def _lookup(self, digest: str) -> asyncio.Task[Principal | None]:
        task = self._lookups.get(digest)
        if task is None:
            task = asyncio.ensure_future(self.store.lookup(digest))
            self._lookups[digest] = task
            task.add_done_callback(lambda t: self._lookup_done(digest, t))
        return task

    def _lookup_done(self, digest: str, task: asyncio.Task[Principal | None]) -> None:
        self._lookups.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so a lookup nobody awaits any more warns of nothing

    def forget(self) -> None:
        """Drops everything learned about keys (tests, and an operator's reload)."""
        self._known.clear()
        self._unknown.clear()


def _remember(cache: dict[str, _Known], digest: str, entry: _Known, bound: int) -> None:
    if len(cache) >= bound and digest not in cache:
        cutoff = entry.at - 60.0
        for stale in [d for d, e in cache.items() if e.at < cutoff]:
            del cache[stale]
        if len(cache) >= bound:
            cache.clear()
    cache[digest] = entry
