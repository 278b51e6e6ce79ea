"""Resolving an API key to its tenant: once per cache period, never on every request, and a
revoked key refused within that period."""

from __future__ import annotations

import asyncio

import pytest

from gateway.auth import INVALID, MISSING, Authenticator, credential
from gateway.state import MemoryTenants, Principal, RedisState, Tenant
from gateway.state.tenants import RedisTenants, TenantStore
from tandem.errors import Unauthenticated, UpstreamUnavailable
from tests.state.conftest import RedisServer


class CountingStore(MemoryTenants):
    """Counts lookups, and can make them slow or fail like a Redis that went away."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.delay = 0.0
        self.down = False

    async def lookup(self, digest: str) -> Principal | None:
        from gateway.state import StateUnavailable

        self.lookups += 1
        await asyncio.sleep(self.delay)
        if self.down:
            raise StateUnavailable("redis is away")
        return await super().lookup(digest)


def authenticator(store: TenantStore, cache_seconds: float = 60.0) -> Authenticator:
    return Authenticator(store, required=True, cache_seconds=cache_seconds)


@pytest.mark.parametrize(
    ("authorization", "api_key", "expected"),
    [
        ("Bearer tdm-abc", None, "tdm-abc"),
        ("bearer  tdm-abc ", None, "tdm-abc"),
        (None, "tdm-abc", "tdm-abc"),
        ("Basic dXNlcjpwYXNz", None, ""),
        (None, None, None),
    ],
)
def test_the_key_comes_from_a_bearer_header_or_x_api_key(
    authorization: str | None, api_key: str | None, expected: str | None
) -> None:
    assert credential(authorization, api_key) == expected


async def test_a_missing_key_is_refused_saying_how_to_send_one() -> None:
    with pytest.raises(Unauthenticated, match="Authorization: Bearer"):
        await authenticator(MemoryTenants()).authenticate(None)


@pytest.mark.parametrize("key", ["", "not-a-key", "tdm-short", "sk-" + "a" * 40, "tdm-" + "x" * 43])
async def test_a_malformed_or_unknown_key_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        await authenticator(MemoryTenants()).authenticate(key)
    assert refused.value.message in (INVALID, MISSING) and (not key or key not in refused.value.message)


async def test_with_authentication_off_no_key_is_needed() -> None:
    auth = Authenticator(MemoryTenants(), required=False)
    assert await auth.authenticate(None) is None


async def test_a_known_key_is_looked_up_once_per_cache_period() -> None:
    store = CountingStore()
    key, _ = await store.create_key("acme")
    auth = authenticator(store)
    for _ in range(100):
        assert (await auth.authenticate(key)) == Tenant("acme")
    assert store.lookups == 1


async def test_concurrent_requests_with_a_new_key_share_one_lookup() -> None:
    store = CountingStore()
    store.delay = 0.05
    key, _ = await store.create_key("acme")
    auth = authenticator(store)
    tenants = await asyncio.gather(*(auth.authenticate(key) for _ in range(50)))
    assert {t.name for t in tenants if t} == {"acme"} and store.lookups == 1


async def test_a_revoked_key_is_refused_once_the_cache_period_has_passed(
    redis_state: RedisState,
) -> None:
    store = RedisTenants(redis_state)
    key, record = await store.create_key("acme")
    replicas = [authenticator(store, cache_seconds=0.2) for _ in range(2)]
    for auth in replicas:
        await auth.authenticate(key)
    await store.revoke(record.id)
    await asyncio.sleep(0.25)
    for auth in replicas:
        with pytest.raises(Unauthenticated):
            await auth.authenticate(key)


async def test_known_keys_keep_working_while_redis_is_away() -> None:
    store = CountingStore()
    key, _ = await store.create_key("acme")
    auth = authenticator(store, cache_seconds=0.01)
    await auth.authenticate(key)
    store.down = True
    await asyncio.sleep(0.02)
    assert await auth.authenticate(key) == Tenant("acme")


async def test_an_unseen_key_while_redis_is_away_gets_a_retry_hint_not_a_401() -> None:
    store = CountingStore()
    key, _ = await store.create_key("acme")
    store.down = True
    with pytest.raises(UpstreamUnavailable) as refused:
        await authenticator(store).authenticate(key)
    assert refused.value.retry_after


async def test_a_killed_redis_degrades_lookups_to_what_the_replica_knows(
    redis_server: RedisServer, redis_state: RedisState
) -> None:
    store = RedisTenants(redis_state)
    key, _ = await store.create_key("acme")
    auth = authenticator(store, cache_seconds=0.01)
    await auth.authenticate(key)
    redis_server.kill()
    await asyncio.sleep(0.02)
    assert await auth.authenticate(key) == Tenant("acme")
    assert redis_state.health.degraded
