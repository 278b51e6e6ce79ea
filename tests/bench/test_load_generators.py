"""The load generators, each against something that answers: they run and report figures."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from bench.procs import Processes, spawn, wait_for_log
from bench.servers import GATEWAY_KEY
from tests.bench.conftest import Stack, bench_module


def test_loadgen_reports_latency_and_time_to_first_token_of_a_stream(stack: Stack) -> None:
    body = {"model": "Qwen/Qwen3-14B", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    out = bench_module(
        "bench.loadgen",
        f"{stack.sims['fast'].url}/v1/chat/completions",
        "--body",
        json.dumps(body),
        "-c", "2", "-n", "10", "--stream", "--ttft-regex", '"content":"[^"]',
    )  # fmt: skip
    summary = json.loads(out)
    assert summary["requests"] == 10
    assert summary["errors"] == 0
    assert summary["ttft_ms_p50"] is not None
    assert summary["latency_ms_p50"] > 0


def test_grpc_load_drives_the_gateway_chat(stack: Stack) -> None:
    out = bench_module(
        "bench.grpc_load", "run", stack.gateway.grpc, "--model", "fast", "--api-key", GATEWAY_KEY, "-c", "2",
        "-n", "6",
    )  # fmt: skip
    summary = json.loads(out)
    assert summary["requests"] == 6
    assert summary["errors"] == 0
    assert summary["ttft_ms_p50"] is not None


def test_grpc_load_shows_its_own_rate_against_the_do_nothing_server(tmp_path: Path) -> None:
    with Processes().scope() as procs:
        args = [sys.executable, "-m", "bench.grpc_load", "serve", "--port", "0"]
        null = procs.add(spawn("null", args, tmp_path))
        address = wait_for_log(null, re.compile(r"listening on grpc://(\S+)"), 30).group(1)
        summary = json.loads(bench_module("bench.grpc_load", "run", address, "-c", "4", "-n", "20"))
    assert summary["requests"] == 20
    assert summary["errors"] == 0


def test_sim_throughput_prints_its_table() -> None:
    out = bench_module("bench.sim_throughput", "--duration", "0.2", "--runs", "1", "--engine", "vllm")
    assert "| vllm | non-stream, 16 tokens | 1 |" in out
    assert "| vllm | stream, 16 tokens | 64 |" in out
