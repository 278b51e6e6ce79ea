"""The edge fleet as the gateway sees it: heartbeats (kept for a TTL) and the model version each
edge group should serve.

`MemoryFleet` keeps this in the process (a single gateway, `tandem up`); `RedisFleet`
(`gateway/state/fleet_redis.py`) shares it between gateway replicas and the `tandem fleet` and
`tandem model rollout|rollback` commands.

A rollout sets a group's desired version, optionally for a canary share of its edges first:
`in_canary` picks the share by a hash of the edge id, so an edge stays in (or out of) the canary
as the share grows. The edges outside it keep the version the group was on before (`previous`),
which is also what a rollback returns the whole group to.

Every status is bounded (`check_status`): each heartbeat field has a cap and so does the
record as stored, so no edge, genuine or not, can make Redis or a replica's memory grow with
what it reports.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import orjson

from tandem.errors import BadRequest

DEFAULT_GROUP = "default"

# What one heartbeat may carry. An edge reports its id (its hostname by default), group, the
# models its Ollama serves and a few labels; these caps are far above that and keep a stored
# status under MAX_STATUS_BYTES.
MAX_EDGE_ID = 256
MAX_GROUP = 128
MAX_VERSION = 64
MAX_MODELS = 256
MAX_MODEL_FIELD = 512  # a served model's name, digest or reference
MAX_LABELS = 32
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 256
MAX_STATUS_BYTES = 64 * 1024
BREAKER_STATES = ("", "closed", "half_open", "open")
# The counts a heartbeat's `routes` carries (the RouteCounts fields).
ROUTE_COUNTS = ("local_thinking", "local_non_thinking", "forwarded_thinking", "forwarded_non_thinking")

# REGISTRY/REPOSITORY[:TAG][@sha256:HEX], the shape `registry.reference` accepts (the gateway does
# not import the registry package; the edge's model sync parses the reference fully).
_REFERENCE = re.compile(
    r"^(?P<host>[A-Za-z0-9.\-\[\]:]+)/(?P<repo>[a-z0-9]+(?:[._/-]+[a-z0-9]+)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class RolloutError(ValueError):
    """A rollout or rollback that cannot be done; the message says why."""


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
    breaker: str = ""  # the edge's uplink breaker ("closed", "half_open", "open"); "": not reported
    # Requests the edge answered since it started: ROUTE_COUNTS -> count (cumulative).
    routes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> EdgeStatus:
        data: dict[str, Any] = orjson.loads(raw)
        data["models"] = [ServedModel(**m) for m in data.get("models", [])]
        # Fields a newer replica stored and this one does not know are left out: replicas of
        # two versions share the fleet during a rolling upgrade.
        return cls(**{k: v for k, v in data.items() if k in _STATUS_FIELDS})


_STATUS_FIELDS = frozenset(f.name for f in fields(EdgeStatus))


def check_status(status: EdgeStatus, encoded: bytes | None = None) -> bytes:
    """The status as stored (JSON), once every field is within its cap; raises `BadRequest`
    naming the first field that is not."""

    def refuse(field: str, rule: str) -> BadRequest:
        return BadRequest(f"heartbeat {field}: {rule}", param=field)

    if not status.edge_id or len(status.edge_id) > MAX_EDGE_ID:
        raise refuse("edge_id", f"required, at most {MAX_EDGE_ID} characters")
    if len(status.group) > MAX_GROUP:
        raise refuse("group", f"at most {MAX_GROUP} characters")
    if len(status.version) > MAX_VERSION:
        raise refuse("version", f"at most {MAX_VERSION} characters")
    if len(status.models) > MAX_MODELS:
        raise refuse("models", f"at most {MAX_MODELS} entries")
    for m in status.models:
        if max(len(m.name), len(m.digest), len(m.reference)) > MAX_MODEL_FIELD:
            raise refuse("models", f"name, digest and reference are at most {MAX_MODEL_FIELD} characters")
    if len(status.labels) > MAX_LABELS:
        raise refuse("labels", f"at most {MAX_LABELS} entries")
    for key, value in status.labels.items():
        if not key or len(key) > MAX_LABEL_KEY:
            raise refuse("labels", f"keys are 1 to {MAX_LABEL_KEY} characters")
        if len(value) > MAX_LABEL_VALUE:
            raise refuse("labels", f"values are at most {MAX_LABEL_VALUE} characters")
    if status.breaker not in BREAKER_STATES:
        raise refuse("breaker", "one of closed, half_open, open")
    if set(status.routes) - set(ROUTE_COUNTS) or any(n < 0 for n in status.routes.values()):
        raise refuse("routes", f"counts of {', '.join(ROUTE_COUNTS)}, none negative")
    raw = status.to_json() if encoded is None else encoded
    if len(raw) > MAX_STATUS_BYTES:
        raise refuse("status", f"at most {MAX_STATUS_BYTES} bytes as stored")
    return raw


@dataclass(slots=True)
class Desired:
    """What an edge group should serve: a reference, optionally for a canary share first."""

    reference: str
    digest: str = ""
    canary_percent: int = 100
    previous_reference: str = ""
    previous_digest: str = ""
    updated_at: float = 0.0

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Desired:
        return cls(**orjson.loads(raw))


class FleetStore(Protocol):
    async def record(self, status: EdgeStatus) -> None: ...
    async def heartbeat(self, status: EdgeStatus) -> Desired | None:
        """Records `status` and returns its group's desired version (one round trip)."""
        ...

    async def edges(self) -> list[EdgeStatus]: ...
    async def desired(self, group: str) -> Desired | None: ...
    async def desired_all(self) -> dict[str, Desired]: ...


