"""The serving suite and its report, on a tiny scale: every target and case yields figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report, serving
from bench.procs import LISTENING, Processes, spawn, wait_for_log
from bench.run_all import _GRPC_LISTENING
from bench.servers import litellm_missing, start_litellm
from tests.bench.conftest import Stack

TINY = serving.Sizes(
    duration=0.15, warmup_s=0.05, burst_tokens=32, paced_tokens=4, paced_streams=2, paced_rate=200
)
CASES = {k: c for k, c in serving.cases(TINY).items() if k in ("ns1", "st64", "burst", "paced")}


def check_figures(results: dict[str, Any], target: str, cases: list[str]) -> None:
    for case in cases:
        (run,) = results["runs"][target][case]
        assert run["requests"] > 0, (target, case)
        assert run["errors"] == 0, (target, case, run["statuses"])
        assert run["server_cpu_us_per_req"] is not None
        if CASES[case].stream:
            assert run["ttft_s_p50"] is not None, (target, case)


def test_every_face_yields_its_figures_and_the_report_shows_them(stack: Stack, tmp_path: Path) -> None:
    with Processes().scope() as procs:
        null = procs.add(spawn("null", [sys.executable, "-m", "bench.grpc_load", "serve"], tmp_path))
        null.grpc = wait_for_log(null, _GRPC_LISTENING, 30).group(1)
        upstreams = [f"--upstream={name}={url}" for name, url in stack.pools().items()]
        relay = procs.add(spawn("relay", [sys.executable, "-m", "bench.null_proxy", *upstreams], tmp_path))
        relay.url = wait_for_log(relay, LISTENING, 30).group(1)
        targets = [
            serving.direct_target(stack.sims),
            serving.relay_floor_target(relay),
            serving.gateway_target(stack.gateway),
            serving.grpc_target(stack.gateway),
            serving.grpc_null_target(null),
            serving.ollama_target(stack.sims["ollama"]),
            *serving.edge_targets(stack.edge),
        ]
        results = serving.run_serving(targets, CASES, stack.sims, 1, None, log=lambda _: None)
    for target in ("direct", "relay", "gateway"):
        check_figures(results, target, ["ns1", "st64", "burst", "paced"])
    check_figures(results, "grpc", ["st64", "burst", "paced"])
    check_figures(results, "grpc_null", ["st64"])
    for target in ("ollama", "edge_openai", "edge_ollama"):
        check_figures(results, target, ["ns1"])

    out, readme = tmp_path / "benchmarks.md", tmp_path / "README.md"
    readme.write_text("# Project\n")
    report.write({"meta": {"repeats": 1}, "serving": results}, out, readme)
    text = out.read_text()
    assert "gateway HTTP, non-stream, added p50 latency, c=1" in text
    assert "edge agent, Ollama face" in text
    assert "### Is the load generator the bottleneck?" in text
    assert report.BEGIN in readme.read_text() and report.END in readme.read_text()


@pytest.mark.skipif(bool(litellm_missing()), reason="LiteLLM Proxy is not installed: `uv sync --group bench`")
def test_litellm_proxy_baseline_runs(stack: Stack) -> None:
    with Processes().scope() as procs:
        proxy = start_litellm(procs, stack.logs, "litellm-smoke", stack.pools())
        case = CASES["ns1"]
        run = serving.measure(serving.litellm_target(proxy), case, stack.sims["fast"], None)
    assert run["requests"] > 0
    assert run["errors"] == 0
    assert run["server_cpu_us_per_req"] is not None
