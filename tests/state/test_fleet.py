"""The edge fleet: heartbeats that expire, and rollouts with a canary share, then rollback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.fleet import (
    MAX_EDGE_ID,
    MAX_GROUP,
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_STATUS_BYTES,
    MAX_VERSION,
    Desired,
    EdgeStatus,
    MemoryFleet,
    RolloutError,
    ServedModel,
    assignment,
    check_reference,
    check_status,
    in_canary,
    matches,
    plan_rollback,
    plan_rollout,
)
from gateway.state import RedisState
from gateway.state.fleet_redis import RedisFleet
from tandem.errors import BadRequest
from tests.state.conftest import RedisServer, make_state

V1 = "registry.local:5000/models/qwen3:v1"
V2 = "registry.local:5000/models/qwen3:v2"
V3 = "registry.local:5000/models/qwen3:v3"
DIGEST = "sha256:" + "ab" * 32

Fleet = MemoryFleet | RedisFleet


@pytest.fixture(params=["memory", "redis"])
async def fleet(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Fleet]:
    if request.param == "memory":
        yield MemoryFleet(ttl_s=0.5)
        return
    state = make_state(request.getfixturevalue("redis_server"), prefix)
    yield RedisFleet(state, ttl_s=0.5)
    await state.close()


def edge(edge_id: str, group: str = "line-a", *models: ServedModel) -> EdgeStatus:
    return EdgeStatus(edge_id=edge_id, group=group, models=list(models), in_flight=2, version="0.1.0")


async def test_a_heartbeat_is_listed_with_what_the_edge_reported(fleet: Fleet) -> None:
    await fleet.heartbeat(edge("e1", "line-a", ServedModel("qwen3", DIGEST, V1)))
    (seen,) = await fleet.edges()
    assert (seen.edge_id, seen.group, seen.in_flight, seen.models) == (
        "e1",
        "line-a",
        2,
        [ServedModel("qwen3", DIGEST, V1)],
    )
    assert seen.last_seen > 0


async def test_heartbeats_expire_after_the_ttl(fleet: Fleet) -> None:
    await fleet.heartbeat(edge("gone"))
    await asyncio.sleep(0.3)
    await fleet.heartbeat(edge("alive"))
    await asyncio.sleep(0.3)
    assert [e.edge_id for e in await fleet.edges()] == ["alive"]


async def test_redis_drops_an_expired_heartbeat_itself(redis_state: RedisState, prefix: str) -> None:
    fleet = RedisFleet(redis_state, ttl_s=0.2)
    await fleet.heartbeat(edge("e1"))
    assert await redis_state.client.exists(f"{prefix}{{fleet}}:edge:e1")
    await asyncio.sleep(0.3)
    assert not await redis_state.client.exists(f"{prefix}{{fleet}}:edge:e1")


async def test_the_heartbeat_answer_carries_the_groups_desired_version(fleet: Fleet) -> None:
    assert await fleet.heartbeat(edge("e1")) is None
    await fleet.rollout("line-a", V1)
    desired = await fleet.heartbeat(edge("e1"))
    assert desired is not None and desired.reference == V1
    assert await fleet.heartbeat(edge("e2", "line-b")) is None


async def test_a_canary_rollout_moves_its_share_of_the_group_then_rollback_moves_it_back(
    fleet: Fleet,
) -> None:
    await fleet.rollout("line-a", V1)
    await fleet.rollout("line-a", V2, canary_percent=25)
    ids = [f"edge-{i}" for i in range(400)]
    desired = await fleet.desired("line-a")
    refs = [assignment(i, "line-a", desired)[0] for i in ids]
    on_v2 = refs.count(V2)
    assert 60 <= on_v2 <= 140 and refs.count(V1) == 400 - on_v2  # about 25%, the rest stay on v1
    await fleet.rollout("line-a", V2, canary_percent=50)  # the canary grows: nobody leaves it
    grown = await fleet.desired("line-a")
    assert all(assignment(i, "line-a", grown)[0] == V2 for i, r in zip(ids, refs, strict=True) if r == V2)
    back = await fleet.rollback("line-a")
    assert (back.reference, back.canary_percent) == (V1, 100)
    assert {assignment(i, "line-a", back)[0] for i in ids} == {V1}


async def test_a_finished_rollout_can_be_rolled_back_once(fleet: Fleet) -> None:
    await fleet.rollout("line-a", V1)
    await fleet.rollout("line-a", V2)
    assert (await fleet.rollback("line-a")).reference == V1
    with pytest.raises(RolloutError, match="no earlier version"):
        await fleet.rollback("line-a")


async def test_rollback_without_a_rollout_says_so(fleet: Fleet) -> None:
    with pytest.raises(RolloutError, match="no rollout"):
        await fleet.rollback("line-z")


async def test_concurrent_rollouts_never_lose_the_version_to_roll_back_to(
    redis_state: RedisState, prefix: str, redis_server: RedisServer
) -> None:
    await RedisFleet(redis_state).rollout("line-a", V1)
    others = [make_state(redis_server, prefix) for _ in range(5)]
    await asyncio.gather(*(RedisFleet(s).rollout("line-a", V2) for s in others))
    desired = await RedisFleet(redis_state).desired("line-a")
    assert desired is not None and (desired.reference, desired.previous_reference) == (V2, V1)
    for s in others:
        await s.close()


def test_replacing_an_unfinished_canary_keeps_the_version_the_others_run() -> None:
    start = plan_rollout(None, V1)
    canary = plan_rollout(start, V2, canary_percent=10)
    replaced = plan_rollout(canary, V3, canary_percent=10)
    assert (replaced.reference, replaced.previous_reference) == (V3, V1)


def test_a_canary_share_is_stable_per_edge_and_grows_monotonically() -> None:
    for i in range(200):
        if in_canary(f"e{i}", "g", 10):
            assert in_canary(f"e{i}", "g", 50) and in_canary(f"e{i}", "g", 100)


def test_rollback_of_a_first_canary_has_nothing_to_return_to() -> None:
    with pytest.raises(RolloutError):
        plan_rollback("g", plan_rollout(None, V1, canary_percent=10))


@pytest.mark.parametrize(
    ("served", "assigned", "digest", "expected"),
    [
        (ServedModel("qwen3", reference=V2), V2, "", True),
        (ServedModel("qwen3", reference=f"{V2}@{DIGEST}"), V2, "", True),
        (ServedModel("qwen3", reference=V1), V2, "", False),
        (ServedModel("qwen3", digest=DIGEST), V2, DIGEST, True),
        (ServedModel("qwen3", digest="sha256:" + "cd" * 32), V2, DIGEST, False),
    ],
)
def test_an_edge_matches_its_assignment_by_reference_or_pinned_digest(
    served: ServedModel, assigned: str, digest: str, expected: bool
) -> None:
    assert matches(edge("e1", "g", served), assigned, digest) is expected


def test_nothing_assigned_is_neither_a_match_nor_a_mismatch() -> None:
    assert matches(edge("e1"), "", "") is None


@pytest.mark.parametrize(
    "bad", ["qwen3", "models/qwen3:v1", "registry.local:5000/Models/Q:v1", "r.io/m:v1@sha256:12"]
)
def test_a_rollout_refuses_what_is_not_a_model_reference(bad: str) -> None:
    with pytest.raises(RolloutError):
        check_reference(bad)


def test_a_reference_pinned_by_digest_sets_the_rollouts_digest() -> None:
    assert check_reference(f"{V2}@{DIGEST}") == (f"{V2}@{DIGEST}", DIGEST)


def test_a_digest_given_apart_pins_the_reference_the_edges_get() -> None:
    assert check_reference(V2, DIGEST) == (f"{V2}@{DIGEST}", DIGEST)
    with pytest.raises(RolloutError, match="pins"):
        check_reference(f"{V2}@{DIGEST}", "sha256:" + "cd" * 32)


def test_desired_versions_survive_their_json_form() -> None:
    d = Desired(V2, DIGEST, 30, V1, "", updated_at=1.5)
    assert Desired.from_json(d.to_json()) == d


# --- bounds --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "status"),
    [
        ("edge_id", EdgeStatus("", "line-a")),
        ("edge_id", EdgeStatus("e" * 257, "line-a")),
        ("group", EdgeStatus("e1", "g" * 129)),
        ("version", EdgeStatus("e1", "line-a", version="v" * 65)),
        ("models", EdgeStatus("e1", "line-a", models=[ServedModel(f"m{i}") for i in range(257)])),
        ("models", EdgeStatus("e1", "line-a", models=[ServedModel("qwen3", "d" * 513)])),
        ("labels", EdgeStatus("e1", "line-a", labels={f"k{i}": "" for i in range(33)})),
        ("labels", EdgeStatus("e1", "line-a", labels={"": "v"})),
        ("labels", EdgeStatus("e1", "line-a", labels={"k": "v" * 257})),
    ],
)
async def test_a_status_over_a_cap_is_refused_naming_the_field_and_not_stored(
    fleet: Fleet, field: str, status: EdgeStatus
) -> None:
    with pytest.raises(BadRequest, match=rf"^heartbeat {field}:") as refused:
        await fleet.heartbeat(status)
    assert refused.value.param == field and await fleet.edges() == []


async def test_the_stored_record_is_bounded_even_when_each_field_is_within_its_cap() -> None:
    biggest = EdgeStatus(
        "e" * MAX_EDGE_ID,
        "g" * MAX_GROUP,
        models=[ServedModel("n" * 100, "sha256:" + "a" * 64, "r" * 200) for _ in range(100)],
        version="v" * MAX_VERSION,
        labels={f"{i:0{MAX_LABEL_KEY}d}": "x" * MAX_LABEL_VALUE for i in range(MAX_LABELS)},
    )
    assert len(check_status(biggest)) <= MAX_STATUS_BYTES
    biggest.models *= 2
    with pytest.raises(BadRequest, match=r"^heartbeat status:"):
        check_status(biggest)


async def test_redis_stores_nothing_for_a_refused_status(redis_state: RedisState, prefix: str) -> None:
    fleet = RedisFleet(redis_state)
    with pytest.raises(BadRequest):
        await fleet.heartbeat(EdgeStatus("e1", "line-a", labels={f"k{i}": "x" * 200 for i in range(1000)}))
    assert [n async for n in redis_state.client.scan_iter(match=f"{prefix}*")] == []
