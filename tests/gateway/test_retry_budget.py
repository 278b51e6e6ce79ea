"""RetryBudget: retries allowed while they stay under a share of recent requests."""

from __future__ import annotations

from gateway.retry_budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def budget(clock: Clock, *, ratio: float = 0.5, min_retries: int = 0) -> RetryBudget:
    return RetryBudget(ratio=ratio, min_retries=min_retries, window_s=10.0, clock=clock)


def retries_allowed(b: RetryBudget, tries: int = 1000) -> int:
    return sum(b.try_retry() for _ in range(tries))


def test_retries_are_allowed_up_to_the_share_of_requests() -> None:
    b = budget(Clock())
    for _ in range(100):
        b.request()
    assert retries_allowed(b) == 50


def test_a_quiet_gateway_may_still_retry_min_retries_per_window() -> None:
    b = budget(Clock(), min_retries=3)
    b.request()
    assert retries_allowed(b) == 3


def test_a_zero_budget_allows_no_retry() -> None:
    b = budget(Clock(), ratio=0.0)
    for _ in range(100):
        b.request()
    assert retries_allowed(b) == 0


def test_the_previous_window_counts_for_the_part_the_sliding_window_still_covers() -> None:
    clock = Clock()
    b = budget(clock)
    for _ in range(100):
        b.request()
    clock.now += 15.0  # half of the previous window is still covered: 50 requests, 25 retries
    assert retries_allowed(b) == 25


def test_spent_budget_returns_once_the_window_has_passed() -> None:
    clock = Clock()
    b = budget(clock)
    for _ in range(10):
        b.request()
    assert retries_allowed(b) == 5
    clock.now += 25.0
    for _ in range(10):
        b.request()
    assert retries_allowed(b) == 5
