"""Start-up and memory benchmarks, tiny: they run and produce their figures."""

from __future__ import annotations

from bench.lifecycle import hold_streams
from tests.bench.conftest import Stack, bench_module


def test_streams_held_open_through_the_gateway_are_counted_with_its_memory(stack: Stack) -> None:
    url = f"{stack.gateway.url}/v1/chat/completions"
    held = hold_streams(url, "hold", 5, stack.gateway, None, timeout=30)
    assert held["held"] == 5
    assert held["failed"] == 0
    assert held["rss_before"] and held["rss_holding"]


def test_gateway_startup_prints_import_and_ready_times() -> None:
    out = bench_module("bench.gateway_startup", "--repeats", "1", timeout=110)
    assert "`python -c 'import litellm'`" in out
    assert "`tandem gateway serve` to `/readyz` 200" in out
