"""Faults are validated up front and drawn deterministically."""

from __future__ import annotations

import math

import pytest

from simulators.faults import FaultInjector, Faults
from simulators.ollama import parse_keep_alive


def test_faults_from_json_fields() -> None:
    faults = Faults.from_dict({"error_rate": 1, "error_status": 503, "disconnect_after": 3, "hang": False})

    assert faults == Faults(error_rate=1.0, error_status=503, disconnect_after=3)


@pytest.mark.parametrize(
    "fields",
    [{"error_rate": 2}, {"error_status": 200}, {"disconnect_after": -1}, {"hang": "yes"}, {"nope": 1}],
)
def test_invalid_faults_are_rejected_naming_the_field(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(fields))):
        Faults.from_dict(fields)


def test_error_draws_repeat_for_a_seed() -> None:
    def draws(seed: int) -> list[bool]:
        injector = FaultInjector(Faults(error_rate=0.3), seed)
        return [injector.should_fail() for _ in range(50)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


def test_setting_faults_restarts_the_draws() -> None:
    injector = FaultInjector(Faults(error_rate=0.5), 1)
    first = [injector.should_fail() for _ in range(20)]

    injector.set(Faults(error_rate=0.5))

    assert [injector.should_fail() for _ in range(20)] == first


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), (10, 10.0), ("0", 0.0), (0, 0.0),
     (-1, math.inf), ("-1m", math.inf)],
)  # fmt: skip
def test_keep_alive_is_read_as_ollama_reads_it(value: object, seconds: float) -> None:
    assert parse_keep_alive(value, 300.0) == seconds


@pytest.mark.parametrize("value", ["300", "soon", "5x", True])
def test_invalid_keep_alive_is_an_error(value: object) -> None:
    with pytest.raises(ValueError):
        parse_keep_alive(value, 300.0)
