"""Tenant limits: the same rules on this process's state and on Redis, and on Redis shared by
every replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.state import RedisLimiter, RedisState, Tenant, TenantLimits
from tandem.errors import LimitExceeded, UpstreamUnavailable
from tests.state.conftest import RedisServer, make_state

MakeLimits = Callable[..., TenantLimits]


class Replicas:
    """Builds a replica's `TenantLimits`; with a Redis server, every replica shares it."""

    def __init__(self, server: RedisServer | None, prefix: str) -> None:
        self.server = server
        self.prefix = prefix
        self.made: list[TenantLimits] = []
        self.states: list[RedisState] = []

    def __call__(self, lease_ttl_s: float = 30.0, **options: object) -> TenantLimits:
        shared = None
        if self.server is not None:
            state = make_state(self.server, self.prefix)
            self.states.append(state)
            shared = RedisLimiter(state, lease_ttl_s)
        limits = TenantLimits(shared, lease_ttl_s=lease_ttl_s, **options)  # type: ignore[arg-type]
        self.made.append(limits)
        return limits

    async def close(self) -> None:
        for limits in self.made:
            await limits.close()
        for state in self.states:
            await state.close()


@pytest.fixture(params=["memory", "redis"])
async def make_limits(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[MakeLimits]:
    """`make_limits(**options)`: one replica's limits, on local state or on Redis."""
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    replicas = Replicas(server, prefix)
    yield replicas
    await replicas.close()


@pytest.fixture
async def make_shared_limits(redis_server: RedisServer, prefix: str) -> AsyncIterator[MakeLimits]:
    """`make_shared_limits(**options)`: replicas' limits on one Redis."""
    replicas = Replicas(redis_server, prefix)
    yield replicas
    await replicas.close()


async def started(limits: TenantLimits) -> TenantLimits:
    await limits.start()
    return limits


async def test_a_tenant_without_limits_is_not_counted(make_limits: MakeLimits) -> None:
    limits = await started(make_limits())
    assert await limits.acquire(Tenant("free"), 10**9) is None
    assert await limits.acquire(None, 10) is None


async def test_requests_beyond_the_rpm_are_refused_naming_the_limit_with_a_retry_hint(
    make_limits: MakeLimits,
) -> None:
    limits = await started(make_limits())
    tenant = Tenant("acme", rpm=3)
    for _ in range(3):
        limits.finish(await limits.acquire(tenant, 10), 10)
    with pytest.raises(LimitExceeded) as refused:
        await limits.acquire(tenant, 10)
    err = refused.value
    assert err.limit == "rpm" and "rpm=3" in err.message and "acme" in err.message
    # One request comes back every 20 s at 3 a minute.
    assert err.retry_after is not None and 15 <= err.retry_after <= 21


async def test_tokens_beyond_the_tpm_are_refused_and_the_hint_is_the_time_to_refill(
    make_limits: MakeLimits,
) -> None:
    limits = await started(make_limits())
    tenant = Tenant("acme", tpm=600)  # 10 tokens a second
    await limits.acquire(tenant, 500)
    with pytest.raises(LimitExceeded) as refused:
        await limits.acquire(tenant, 200)
    assert refused.value.limit == "tpm" and "tpm=600" in refused.value.message
    assert refused.value.retry_after is not None and 9 <= refused.value.retry_after <= 11


async def test_a_refusal_by_one_limit_spends_nothing_from_the_others(make_limits: MakeLimits) -> None:
    limits = await started(make_limits())
    tenant = Tenant("acme", rpm=2, tpm=100)
    await limits.acquire(tenant, 60)
    with pytest.raises(LimitExceeded, match="tokens-per-minute"):
        await limits.acquire(tenant, 60)  # 40 tokens left: refused, and its request not counted
    assert await limits.acquire(tenant, 10) is not None  # the second request of the minute
    with pytest.raises(LimitExceeded, match="requests-per-minute"):
        await limits.acquire(tenant, 1)


async def test_the_estimate_is_corrected_to_the_actual_usage(make_limits: MakeLimits) -> None:
    limits = await started(make_limits())
    tenant = Tenant("acme", tpm=1000)
    grant = await limits.acquire(tenant, 900)  # a large max_tokens
    limits.finish(grant, 100)  # what the engine reported
    await asyncio.sleep(0.05)  # the correction is batched off the request's path
    grant = await limits.acquire(tenant, 800)  # fits only because 800 were refunded
    assert grant is not None


async def test_a_request_larger_than_the_whole_tpm_runs_at_a_full_bucket_then_waits(
    make_limits: MakeLimits,
) -> None:
    limits = await started(make_limits())
    tenant = Tenant("acme", tpm=100)
    assert await limits.acquire(tenant, 150) is not None
    with pytest.raises(LimitExceeded) as refused:
        await limits.acquire(tenant, 1)
    assert refused.value.limit == "tpm"


async def test_concurrent_streams_are_bounded_and_freed_when_they_end(make_limits: MakeLimits) -> None:
    limits = await started(make_limits())
    tenant = Tenant("acme", streams=2)
    first = await limits.acquire(tenant, 1)
    await limits.acquire(tenant, 1)
    with pytest.raises(LimitExceeded) as refused:
        await limits.acquire(tenant, 1)
    assert refused.value.limit == "streams" and "streams=2" in refused.value.message
    limits.finish(first, 1)
    await asyncio.sleep(0.05)
    assert await limits.acquire(tenant, 1) is not None


async def test_replicas_share_one_tenants_limits(make_shared_limits: MakeLimits) -> None:
    a, b = await started(make_shared_limits()), await started(make_shared_limits())
    tenant = Tenant("acme", rpm=10, streams=3)
    outcomes = await asyncio.gather(
        *(replica.acquire(tenant, 1) for replica in [a, b] * 10), return_exceptions=True
    )
    admitted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, LimitExceeded)]
    assert len(admitted) == 3 and len(refused) == 17  # streams: 3 at once, over both replicas