class MemoryFleet:
    """Heartbeats and desired versions in this process; a heartbeat expires after `ttl_s`."""

    def __init__(self, ttl_s: float = 35.0) -> None:
        self.ttl_s = ttl_s
        self._edges: dict[str, EdgeStatus] = {}
        self._desired: dict[str, Desired] = {}

    async def record(self, status: EdgeStatus) -> None:
        check_status(status)
        status.last_seen = time.time()
        self._edges[status.edge_id] = status

    async def heartbeat(self, status: EdgeStatus) -> Desired | None:
        await self.record(status)
        return self._desired.get(status.group)

    async def edges(self) -> list[EdgeStatus]:
        cutoff = time.time() - self.ttl_s
        for edge_id in [e.edge_id for e in self._edges.values() if e.last_seen < cutoff]:
            del self._edges[edge_id]
        return sorted(self._edges.values(), key=lambda e: (e.group, e.edge_id))

    async def desired(self, group: str) -> Desired | None:
        return self._desired.get(group)

    async def desired_all(self) -> dict[str, Desired]:
        return dict(self._desired)

    async def set_desired(self, group: str, desired: Desired) -> None:
        self._desired[group] = desired

    async def rollout(
        self, group: str, reference: str, digest: str = "", canary_percent: int = 100
    ) -> Desired:
        new = plan_rollout(self._desired.get(group), reference, digest, canary_percent)
        self._desired[group] = new
        return new

    async def rollback(self, group: str) -> Desired:
        new = plan_rollback(group, self._desired.get(group))
        self._desired[group] = new
        return new


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


def matches(edge: EdgeStatus, reference: str, digest: str) -> bool | None:
    """Whether the edge serves what it was assigned; None when nothing is assigned. An edge
    matches by the reference it reports, or by the manifest digest when the rollout pinned one."""
    if not reference:
        return None
    for model in edge.models:
        if model.reference and _same_reference(model.reference, reference):
            return True
        if digest and digest in (model.digest, _pinned_digest(model.reference)):
            return True
    return False


def _same_reference(served: str, assigned: str) -> bool:
    if served == assigned:
        return True
    # An edge pins what it pulled (`...:tag@sha256:x`); that still serves `...:tag` as rolled out.
    same_name = served.split("@", 1)[0] == assigned.split("@", 1)[0]
    return same_name and _pinned_digest(assigned) in ("", _pinned_digest(served))


def _pinned_digest(reference: str) -> str:
    return reference.split("@", 1)[1] if "@" in reference else ""


def check_reference(reference: str, digest: str = "") -> tuple[str, str]:
    """A rollout's (reference, digest), validated. A digest given apart is added to the reference
    (`...:tag@sha256:...`), so the reference alone tells an edge exactly what to pull."""
    m = _REFERENCE.match(reference.strip())
    if m is None or not ("." in m["host"] or ":" in m["host"] or m["host"] == "localhost"):
        raise RolloutError(
            f"{reference!r} is not a model reference: expected REGISTRY/models/NAME[:TAG][@sha256:HEX], "
            "e.g. registry.local:5000/models/qwen3:14b"
        )
    pinned = m["digest"] or ""
    if digest and not _DIGEST.match(digest):
        raise RolloutError(f"digest {digest!r}: expected sha256:<64 hex digits>")
    if digest and pinned and digest != pinned:
        raise RolloutError(f"the reference pins {pinned}, not {digest}")
    if digest and not pinned:
        return f"{reference.strip()}@{digest}", digest
    return reference.strip(), pinned


def plan_rollout(
    current: Desired | None, reference: str, digest: str = "", canary_percent: int = 100
) -> Desired:
    """The group's desired version after rolling out `reference` to `canary_percent` of it.

    Rolling out the version already desired changes its share (a canary grows to 100%). A new
    version replaces a finished rollout, whose version becomes the one to roll back to; it
    replaces an unfinished canary outright, and the edges outside the new canary stay on the
    version the old canary had started from.
    """
    if not 0 <= canary_percent <= 100:
        raise RolloutError(f"canary share {canary_percent}: expected 0 to 100 percent")
    now = time.time()
    if current is not None and current.reference == reference and (not digest or digest == current.digest):
        return Desired(
            reference,
            current.digest,
            canary_percent,
            current.previous_reference,
            current.previous_digest,
            updated_at=now,
        )
    if current is None:
        return Desired(reference, digest, canary_percent, updated_at=now)
    if current.canary_percent >= 100:
        return Desired(reference, digest, canary_percent, current.reference, current.digest, updated_at=now)
    return Desired(
        reference, digest, canary_percent, current.previous_reference, current.previous_digest, updated_at=now
    )


def plan_rollback(group: str, current: Desired | None) -> Desired:
    """The group's desired version after a rollback: the previous version, on every edge."""
    if current is None:
        raise RolloutError(f"group {group!r} has no rollout to roll back")
    if not current.previous_reference:
        raise RolloutError(
            f"group {group!r} has no earlier version to return to (it is set to {current.reference}); "
            "roll out the version it should serve instead"
        )
    return Desired(current.previous_reference, current.previous_digest, 100, updated_at=time.time())
