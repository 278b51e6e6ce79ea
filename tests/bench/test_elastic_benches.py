"""bench.pool_strategies and bench.elastic_fleet on a tiny scale: they run and report their
figures (no figure is asserted beyond what must hold at any speed)."""

from __future__ import annotations

import json

from tests.bench.conftest import bench_module


def test_pool_strategies_reports_every_strategy() -> None:
    out = bench_module(
        "bench.pool_strategies",
        "--rate",
        "4",
        "--seconds",
        "1.5",
        "--repeats",
        "1",
        "--replicas",
        "1",
        "--json",
    )
    figures = json.loads(out.strip().splitlines()[-1])
    assert set(figures["medians"]) == {"simple-shuffle x1", "least-busy x1", "least-loaded x1"}
    for row in figures["medians"].values():
        assert row["failed"] == 0 and row["ttft_p95_s"] >= row["ttft_p50_s"] >= 0


def test_a_burst_at_zero_replicas_is_answered_in_full() -> None:
    out = bench_module(
        "bench.elastic_fleet", "burst", "--requests", "12", "--cold-start", "0.5", "--cooldown", "1",
        "--scale-down-window", "0.3", "--drain", "0.2", "--json",
    )  # fmt: skip
    figures = json.loads(out.strip().splitlines()[-1])
    assert (figures["sent"], figures["answered"], figures["lost"]) == (12, 12, 0)
    assert figures["first_answer_s"] >= 0.5  # not before a replica finished its cold start
    assert figures["peak_replicas"] >= 1


def test_the_week_replay_compares_the_elastic_fleet_with_a_fixed_one() -> None:
    out = bench_module(
        "bench.elastic_fleet", "replay", "--day-seconds", "2.4", "--cold-start", "0.3", "--cooldown", "0.5",
        "--scale-down-window", "0.2", "--drain", "0.1", "--max-replicas", "2", "--documents", "10",
        "--output-tokens", "8", "--json",
    )  # fmt: skip
    figures = json.loads(out.strip().splitlines()[-1])
    for name in ("elastic", "fixed"):
        assert figures[name]["interactive_lost"] == 0
        assert figures[name]["batch_answered"] == 10
    assert figures["replica_seconds_ratio"] > 0