async def test_a_dead_replicas_stream_slots_free_themselves_when_their_lease_expires(
    make_shared_limits: MakeLimits,
) -> None:
    crashed = make_shared_limits(lease_ttl_s=1.0)  # never started: renews nothing, releases nothing
    survivor = await started(make_shared_limits(lease_ttl_s=1.0))
    tenant = Tenant("acme", streams=1)
    await crashed.acquire(tenant, 1)
    with pytest.raises(LimitExceeded):
        await survivor.acquire(tenant, 1)
    await asyncio.sleep(1.1)
    assert await survivor.acquire(tenant, 1) is not None


async def test_a_running_streams_lease_is_renewed_past_its_ttl(make_shared_limits: MakeLimits) -> None:
    running = await started(make_shared_limits(lease_ttl_s=1.0))
    other = await started(make_shared_limits(lease_ttl_s=1.0))
    tenant = Tenant("acme", streams=1)
    await running.acquire(tenant, 1)
    await asyncio.sleep(1.5)  # past the ttl: renewed every third of it
    with pytest.raises(LimitExceeded):
        await other.acquire(tenant, 1)


async def test_with_redis_gone_fail_open_enforces_limits_on_local_state(
    redis_server: RedisServer, prefix: str
) -> None:
    state = make_state(redis_server, prefix)
    limits = await started(TenantLimits(RedisLimiter(state, 30), on_failure="open"))
    tenant = Tenant("acme", rpm=2)
    redis_server.kill()
    assert await limits.acquire(tenant, 1) is not None
    assert state.health.degraded
    assert await limits.acquire(tenant, 1) is not None
    with pytest.raises(LimitExceeded):
        await limits.acquire(tenant, 1)
    await limits.close()
    await state.close()


async def test_with_redis_gone_fail_closed_refuses_limited_tenants_with_503(
    redis_server: RedisServer, prefix: str
) -> None:
    state = make_state(redis_server, prefix)
    limits = await started(TenantLimits(RedisLimiter(state, 30), on_failure="closed"))
    redis_server.kill()
    with pytest.raises(UpstreamUnavailable, match=r"redis.on_failure=closed") as refused:
        await limits.acquire(Tenant("acme", rpm=100), 1)
    assert refused.value.retry_after
    assert await limits.acquire(Tenant("free"), 1) is None  # nothing to check: not refused
    await limits.close()
    await state.close()


async def test_limits_return_to_redis_when_it_comes_back(redis_server: RedisServer, prefix: str) -> None:
    state = make_state(redis_server, prefix)
    limits = await started(TenantLimits(RedisLimiter(state, 30)))
    tenant = Tenant("acme", rpm=100)
    redis_server.kill()
    grant = await limits.acquire(tenant, 1)
    assert grant is not None and not grant.shared
    redis_server.start()
    for _ in range(50):
        if not state.health.degraded:
            break
        await asyncio.sleep(0.05)
    grant = await limits.acquire(tenant, 1)
    assert grant is not None and grant.shared
    assert await state.client.exists(f"{prefix}lim:{{acme}}:rpm")
    await limits.close()
    await state.close()
