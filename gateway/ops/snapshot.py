"""Everything the ops page shows, gathered in one JSON-ready dict (`OpsView.snapshot`).

- **fleet**: each edge that heartbeats (or did: an edge that stopped is kept, marked `down`,
  for `REMEMBER_DOWN_S`), with its agent version, the models it serves, the version its
  group's rollout assigns it, its uplink breaker, its last heartbeat and its local share;
- **pools**: each cloud pool's endpoints (in flight from this gateway, live engine load when
  `least-loaded` reads it, cooling down or not), replicas, demand and held requests;
- **routes**: the route history (`gateway/ops/history.py`);
- **rollouts**: each edge group's desired version and how many of its edges serve it;
- **batches**: from the `BatchSource` (none without the Batch API).

An edge is `up` while its heartbeats arrive, `late` once none came for `LATE_INTERVALS`
heartbeat intervals, and `down` once the fleet store forgot it (after `fleet.ttl_seconds`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from gateway import fleet
from gateway.fleet import Desired, EdgeStatus, FleetStore
from gateway.ops.batches import BatchSource
from gateway.ops.history import KINDS, RouteHistory
from gateway.pool.elastic import PoolStates
from gateway.service import GatewayService
from gateway.state import StateUnavailable
from tandem.version import tandem_version

LATE_INTERVALS = 2.5
REMEMBER_DOWN_S = 3600.0
MAX_REMEMBERED = 10_000


def local_share(local: int, forwarded: int) -> float | None:
    """The part of answered requests that ran on the edge box; None before any ran."""
    total = local + forwarded
    return None if total == 0 else local / total


class OpsView:
    def __init__(
        self,
        service: GatewayService,
        fleet_store: FleetStore,
        history: RouteHistory,
        batches: BatchSource,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.fleet = fleet_store
        self.history = history
        self.batches = batches
        self._clock = clock
        self._pool_states = PoolStates(service.elastic)
        self._seen: dict[str, EdgeStatus] = {}  # every edge heard of lately, by id (the `down` ones)

    async def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        edges = await self.fleet.edges()
        try:
            desired: dict[str, Desired] | None = await self.fleet.desired_all()
        except StateUnavailable:
            desired = None  # Redis is away: rollouts are not known here (edges are, from this replica)
        return {
            "now": now,
            "gateway": self._gateway(),
            "fleet": self._fleet(edges, desired or {}, now),
            "pools": await self._pools(),
            "routes": self._routes(),
            "rollouts": None if desired is None else _rollouts(edges, desired),
            "batches": [asdict(b) for b in await self.batches.batches()],
        }

    def _gateway(self) -> dict[str, Any]:
        s = self.service
        return {
            "version": tandem_version(),
            "in_flight": s.in_flight,
            "draining": s.draining,
            "auth_required": s.auth.required,
            "shared_state": ("redis" if s.state.redis else "local")
            + (" (unreachable)" if s.state.health.degraded else ""),
            "heartbeat_seconds": s.config.fleet.heartbeat_seconds,
        }

    # --- fleet ---------------------------------------------------------------------------------

    def _fleet(
        self, edges: list[EdgeStatus], desired: dict[str, Desired], now: float
    ) -> list[dict[str, Any]]:
        late_after = LATE_INTERVALS * self.service.config.fleet.heartbeat_seconds
        for e in edges:
            self._seen[e.edge_id] = e
        live = {e.edge_id for e in edges}
        for edge_id in [i for i, e in self._seen.items() if now - e.last_seen > REMEMBER_DOWN_S]:
            del self._seen[edge_id]
        if len(self._seen) > MAX_REMEMBERED:  # keep the most recently heard
            keep = sorted(self._seen.values(), key=lambda e: e.last_seen)[-MAX_REMEMBERED:]
            self._seen = {e.edge_id: e for e in keep}
        out = []
        for e in sorted(self._seen.values(), key=lambda e: (e.group, e.edge_id)):
            age = max(0.0, now - e.last_seen)
            state = "down" if e.edge_id not in live else ("late" if age > late_after else "up")
            out.append(_edge(e, desired.get(e.group), state, age))
        return out

    # --- pools ---------------------------------------------------------------------------------

    async def _pools(self) -> list[dict[str, Any]]:
        s = self.service
        elastic = s.elastic
        load = elastic.load
        loop_now = asyncio.get_running_loop().time()
        out = []
        for state, pool in zip(self._pool_states.now(), s.config.pools, strict=True):
            cooling = await s.balancer.cooling(pool.name)
            endpoints = []
            for u in s.balancer.upstreams(pool.name):
                reading = load.load(u.id, loop_now) if load is not None else None
                endpoints.append(
                    {
                        "id": u.id,
                        "label": u.label,
                        "url": u.base_url,
                        "model": u.model,
                        "max_concurrency": u.max_concurrency,
                        "in_flight": s.upstream_in_flight(u.id),
                        "cooling": u.id in cooling,
                        "load": None
                        if reading is None
                        else {
                            "waiting": reading.waiting,
                            "running": reading.running,
                            "kv_usage": reading.kv_usage,
                            "age_s": round(loop_now - reading.read_at, 3),
                        },
                    }
                )
            out.append(
                {
                    "name": pool.name,
                    "aliases": list(pool.aliases),
                    "readiness": state.readiness.value,
                    "replicas": state.endpoints,
                    "demand": elastic.demand(pool.name),
                    "held": state.held,
                    "cold_seconds": round(state.cold_seconds, 3),
                    "estimated_wait_seconds": round(state.estimated_wait_seconds, 3),
                    "discovered": pool.discovery is not None,
                    "load_read": load is not None,
                    "endpoints": endpoints,
                }
            )
        return out

    # --- routes --------------------------------------------------------------------------------

    def _routes(self) -> dict[str, Any]:
        series = self.history.series()
        totals = {k: sum(i.counts[k] for i in series) for k in KINDS}
        local = totals["local_thinking"] + totals["local_non_thinking"]
        cloud = totals["cloud_thinking"] + totals["cloud_non_thinking"]
        return {
            "interval_seconds": self.history.interval_s,
            "kinds": list(KINDS),
            "intervals": [{"start": i.start, **i.counts} for i in series],
            "totals": totals,
            "local_share": local_share(local, cloud),
        }


def _edge(e: EdgeStatus, desired: Desired | None, state: str, age: float) -> dict[str, Any]:
    reference, digest = fleet.assignment(e.edge_id, e.group, desired)
    r = e.routes
    local = r.get("local_thinking", 0) + r.get("local_non_thinking", 0)
    forwarded = r.get("forwarded_thinking", 0) + r.get("forwarded_non_thinking", 0)
    return {
        "id": e.edge_id,
        "group": e.group,
        "state": state,
        "version": e.version,
        "models": [asdict(m) for m in e.models],
        "desired_reference": reference,
        "in_sync": fleet.matches(e, reference, digest),
        "breaker": e.breaker,
        "healthy": e.healthy,
        "in_flight": e.in_flight,
        "queued": e.queued,
        "last_seen": e.last_seen,
        "age_s": round(age, 3),
        "routes": dict(r),
        "local_share": local_share(local, forwarded),
    }


def _rollouts(edges: list[EdgeStatus], desired: dict[str, Desired]) -> list[dict[str, Any]]:
    out = []
    for group, d in sorted(desired.items()):
        members = [e for e in edges if e.group == group]
        on_new = sum(1 for e in members if fleet.matches(e, d.reference, d.digest))
        assigned = [fleet.assignment(e.edge_id, group, d) for e in members]
        serving = sum(
            1 for e, (ref, dig) in zip(members, assigned, strict=True) if fleet.matches(e, ref, dig)
        )
        out.append(
            {
                "group": group,
                "reference": d.reference,
                "canary_percent": d.canary_percent,
                "previous_reference": d.previous_reference,
                "updated_at": d.updated_at,
                "edges": len(members),
                "on_new_version": on_new,
                "serving_assigned": serving,
                "in_progress": d.canary_percent < 100 or serving < len(members),
            }
        )
    return out
