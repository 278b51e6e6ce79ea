"""With Redis configured, gateway replicas share what their balancers learned."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.pool.conftest import MakeBalancer

pytestmark = [
    pytest.mark.filterwarnings("error::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*ReadOnly. qualifier:UserWarning"),
]


async def test_an_endpoint_cooled_down_by_one_replica_is_avoided_by_another(
    make_balancer: MakeBalancer, redis_url: str
) -> None:
    replica_a = make_balancer(redis_url=redis_url, allowed_fails=0, cooldown_seconds=60)
    replica_b = make_balancer(redis_url=redis_url, allowed_fails=0, cooldown_seconds=60)
    dead = replica_a.upstreams("qwen")[0]
    replica_a.failed(dead, status=503, error="server busy")
    give_up = time.monotonic() + 30
    while True:  # replica b reads Redis when its local view of the cooldowns expires
        chosen = {u.id for u in [await replica_b.choose("qwen") for _ in range(30)] if u is not None}
        if dead.id not in chosen:
            break
        assert time.monotonic() < give_up, "replica b never saw the cooldown"
        await asyncio.sleep(0.05)
    assert chosen == {u.id for u in replica_b.upstreams("qwen")} - {dead.id}
