"""The edge fleet as the gateway sees it: heartbeats (kept for a TTL) and the model version each
edge group should serve.

`MemoryFleet` keeps this in the process (a single gateway, `tandem up`); a Redis-backed store
shares it between gateway replicas.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class ServedModel:
    name: str
    digest: str = ""
    reference: str = ""


@dataclass(slots=True)
class EdgeStatus:
    edge_id: str
    group: str
    models: list[ServedModel] = field(default_factory=list)
    in_flight: int = 0
    queued: int = 0
    healthy: bool = True
    version: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    last_seen: float = 0.0


@dataclass(slots=True)
class Desired:
    """What an edge group should serve: a reference, optionally for a canary share first."""

    reference: str
    digest: str = ""
    canary_percent: int = 100
    previous_reference: str = ""
    previous_digest: str = ""


class FleetStore(Protocol):
    async def record(self, status: EdgeStatus) -> None: ...
    async def edges(self) -> list[EdgeStatus]: ...
    async def desired(self, group: str) -> Desired | None: ...


class MemoryFleet:
    """Heartbeats and desired versions in this process; a heartbeat expires after `ttl_s`."""

    def __init__(self, ttl_s: float = 30.0) -> None:
        self.ttl_s = ttl_s
        self._edges: dict[str, EdgeStatus] = {}
        self._desired: dict[str, Desired] = {}

    async def record(self, status: EdgeStatus) -> None:
        status.last_seen = time.time()
        self._edges[status.edge_id] = status

    async def edges(self) -> list[EdgeStatus]:
        cutoff = time.time() - self.ttl_s
        for edge_id in [e.edge_id for e in self._edges.values() if e.last_seen < cutoff]:
            del self._edges[edge_id]
        return sorted(self._edges.values(), key=lambda e: (e.group, e.edge_id))

    async def desired(self, group: str) -> Desired | None:
        return self._desired.get(group)

    async def set_desired(self, group: str, desired: Desired) -> None:
        self._desired[group] = desired


def in_canary(edge_id: str, group: str, percent: int) -> bool:
    """Whether an edge belongs to a rollout's canary share: stable per edge, spread evenly."""
    if percent >= 100:
        return True
    bucket = int.from_bytes(hashlib.sha256(f"{group}/{edge_id}".encode()).digest()[:4], "big") % 100
    return bucket < percent


def assignment(edge_id: str, group: str, desired: Desired | None) -> tuple[str, str]:
    """The (reference, digest) this edge should serve under `desired`; empty: keep what it has."""
    if desired is None:
        return "", ""
    if in_canary(edge_id, group, desired.canary_percent):
        return desired.reference, desired.digest
    return desired.previous_reference, desired.previous_digest
