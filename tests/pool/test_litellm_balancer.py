"""LitellmBalancer: choice, exclusion, cooldowns and fallbacks, driven by litellm.Router."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.pool import Upstream
from gateway.pool.litellm_balancer import LitellmBalancer
from tests.pool.conftest import MakeBalancer, pool

# The balancer must use litellm's current entry points, never its deprecated members.
pytestmark = [
    pytest.mark.filterwarnings("error::DeprecationWarning"),
    # litellm's pydantic notices, which the balancer module filters out in production
    pytest.mark.filterwarnings("ignore:.*ReadOnly. qualifier:UserWarning"),
]


async def chosen_ids(balancer: LitellmBalancer, pool: str = "qwen", times: int = 60) -> set[str]:
    ids: set[str] = set()
    for _ in range(times):
        upstream = await balancer.choose(pool)
        assert upstream is not None
        ids.add(upstream.id)
    return ids


def ids_of(balancer: LitellmBalancer, pool: str = "qwen") -> list[str]:
    return [u.id for u in balancer.upstreams(pool)]


async def wait_until_chosen(balancer: LitellmBalancer, upstream_id: str, deadline_s: float = 30.0) -> None:
    give_up = time.monotonic() + deadline_s
    while upstream_id not in await chosen_ids(balancer, times=20):
        assert time.monotonic() < give_up, f"{upstream_id} never came back"
        await asyncio.sleep(0.05)


async def test_choice_spreads_across_every_endpoint(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer()
    assert await chosen_ids(balancer) == set(ids_of(balancer))


async def test_the_chosen_endpoint_carries_what_the_relay_needs(
    make_balancer: MakeBalancer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_VLLM_KEY", "secret-1")
    endpoint = {"url": "http://10.0.0.5:8000/v1", "model": "Qwen/Qwen3-14B", "api_key_env": "TEST_VLLM_KEY"}
    balancer = make_balancer(
        [{"name": "qwen", "context_length": 40960, "endpoints": [{**endpoint, "max_concurrency": 8}]}]
    )
    upstream = await balancer.choose("qwen")
    assert upstream == Upstream(
        id="qwen@10.0.0.5_8000/v1",
        pool="qwen",
        base_url="http://10.0.0.5:8000/v1",
        model="Qwen/Qwen3-14B",
        api_key="secret-1",
        max_concurrency=8,
        context_length=40960,
    )


async def test_an_alias_chooses_from_its_pool(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer([pool("qwen", [9001, 9002], aliases=["qwen3"])])
    assert await chosen_ids(balancer, "qwen3") == set(ids_of(balancer))


async def test_an_unknown_pool_has_no_endpoint(make_balancer: MakeBalancer) -> None:
    assert await make_balancer().choose("no-such-pool") is None


async def test_excluded_endpoints_are_not_chosen(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer()
    first, *others = ids_of(balancer)
    for _ in range(30):
        upstream = await balancer.choose("qwen", exclude=frozenset(others))
        assert upstream is not None and upstream.id == first


async def test_excluding_every_endpoint_leaves_none(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer()
    assert await balancer.choose("qwen", exclude=frozenset(ids_of(balancer))) is None


async def test_an_endpoint_failing_past_allowed_fails_is_not_chosen(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(allowed_fails=2, cooldown_seconds=60)
    failing = balancer.upstreams("qwen")[0]
    for _ in range(3):
        balancer.failed(failing, status=503, error="server busy")
    assert failing.id not in await chosen_ids(balancer)


async def test_failures_within_allowed_fails_keep_an_endpoint_in_use(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(allowed_fails=2, cooldown_seconds=60)
    failing = balancer.upstreams("qwen")[0]
    for _ in range(2):
        balancer.failed(failing, status=500, error="engine error")
    assert failing.id in await chosen_ids(balancer)


async def test_a_refused_connection_cools_an_endpoint_down(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(allowed_fails=0, cooldown_seconds=60)
    dead = balancer.upstreams("qwen")[0]
    balancer.failed(dead, status=None, error="APIConnectionError: Connection refused")
    assert dead.id not in await chosen_ids(balancer)


async def test_a_bad_request_never_cools_an_endpoint_down(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(allowed_fails=0, cooldown_seconds=60)
    upstream = balancer.upstreams("qwen")[0]
    for _ in range(5):
        balancer.failed(upstream, status=400, error="This model's maximum context length is 32768 tokens")
    assert upstream.id in await chosen_ids(balancer)


async def test_a_cooled_down_endpoint_is_chosen_again_after_the_cooldown(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(allowed_fails=0, cooldown_seconds=1)
    upstream = balancer.upstreams("qwen")[0]
    balancer.failed(upstream, status=502, error="bad gateway")
    assert upstream.id not in await chosen_ids(balancer, times=20)
    await wait_until_chosen(balancer, upstream.id)


async def test_no_endpoint_is_chosen_while_all_cool_down(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(allowed_fails=0, cooldown_seconds=60)
    for upstream in balancer.upstreams("qwen"):
        balancer.failed(upstream, status=503, error="server busy")
    assert await balancer.choose("qwen") is None


async def test_a_success_between_failures_keeps_an_endpoint_in_use(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(allowed_fails=2, cooldown_seconds=60)
    flaky = balancer.upstreams("qwen")[0]
    for _ in range(4):  # failures, but never more than two in a row
        balancer.failed(flaky, status=500, error="engine error")
        balancer.failed(flaky, status=503, error="server busy")
        balancer.succeeded(flaky, latency_s=0.1)
    assert flaky.id in await chosen_ids(balancer)


async def test_a_refusal_of_the_request_never_counts_against_an_endpoint(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(allowed_fails=0, cooldown_seconds=60)
    upstream = balancer.upstreams("qwen")[0]
    for _ in range(5):
        balancer.rejected(upstream)
    assert upstream.id in await chosen_ids(balancer)


@pytest.mark.parametrize("strategy", ["simple-shuffle", "least-busy"])
async def test_ignoring_cooldowns_chooses_among_cooling_endpoints(
    make_balancer: MakeBalancer, strategy: str
) -> None:
    balancer = make_balancer(allowed_fails=0, cooldown_seconds=60, strategy=strategy)
    first, *others = balancer.upstreams("qwen")
    for upstream in (first, *others):
        balancer.failed(upstream, status=503, error="server busy")
    assert await balancer.choose("qwen") is None
    others_ids = frozenset(u.id for u in others)
    chosen = await balancer.choose("qwen", exclude=others_ids, ignore_cooldowns=True)
    assert chosen == first
    assert await balancer.choose("qwen", exclude=others_ids | {first.id}, ignore_cooldowns=True) is None


async def test_zero_cooldown_keeps_failing_endpoints_in_use(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(allowed_fails=0, cooldown_seconds=0)
    upstream = balancer.upstreams("qwen")[0]
    for _ in range(5):
        balancer.failed(upstream, status=503, error="server busy")
    assert upstream.id in await chosen_ids(balancer)


async def test_success_reports_keep_an_endpoint_in_use(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer()
    upstream = balancer.upstreams("qwen")[0]
    for _ in range(20):
        balancer.succeeded(upstream, latency_s=0.1)
    assert upstream.id in await chosen_ids(balancer)


def test_fallbacks_are_the_configured_pools_in_order(make_balancer: MakeBalancer) -> None:
    pools = [pool("qwen", [9001], fallbacks=["big", "small"]), pool("big", [9002]), pool("small", [9003])]
    assert make_balancer(pools).fallbacks("qwen") == ["big", "small"]


def test_a_pool_without_fallbacks_has_none(make_balancer: MakeBalancer) -> None:
    pools = [pool("qwen", [9001], fallbacks=["big"]), pool("big", [9002])]
    assert make_balancer(pools).fallbacks("big") == []


def test_upstreams_are_every_endpoint_of_the_pool(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer([pool("qwen", [9001, 9002]), pool("big", [9003])])
    assert [u.base_url for u in balancer.upstreams("qwen")] == [
        "http://127.0.0.1:9001/v1",
        "http://127.0.0.1:9002/v1",
    ]


def test_endpoint_ids_are_the_same_in_every_replica(make_balancer: MakeBalancer) -> None:
    assert ids_of(make_balancer()) == ids_of(make_balancer())


def test_two_endpoints_on_one_url_get_distinct_ids(make_balancer: MakeBalancer) -> None:
    endpoints = [{"url": "http://127.0.0.1:9001/v1", "model": name} for name in ("base", "lora-a")]
    balancer = make_balancer([{"name": "qwen", "endpoints": endpoints}])
    assert len(set(ids_of(balancer))) == 2


def test_litellm_logs_only_through_the_gateways_pipeline() -> None:
    import logging

    import gateway.pool.litellm_balancer  # noqa: F401  (importing it adopts litellm's loggers)

    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logger = logging.getLogger(name)
        assert logger.handlers == [] and logger.propagate, name
