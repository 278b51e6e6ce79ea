"""The uplink's circuit breaker as a state machine, and its active probe."""

from __future__ import annotations

import asyncio

from edge_agent.breaker import CircuitBreaker, State


def breaker(failures_to_open: int = 3) -> CircuitBreaker:
    return CircuitBreaker(failures_to_open=failures_to_open, probe_failures_to_open=1, successes_to_close=2)


def test_starts_closed_and_allows_requests() -> None:
    b = breaker()
    assert b.state is State.CLOSED and b.allows


def test_opens_after_enough_consecutive_request_failures() -> None:
    b = breaker()
    for _ in range(2):
        b.request_failed("reset")
    assert b.state is State.CLOSED
    b.request_failed("reset")
    assert b.state is State.OPEN and not b.allows


def test_a_success_resets_the_failure_count() -> None:
    b = breaker()
    b.request_failed("reset")
    b.request_failed("reset")
    b.succeeded()
    b.request_failed("reset")
    assert b.state is State.CLOSED


def test_one_failed_probe_opens_it() -> None:
    b = breaker()
    b.probe_failed("no answer within 1s")
    assert b.state is State.OPEN and b.last_error == "no answer within 1s"


def test_a_success_after_opening_half_opens_and_allows_requests() -> None:
    b = breaker()
    b.probe_failed("cut")
    b.succeeded()
    assert b.state is State.HALF_OPEN and b.allows


def test_enough_successes_close_it() -> None:
    b = breaker()
    b.probe_failed("cut")
    b.succeeded()
    b.succeeded()
    assert b.state is State.CLOSED


def test_any_failure_while_half_open_opens_it_again() -> None:
    b = breaker(failures_to_open=5)
    b.probe_failed("cut")
    b.succeeded()
    b.request_failed("reset")
    assert b.state is State.OPEN


def test_every_change_is_reported() -> None:
    seen: list[State] = []
    b = CircuitBreaker(
        failures_to_open=1, probe_failures_to_open=1, successes_to_close=1, on_change=seen.append
    )
    b.request_failed("reset")
    b.succeeded()
    assert seen == [State.OPEN, State.HALF_OPEN, State.CLOSED]


async def test_a_probe_that_overruns_its_deadline_opens_it() -> None:
    b = breaker()

    async def silent() -> None:
        await asyncio.Event().wait()  # a blackholed link: no answer, no error

    watch = asyncio.create_task(b.watch(silent, interval=0.01, deadline=0.01))
    assert await b.changed() is State.OPEN
    assert "no answer" in b.last_error
    watch.cancel()


async def test_probes_that_answer_again_close_it() -> None:
    b = breaker()
    b.probe_failed("cut")

    async def answers() -> None:
        return None

    watch = asyncio.create_task(b.watch(answers, interval=0.01, deadline=1))
    while b.state is not State.CLOSED:
        await b.changed()
    watch.cancel()
