"""Smoke runs of the benchmarks: tiny, one repeat, checking that each runs and produces its
figures (never how fast: no test here asserts a time).

The servers the benchmarks measure are started once for the session, as the runner starts
them: the simulators, the gateway and the edge agent, each in its own process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.procs import ROOT, Proc, Processes
from bench.servers import start_edge, start_gateway, start_ollama_sim, start_vllm_sim


@dataclass
class Stack:
    procs: Processes
    logs: Path
    sims: dict[str, Proc]  # "fast", "burst", "paced", "hold", "ollama"
    gateway: Proc
    edge: Proc

    def pools(self) -> dict[str, str]:
        return {name: self.sims[name].url for name in ("fast", "burst", "paced", "hold")}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("bench-logs")
    procs = Processes()
    with procs.scope():
        sims = {
            "fast": start_vllm_sim(procs, logs, "vllm-fast", output_tokens=16),
            "burst": start_vllm_sim(procs, logs, "vllm-burst", output_tokens=32),
            "paced": start_vllm_sim(procs, logs, "vllm-paced", output_tokens=4, tokens_per_second=200),
            "hold": start_vllm_sim(procs, logs, "vllm-hold", output_tokens=1000, tokens_per_second=1),
            "ollama": start_ollama_sim(procs, logs, "ollama", output_tokens=16),
        }
        pools = {name: sims[name].url for name in ("fast", "burst", "paced", "hold")}
        gateway = start_gateway(procs, logs, "gateway", pools)
        edge = start_edge(procs, logs, "edge", ollama_url=sims["ollama"].url, uplink=gateway.grpc)
        yield Stack(procs, logs, sims, gateway, edge)


def bench_module(*args: str, timeout: float = 100.0) -> str:
    """Runs `python -m bench.<args>` and returns its standard output (fails on a non-zero exit)."""
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
