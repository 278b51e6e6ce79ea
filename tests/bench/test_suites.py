"""The stand-alone benchmarks the runner includes, and the runner itself, on a tiny scale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import profile, report
from tests.bench.conftest import bench_module


def test_decision_reports_every_row_as_json() -> None:
    rows = json.loads(bench_module("bench.bench_decision", "--iterations", "20", "--repeats", "1", "--json"))
    keys = {r["key"] for r in rows}
    assert {"chat_500_thinking_gateway", "chat_100k_thinking_gateway"} <= keys
    assert all(len(r["median_us"]) == 1 for r in rows)


def test_balancer_prints_a_row_per_strategy() -> None:
    out = bench_module("bench.bench_balancer", "--iterations", "5", "--rounds", "1")
    for strategy in ("simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing-v2"):
        assert f"| {strategy} |" in out


@pytest.mark.skipif(
    shutil.which("docker-registry") is None and not Path("/usr/bin/docker-registry").exists(),
    reason="docker-registry is not installed (Debian package docker-registry)",
)
def test_registry_pull_reports_throughput_updates_and_resume(tmp_path: Path) -> None:
    figures_path = tmp_path / "figures.json"
    out = bench_module("bench.registry_pull", "--size-mib", "4", "--runs", "1", "--json", str(figures_path))
    assert "### Pull throughput" in out
    figures = json.loads(figures_path.read_text())
    assert figures["throughput"]["tandem_s"] and figures["throughput"]["curl_s"]
    assert [u["kind"] for u in figures["updates"]] == ["template only", "one metadata key", "one tensor"]
    assert figures["resume"]["total"] > 0


def test_client_cost_measures_both_clients_side_by_side() -> None:
    out = json.loads(bench_module("bench.client_cost", "--quick", "--requests", "20", "--json"))
    assert out["machine"]["cores"] and out["machine"]["load_start"]
    keys = [c["key"] for c in out["cases"]]
    assert keys == [
        "nonstream_c1", "nonstream_c64", "paced25_c1", "paced50_c1", "paced25_c64", "paced50_c64", "burst_c64"
    ]  # fmt: skip
    for case in out["cases"]:
        assert set(case["clients"]) == {"aiohttp.ClientSession", "tandem Transport"}
        for figures in case["clients"].values():
            assert len(figures["cpu_us_per_call"]) == 1 and figures["cpu_us_per_call"][0] > 0
            assert figures["wall_us_per_call"][0] > 0
            # The warm-up opens one connection per task; the measured calls reuse them.
            assert figures["connections_warmup"] == [case["concurrency"]]
            assert figures["connections_measured"] == [0]
            if case["stream"]:
                assert figures["cpu_us_per_token"][0] > 0
    paced = next(c for c in out["cases"] if c["key"] == "paced25_c1")
    for figures in paced["clients"].values():  # the pacing held: 8 tokens at 25/s take >= 280 ms
        assert figures["ms_per_stream"][0] >= 280


def test_profile_summary_shares_samples_by_function_and_area() -> None:
    raw = "\n".join(
        [
            "main (gateway/x.py:1);handle (/v/site-packages/gateway/http_face.py:60);loads (orjson:0) 30",
            "main (gateway/x.py:1);run (/usr/lib/python3.11/asyncio/events.py:80) 10",
        ]
    )
    summary = profile.summarize(raw)
    assert summary["samples"] == 40
    assert summary["self"][0] == ("loads (orjson)", 75.0)
    assert dict(summary["areas"])["json (orjson/json)"] == 75.0
    assert dict(summary["inclusive_gateway"])["handle (gateway/http_face.py)"] == 75.0


def test_run_all_writes_the_report_and_the_readme_section(tmp_path: Path) -> None:
    results, out, readme = tmp_path / "latest.json", tmp_path / "benchmarks.md", tmp_path / "README.md"
    hop = "## Engine hop: EngineClient vs aiohttp's client, side by side\n\nRecorded.\n"
    out.write_text(f"# Benchmarks\n\n{hop}\n## Simulators\n\nHand-written.\n")
    readme.write_text("# Project\n")
    args = ["--quick", "--only", "decision", "--results", str(results)]
    args += ["--out", str(out), "--readme", str(readme)]
    headline = bench_module("bench.run_all", *args)
    assert "route decision" in headline
    assert "load average at start" in headline
    text = out.read_text()
    assert "## Headline" in text and "### Route decision" in text
    assert "## Simulators\n\nHand-written." in text  # kept
    assert hop in text
    bench_module("bench.run_all", "--report-only", *args)  # written again from the JSON
    assert readme.read_text().count(report.BEGIN) == 1
    assert readme.read_text().startswith("# Project\n")
