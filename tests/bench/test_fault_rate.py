"""bench.fault_rate on a tiny scale: it runs and reports its figures (no rate is asserted)."""

from __future__ import annotations

import json

from tests.bench.conftest import bench_module


def test_fault_rate_reports_the_callers_errors_and_the_refused_requests() -> None:
    out = bench_module(
        "bench.fault_rate",
        "--requests",
        "20",
        "--concurrency",
        "4",
        "--rejected",
        "2",
        "--max-seconds",
        "60",
        "--json",
    )
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["requests"] == 20
    assert 0.0 <= figures["caller_error_rate"] <= 1.0
    assert figures["rejected_phase"]["endpoints_still_used"] <= figures["endpoints"]
