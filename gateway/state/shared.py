"""`SharedState`: everything gateway replicas share, on Redis or in this process.

Built once from configuration by the gateway server: with `redis.url`, tenants and keys, tenant
limits and the fleet live in Redis (with local fallbacks while it is away); without, they live
in this process (`tandem up`, a single gateway).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import GatewayConfig, StaticTenant
from gateway.fleet import FleetStore, MemoryFleet
from gateway.state.fleet_redis import RedisFleet
from gateway.state.limits import RedisLimiter, TenantLimits
from gateway.state.redis_conn import RedisState, StateHealth
from gateway.state.tenants import MemoryTenants, RedisTenants, Tenant, TenantStore
from tandem.metrics import Metrics


@dataclass
class SharedState:
    health: StateHealth
    tenants: TenantStore
    limits: TenantLimits
    fleet: FleetStore
    redis: RedisState | None = None

    @classmethod
    def from_config(cls, config: GatewayConfig, metrics: Metrics | None = None) -> SharedState:
        meanwhile = {
            "open": "local state; each replica enforces tenant limits on its own (redis.on_failure=open)",
            "closed": "local state; tenants with limits are refused (redis.on_failure=closed)",
        }[config.redis.on_failure]
        health = StateHealth(metrics, fallback=meanwhile)
        redis = RedisState(config.redis, health) if config.redis.url else None
        limits = TenantLimits(
            RedisLimiter(redis, config.limits.stream_lease_seconds) if redis else None,
            on_failure=config.redis.on_failure,
            lease_ttl_s=config.limits.stream_lease_seconds,
            retry_after_s=config.limits.retry_after_seconds,
        )
        ttl = config.fleet.ttl_seconds
        if redis is None:
            return cls(health, static_tenants(config.auth.tenants), limits, MemoryFleet(ttl))
        fleet = RedisFleet(redis, ttl_s=ttl, local=MemoryFleet(ttl))
        return cls(health, RedisTenants(redis), limits, fleet, redis)

    async def start(self) -> None:
        """Starts background work; Redis being down now is not an error (the state starts degraded)."""
        if self.redis is not None:
            await self.redis.check()
        await self.limits.start()

    async def close(self) -> None:
        await self.limits.close()
        if self.redis is not None:
            await self.redis.close()


def static_tenants(configured: list[StaticTenant]) -> MemoryTenants:
    """The tenants of `auth.tenants`, for a gateway without Redis."""
    store = MemoryTenants()
    for t in configured:
        store.add_tenant(Tenant(t.name, frozenset(t.models), t.rpm, t.tpm, t.streams))
        for digest in t.key_sha256:
            store.add_digest(t.name, digest)
        for edge_key in t.edge_keys:
            store.add_digest(t.name, edge_key.sha256, role="edge", edge=edge_key.edge)
        for digest in t.admin_key_sha256:
            store.add_digest(t.name, digest, role="admin")
    return store
