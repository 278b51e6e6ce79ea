"""What gateway replicas share: tenants and their keys, tenant limits, the edge fleet.

On Redis when `redis.url` is set (`RedisTenants`, `RedisLimiter`, `RedisFleet` over one
`RedisState`), in this process otherwise; `SharedState.from_config` builds the right ones.
Redis is a dependency of scale, not of correctness: each Redis-backed piece falls back to local
state while Redis is unreachable (see `redis_conn`).
"""

from gateway.state.limits import Grant, MemoryLimiter, RedisLimiter, TenantLimits
from gateway.state.redis_conn import RedisState, StateHealth, StateUnavailable, build_client
from gateway.state.shared import SharedState
from gateway.state.tenants import KeyRecord, MemoryTenants, Principal, RedisTenants, Tenant, TenantStore

__all__ = [
    "Grant",
    "KeyRecord",
    "MemoryLimiter",
    "MemoryTenants",
    "Principal",
    "RedisLimiter",
    "RedisState",
    "RedisTenants",
    "SharedState",
    "StateHealth",
    "StateUnavailable",
    "Tenant",
    "TenantLimits",
    "TenantStore",
    "build_client",
]
