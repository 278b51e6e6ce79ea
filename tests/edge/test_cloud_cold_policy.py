"""`policy.cloud_cold`: what the edge does with work bound for a cloud pool the last heartbeat
reply called cold (pure plans, and how the edge keeps and ages those replies)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from edge_agent.config import Policy
from edge_agent.policy import Action, plan
from edge_agent.service import EdgeService
from tandem.chat import Mode, Target
from tandem.v1 import gateway_pb2 as pb
from tests.edge.conftest import CLOUD, LOCAL, edge_config
from tests.edge.test_policy import request, situation

DEGRADE = Policy(cloud_cold="degrade")


def test_degrade_runs_thinking_work_for_a_cold_pool_here_with_thinking_on() -> None:
    p = plan(request(Mode.THINKING), situation(cloud_cold=True), DEGRADE)
    assert p.action is Action.LOCAL and p.thinking
    d = p.decision
    assert (d.target, d.mode, d.reason) == (Target.EDGE, Mode.THINKING, "cloud_cold")


def test_wait_forwards_work_for_a_cold_pool() -> None:
    p = plan(request(Mode.THINKING), situation(cloud_cold=True), Policy(cloud_cold="wait"))
    assert p.action is Action.FORWARD and p.decision.reason == "explicit"


def test_wait_is_the_default() -> None:
    assert Policy().cloud_cold == "wait"


def test_degrade_forwards_while_the_pool_is_not_cold() -> None:
    p = plan(request(Mode.THINKING), situation(cloud_cold=False), DEGRADE)
    assert p.action is Action.FORWARD


def test_work_for_a_model_not_on_this_box_is_forwarded_to_a_cold_pool() -> None:
    p = plan(request(Mode.THINKING, model="qwen3-32b"), situation(cloud_cold=True), DEGRADE)
    assert p.action is Action.FORWARD and p.decision.target is Target.CLOUD


def test_work_too_long_for_the_local_context_is_forwarded_to_a_cold_pool() -> None:
    long = request(Mode.NON_THINKING, max_tokens=8000)
    p = plan(long, situation(cloud_cold=True), DEGRADE)
    assert p.action is Action.FORWARD and p.decision.reason == "context_length"


def test_work_is_forwarded_to_a_cold_pool_while_the_local_ollama_is_down() -> None:
    p = plan(request(Mode.THINKING), situation(cloud_cold=True, local_up=False), DEGRADE)
    assert p.action is Action.FORWARD


def test_a_model_that_cannot_think_answers_without_thinking() -> None:
    p = plan(request(Mode.THINKING, model="llama3.2:3b"), situation(cloud_cold=True), DEGRADE)
    assert p.action is Action.LOCAL and not p.thinking and p.decision.mode is Mode.NON_THINKING


def reply(readiness: int, interval_seconds: int = 0) -> pb.HeartbeatResponse:
    pool = pb.PoolState(name=CLOUD, aliases=["qwen3"], readiness=readiness)  # type: ignore[arg-type]
    return pb.HeartbeatResponse(interval_seconds=interval_seconds, pools=[pool])


@pytest.fixture
async def make_service() -> AsyncIterator[Callable[..., EdgeService]]:
    """An edge service that is never started (nothing listens at its addresses); closed after."""
    made: list[EdgeService] = []

    def make(**overrides: Any) -> EdgeService:
        made.append(EdgeService(edge_config("http://127.0.0.1:9", "127.0.0.1:9", **overrides)))
        return made[-1]

    yield make
    for service in made:
        await service.close()


async def test_the_edge_keeps_the_last_replys_pool_states_by_the_forwarded_name(
    make_service: Callable[..., EdgeService],
) -> None:
    service = make_service()
    assert not service.cloud_cold(LOCAL)  # no reply yet: unknown, so forward
    service.heard(reply(pb.POOL_READINESS_COLD))
    assert service.cloud_cold(LOCAL)  # forwarded as CLOUD (uplink.models)
    assert service.cloud_cold("qwen3")  # an alias of the pool
    service.heard(reply(pb.POOL_READINESS_WARM))
    assert not service.cloud_cold(LOCAL)


async def test_a_reply_older_than_three_heartbeat_intervals_is_not_trusted(
    make_service: Callable[..., EdgeService],
) -> None:
    service = make_service(heartbeat_seconds=0.05)
    service.heard(reply(pb.POOL_READINESS_COLD))  # no interval in the reply: the edge's 0.05 s
    assert service.cloud_cold(LOCAL)
    await asyncio.sleep(0.2)
    assert service.pool_state(LOCAL) is None and not service.cloud_cold(LOCAL)
