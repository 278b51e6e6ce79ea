"""Start-up and memory: how long each server takes from spawn to ready, how much it holds at
rest, and how much more the gateway holds with many streams open.

Per repeat, each server is started fresh:

- `python -c "import litellm"` (offline cost map), the gateway's start-up baseline;
- the gateway (`tandem gateway serve`) to `/readyz` 200; resident memory after `rest_s` idle
  seconds; then `hold` streams opened through its HTTP face to a simulator that sends one token
  a second, resident memory once every stream has its first token;
- the edge agent (`tandem edge serve`) to `/readyz` ready; resident memory at rest;
- LiteLLM Proxy (when installed) to `/health/readiness`; resident memory at rest.

Resident memory is VmRSS from /proc/PID/status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.load_run import Job
from bench.procs import ROOT, Proc, Processes, pin_to
from bench.servers import LITELLM_ENV, litellm_missing, start_edge, start_gateway, start_litellm
from bench.serving import GATEWAY_AUTH, MESSAGES, TOKEN_REGEX


def import_litellm_s(cpus: frozenset[int] | None = None) -> float:
    """Seconds for `python -c "import litellm"` with the offline cost map (a fresh process)."""
    env = {**os.environ, **LITELLM_ENV}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import litellm"],
        check=True,
        env=env,
        capture_output=True,
        preexec_fn=pin_to(cpus),
    )
    return time.perf_counter() - started


def hold_streams(
    url: str, pool: str, count: int, server: Proc, cpus: frozenset[int] | None, timeout: float = 120.0
) -> dict[str, Any]:
    """Opens `count` streams through `url` and reads the server's memory while all are open."""
    job = Job(
        kind="hold",
        target=url,
        body={"model": pool, "messages": MESSAGES, "stream": True},
        headers=GATEWAY_AUTH,
        concurrency=count,
        ttft_regex=TOKEN_REGEX,
        timeout=timeout,
    )
    before = server.rss()
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.load_run", job.to_json()],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pin_to(cpus),
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        state = json.loads(child.stdout.readline() or "{}")
        time.sleep(1.0)  # let the streams settle (buffers filled, first tokens relayed)
        holding = server.rss()
        child.stdin.write("release\n")
        child.stdin.flush()
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return {
        "streams": count,
        "held": state.get("holding", 0),
        "failed": state.get("failed", count),
        "open_s": state.get("open_s"),
        "rss_before": before,
        "rss_holding": holding,
    }


def run_lifecycle(
    procs: Processes,
    logs: Path,
    *,
    gateway_pools: dict[str, str],
    hold_pool: str,
    ollama_url: str,
    with_litellm: bool,
    repeats: int,
    hold: int,
    rest_s: float,
    server_cpus: frozenset[int] | None,
    other_cpus: frozenset[int] | None,
    log: Callable[[str], None] = print,
) -> dict[str, list[dict[str, Any]]]:
    """Start-up and memory figures, one dict per repeat and server."""
    out: dict[str, list[dict[str, Any]]] = {"import_litellm": [], "gateway": [], "edge": [], "litellm": []}
    for r in range(repeats):
        out["import_litellm"].append({"seconds": import_litellm_s(server_cpus)})
        log(f"  [{r + 1}/{repeats}] import litellm {out['import_litellm'][-1]['seconds']:.2f}s")

        gateway = start_gateway(procs, logs, f"gateway-life-{r}", gateway_pools, cpus=server_cpus)
        time.sleep(rest_s)
        figures: dict[str, Any] = {"ready_s": float(gateway.extra["ready_s"]), "rss_idle": gateway.rss()}
        figures["hold"] = hold_streams(
            f"{gateway.url}/v1/chat/completions", hold_pool, hold, gateway, other_cpus
        )
        figures["exit_code"] = procs.stop(gateway)
        out["gateway"].append(figures)
        log(
            f"  [{r + 1}/{repeats}] gateway ready {figures['ready_s']:.2f}s idle "
            f"{_mib(figures['rss_idle'])} MiB, {figures['hold']['held']} streams "
            f"{_mib(figures['hold']['rss_holding'])} MiB"
        )

        edge = start_edge(procs, logs, f"edge-life-{r}", ollama_url=ollama_url, uplink=None, cpus=server_cpus)
        time.sleep(rest_s)
        out["edge"].append({"ready_s": float(edge.extra["ready_s"]), "rss_idle": edge.rss()})
        out["edge"][-1]["exit_code"] = procs.stop(edge)
        log(
            f"  [{r + 1}/{repeats}] edge ready {out['edge'][-1]['ready_s']:.2f}s idle "
            f"{_mib(out['edge'][-1]['rss_idle'])} MiB"
        )

        if with_litellm and not litellm_missing():  # another `uv sync` may have removed it meanwhile
            proxy = start_litellm(procs, logs, f"litellm-life-{r}", gateway_pools, cpus=server_cpus)
            time.sleep(rest_s)
            out["litellm"].append({"ready_s": float(proxy.extra["ready_s"]), "rss_idle": proxy.rss()})
            procs.stop(proxy)
            log(
                f"  [{r + 1}/{repeats}] litellm proxy ready {out['litellm'][-1]['ready_s']:.2f}s idle "
                f"{_mib(out['litellm'][-1]['rss_idle'])} MiB"
            )
    return out


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"
