"""The cloud pool: which endpoint takes a request, and what happened when it did.

`Balancer` is the seam between the gateway and litellm: the gateway sends requests itself
(`gateway/relay.py`, one call per request over `tandem/transport.py`) and asks the balancer only to choose an
endpoint and to learn from outcomes. The one implementation, `litellm_balancer`, is the only
module in Tandem that imports litellm.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from tandem.transport import ClientTLS
from tandem.wire.dialects import EngineKind

if TYPE_CHECKING:
    from gateway.pool.load import LoadScraper


@dataclass(frozen=True, slots=True)
class Upstream:
    """One endpoint of a pool, as the relay needs it."""

    id: str  # stable id (the litellm deployment id)
    pool: str  # model group
    base_url: str  # ".../v1"
    model: str  # served model name
    api_key: str | None
    max_concurrency: int
    context_length: int
    tls: ClientTLS | None = None  # for an https:// endpoint: whom to trust, our client certificate
    kind: EngineKind = "vllm"  # its engine's dialect (`tandem/wire/dialects.py`)

    @property
    def label(self) -> str:
        """What callers and `/metrics` see: the pool and a digest of the URL, stable across
        replicas and restarts, that names no host or port (those stay in the gateway's logs)."""
        return _label(self.pool, self.base_url)


def deployment_id(pool: str, url: str) -> str:
    """`pool@host_port/path`: an endpoint's id, readable in logs, the same in every replica
    (derived from configuration or discovery alone). No ':' in it: litellm's usage-based
    strategy splits its counter keys on ':' to find the id."""
    parts = urlsplit(url)
    return f"{pool}@{parts.netloc}{parts.path}".replace(":", "_")


@functools.lru_cache(maxsize=4096)
def _label(pool: str, base_url: str) -> str:
    return f"{pool}/{hashlib.sha256(base_url.encode()).hexdigest()[:8]}"


class Balancer(Protocol):
    """Chooses endpoints and tracks their health (cooldowns) across requests."""

    async def choose(
        self, pool: str, *, exclude: frozenset[str] = frozenset(), ignore_cooldowns: bool = False
    ) -> Upstream | None:
        """An endpoint of `pool` that is not cooling down and not in `exclude`; None when none is.

        With `ignore_cooldowns`, endpoints cooling down are candidates too: the last resort when
        no other is left, so that cooldowns never empty a pool whose engines still answer.
        """
        ...

    def succeeded(self, upstream: Upstream, *, latency_s: float) -> None:
        """Reports a request that got its answer (or first token) from `upstream`."""
        ...

    def failed(self, upstream: Upstream, *, status: int | None, error: str) -> None:
        """Reports an attempt that failed through the endpoint's fault; `allowed_fails` of them in a
        row (no success between) and the next cools the endpoint down."""
        ...

    def rejected(self, upstream: Upstream) -> None:
        """Reports an attempt the endpoint refused because of the request itself: it ends the
        attempt for the strategy and counts neither for nor against the endpoint."""
        ...

    async def cooling(self, pool: str) -> frozenset[str]:
        """The ids of `pool`'s endpoints cooling down now (the ops page)."""
        ...

    def fallbacks(self, pool: str) -> list[str]:
        """Pools to try, in order, when every endpoint of `pool` failed."""
        ...

    def upstreams(self, pool: str) -> list[Upstream]:
        """Every endpoint of `pool` (for health probes and metrics)."""
        ...

    def add_upstream(self, upstream: Upstream, *, weight: int = 1) -> None:
        """An endpoint that joined its pool (discovered); chosen from the next request on."""
        ...

    def remove_upstream(self, upstream_id: str) -> None:
        """An endpoint that left its pool: no new requests (those in flight finish)."""
        ...

    def attach_load(self, load: LoadScraper, in_flight: Mapping[str, int]) -> None:
        """Live engine load and the gateway's in-flight counts, for a load-aware strategy."""
        ...
