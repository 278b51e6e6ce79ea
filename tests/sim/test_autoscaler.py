"""The fleet's autoscaler follows KEDA (0 <-> 1) and the HPA (1 <-> N) for an AverageValue trigger."""

from __future__ import annotations

import pytest

from simulators.autoscaler import Autoscaler, ScalingPolicy


def scaler(**fields: float) -> Autoscaler:
    policy = {"target": 4.0, "max_replicas": 5, "cooldown_seconds": 180, "scale_down_window_seconds": 60}
    policy.update(fields)
    return Autoscaler(ScalingPolicy(**policy))  # type: ignore[arg-type]


def test_no_demand_at_zero_stays_at_zero() -> None:
    autoscaler = scaler()

    assert autoscaler.observe(0, 0).replicas == 0
    assert autoscaler.observe(30, 0).reason == "idle"


def test_demand_above_the_activation_threshold_scales_from_zero_to_the_formula() -> None:
    autoscaler = scaler()

    decision = autoscaler.observe(0, 9)

    assert (decision.replicas, decision.reason) == (3, "activated")  # ceil(9 / 4)


def test_demand_at_or_below_the_activation_threshold_does_not_activate() -> None:
    autoscaler = scaler(activation_threshold=2)

    assert autoscaler.observe(0, 2).replicas == 0
    assert autoscaler.observe(1, 2.5).replicas == 1


def test_a_little_demand_asks_for_one_replica() -> None:
    assert scaler().observe(0, 0.5).replicas == 1


def test_desired_replicas_are_the_ceiling_of_demand_over_the_target() -> None:
    autoscaler = scaler(tolerance=0)
    autoscaler.observe(0, 1)

    assert autoscaler.observe(1, 8).replicas == 2
    assert autoscaler.observe(2, 8.5).replicas == 3


def test_desired_replicas_are_clamped_to_max_replicas() -> None:
    autoscaler = scaler(max_replicas=5)

    assert autoscaler.observe(0, 1000).replicas == 5


def test_min_replicas_are_kept_without_demand() -> None:
    autoscaler = scaler(min_replicas=2)

    assert autoscaler.replicas == 2
    assert autoscaler.observe(0, 0).replicas == 2
    assert autoscaler.observe(10_000, 0).replicas == 2


def test_a_change_within_the_tolerance_keeps_the_count() -> None:
    autoscaler = scaler(tolerance=0.1)
    autoscaler.observe(0, 8)

    assert autoscaler.observe(1, 8.4).replicas == 2  # 8.4 / 8 = 1.05: within 10%
    assert autoscaler.observe(2, 9).replicas == 3  # 1.125: outside


def test_scale_down_waits_for_the_stabilization_window() -> None:
    autoscaler = scaler(scale_down_window_seconds=60)
    autoscaler.observe(0, 20)  # 5 replicas

    held = autoscaler.observe(30, 4)
    shrunk = autoscaler.observe(61, 4)

    assert (held.replicas, held.reason) == (5, "stabilizing")
    assert (shrunk.replicas, shrunk.reason) == (1, "scale-down")


def test_scale_down_goes_to_the_highest_recommendation_in_the_window() -> None:
    autoscaler = scaler(scale_down_window_seconds=60)
    autoscaler.observe(0, 20)  # 5
    autoscaler.observe(30, 12)  # recommends 3
    autoscaler.observe(50, 4)  # recommends 1

    assert autoscaler.observe(70, 4).replicas == 3  # the window (10..70) still holds the 3
    assert autoscaler.observe(95, 4).replicas == 1


def test_scale_up_is_immediate_even_inside_the_window() -> None:
    autoscaler = scaler()
    autoscaler.observe(0, 4)

    assert autoscaler.observe(1, 20).replicas == 5


def test_no_demand_shrinks_to_one_then_to_zero_after_the_cooldown() -> None:
    autoscaler = scaler(cooldown_seconds=180, scale_down_window_seconds=60)
    autoscaler.observe(0, 20)  # 5, last active at 0

    at_window = autoscaler.observe(61, 0)
    before_cooldown = autoscaler.observe(179, 0)
    at_cooldown = autoscaler.observe(180, 0)

    assert at_window.replicas == 1  # the HPA never goes below one
    assert before_cooldown.replicas == 1
    assert (at_cooldown.replicas, at_cooldown.reason) == (0, "cooldown")


def test_the_cooldown_counts_from_the_last_active_reading() -> None:
    autoscaler = scaler(cooldown_seconds=180)
    autoscaler.observe(0, 4)
    autoscaler.observe(100, 1)  # still active

    assert autoscaler.observe(200, 0).replicas == 1
    assert autoscaler.observe(280, 0).replicas == 0


def test_the_cooldown_is_not_applied_while_demand_stays_at_or_below_one_replicas_worth() -> None:
    autoscaler = scaler(cooldown_seconds=180)
    autoscaler.observe(0, 1)

    assert autoscaler.observe(1000, 1).replicas == 1


def test_demand_after_scaling_to_zero_activates_again() -> None:
    autoscaler = scaler(cooldown_seconds=10, scale_down_window_seconds=5)
    autoscaler.observe(0, 8)
    autoscaler.observe(10, 0)

    decision = autoscaler.observe(11, 5)

    assert (decision.replicas, decision.reason) == (2, "activated")


@pytest.mark.parametrize(
    "fields",
    [{"target": 0}, {"min_replicas": 3, "max_replicas": 2}, {"max_replicas": 0}, {"cooldown_seconds": -1}],
)
def test_a_bad_policy_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ScalingPolicy(**fields)  # type: ignore[arg-type]
