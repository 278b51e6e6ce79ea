"""Tenants and their API keys, the same in memory and in Redis."""

from __future__ import annotations

from gateway.state import Principal, RedisState, Tenant, TenantStore
from gateway.state.tenants import key_digest, well_formed


async def test_a_created_key_resolves_to_its_tenant_with_its_models_and_limits(
    tenant_store: TenantStore,
) -> None:
    await tenant_store.set_tenant(Tenant("acme", frozenset({"qwen3"}), rpm=60, tpm=1000, streams=2))
    key, record = await tenant_store.create_key("acme", label="ci")
    assert well_formed(key) and record.tenant == "acme" and record.label == "ci"
    assert await tenant_store.lookup(key_digest(key)) == Principal(
        Tenant("acme", frozenset({"qwen3"}), 60, 1000, 2)
    )


async def test_a_key_of_a_tenant_without_settings_may_use_everything(tenant_store: TenantStore) -> None:
    key, _ = await tenant_store.create_key("beta")
    found = await tenant_store.lookup(key_digest(key))
    assert found is not None and found.tenant.allows("any-model") and not found.tenant.limited


async def test_an_unknown_key_resolves_to_nothing(tenant_store: TenantStore) -> None:
    assert await tenant_store.lookup(key_digest("tdm-" + "x" * 43)) is None


async def test_a_revoked_key_no_longer_resolves_and_is_listed_as_revoked(tenant_store: TenantStore) -> None:
    key, record = await tenant_store.create_key("acme")
    kept, _ = await tenant_store.create_key("acme")
    revoked = await tenant_store.revoke(record.id)
    assert revoked is not None and revoked.revoked > 0
    assert await tenant_store.lookup(key_digest(key)) is None
    assert await tenant_store.lookup(key_digest(kept)) is not None
    listed = {r.id: r for r in await tenant_store.keys("acme")}
    assert listed[record.id].revoked and len(listed) == 2


async def test_a_key_can_be_revoked_by_the_key_itself(tenant_store: TenantStore) -> None:
    key, record = await tenant_store.create_key("acme")
    revoked = await tenant_store.revoke(key)
    assert revoked is not None and revoked.id == record.id
    assert await tenant_store.lookup(key_digest(key)) is None


async def test_revoking_an_unknown_key_id_says_so(tenant_store: TenantStore) -> None:
    assert await tenant_store.revoke("000000000000") is None


async def test_listing_filters_by_tenant_and_never_shows_a_key(tenant_store: TenantStore) -> None:
    key_a, _ = await tenant_store.create_key("acme")
    await tenant_store.create_key("beta")
    records = await tenant_store.keys("acme")
    assert [r.tenant for r in records] == ["acme"]
    assert key_a not in repr(records)


async def test_redis_holds_only_digests_of_keys(redis_state: RedisState, prefix: str) -> None:
    from gateway.state.redis_conn import text
    from gateway.state.tenants import RedisTenants

    key, _ = await RedisTenants(redis_state).create_key("acme", label="ci")
    client = redis_state.client
    secret = key.removeprefix("tdm-").encode()
    names = [n async for n in client.scan_iter(match=f"{prefix}*")]
    assert names
    for name in names:
        assert secret not in name
        kind = text(await client.type(name))
        values = await client.hvals(name) if kind == "hash" else await client.smembers(name)
        assert all(secret not in v for v in values)
