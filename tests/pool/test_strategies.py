"""Each configured routing strategy chooses by what the balancer reported to it."""

from __future__ import annotations

import pytest

from gateway.pool import Upstream
from gateway.pool.litellm_balancer import LitellmBalancer
from tests.pool.conftest import MakeBalancer

pytestmark = [
    pytest.mark.filterwarnings("error::DeprecationWarning"),
    # litellm's pydantic notices, which the balancer module filters out in production
    pytest.mark.filterwarnings("ignore:.*ReadOnly. qualifier:UserWarning"),
]


async def test_latency_based_routing_prefers_the_fastest_endpoint(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(strategy="latency-based-routing")
    slow, fast, slower = balancer.upstreams("qwen")
    for upstream, latency_s in ((slow, 2.0), (fast, 0.2), (slower, 3.0)):
        for _ in range(3):
            balancer.succeeded(upstream, latency_s=latency_s)
    for _ in range(20):
        chosen = await balancer.choose("qwen")
        assert chosen is not None and chosen.id == fast.id


async def hold(balancer: LitellmBalancer, upstream: Upstream) -> None:
    """Starts a request on `upstream` (chosen by excluding every other endpoint)."""
    others = frozenset(u.id for u in balancer.upstreams(upstream.pool) if u.id != upstream.id)
    assert await balancer.choose(upstream.pool, exclude=others) == upstream


async def test_least_busy_chooses_the_endpoint_with_fewest_requests_in_flight(
    make_balancer: MakeBalancer,
) -> None:
    balancer = make_balancer(strategy="least-busy")
    a, b, c = balancer.upstreams("qwen")
    await hold(balancer, a)
    await hold(balancer, b)
    assert await balancer.choose("qwen") == c


async def test_least_busy_no_longer_counts_a_request_reported_successful(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(strategy="least-busy")
    a, b, c = balancer.upstreams("qwen")
    for upstream in (a, b, c):
        await hold(balancer, upstream)
    balancer.succeeded(a, latency_s=0.1)
    assert await balancer.choose("qwen") == a


async def test_least_busy_no_longer_counts_a_request_reported_failed(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(strategy="least-busy")
    a, b, c = balancer.upstreams("qwen")
    for upstream in (a, b, c):
        await hold(balancer, upstream)
    balancer.failed(b, status=400, error="bad request")
    assert await balancer.choose("qwen") == b


async def test_usage_based_routing_spreads_across_endpoints(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(strategy="usage-based-routing-v2")
    seen = set()
    for _ in range(60):
        chosen = await balancer.choose("qwen")
        assert chosen is not None
        seen.add(chosen.id)
        balancer.succeeded(chosen, latency_s=0.1)
    assert seen == {u.id for u in balancer.upstreams("qwen")}
