"""The serving figures: latency, throughput, time to first token and CPU per request and per
streamed token, for every face of Tandem against its baselines, all in one run.

Targets (each one process; its CPU is read from /proc around every measured phase):

| target | what is called |
|---|---|
| `direct` | the vLLM simulator itself (the baseline of every gateway figure) |
| `relay` | a do-nothing aiohttp relay in front of the same simulators: the floor under any gateway |
| `gateway` | the gateway's OpenAI HTTP face, `tandem gateway serve` |
| `litellm` | LiteLLM Proxy, one worker, same simulators, callbacks off (when installed) |
| `grpc` | the gateway's gRPC `Chat` |
| `grpc_null` | a do-nothing gRPC server: the gRPC load generator's own rate |
| `ollama` | the Ollama simulator itself (the baseline of the edge figures) |
| `edge_openai`, `edge_ollama` | the edge agent's two faces, serving locally |

Cases: non-streamed and streamed 16-token answers at concurrency 1 and 64, 256-token streams
in bursts (zero token delay) and at a decode pace (50 tokens/s per stream, 64 streams). Within
a repeat every case runs against every target back to back, so each ratio compares figures
taken under the same machine load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.load_run import Job
from bench.procs import ROOT, Proc, pin_to
from bench.servers import GATEWAY_KEY, LITELLM_KEY

GATEWAY_AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
LITELLM_AUTH = {"Authorization": f"Bearer {LITELLM_KEY}"}

PROMPT = "Say hello to the line-3 team."  # the classifier keeps this non-thinking
MESSAGES = [{"role": "user", "content": PROMPT}]
TOKEN_REGEX = r'"content":"[^"]'  # a delta with text: not the OpenAI role chunk's empty one
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


@dataclass(frozen=True, slots=True)
class Case:
    key: str
    label: str
    pool: str  # which simulator answers (see `Pools`)
    tokens: int
    stream: bool
    concurrency: int
    duration: float | None
    requests: int | None
    warmup_s: float


@dataclass(frozen=True, slots=True)
class Sizes:
    """How long each case runs: the full run, or a quick smoke run."""

    duration: float
    warmup_s: float
    burst_tokens: int
    paced_tokens: int
    paced_streams: int
    paced_rate: float

    @staticmethod
    def full() -> Sizes:
        return Sizes(
            duration=3.0, warmup_s=0.5, burst_tokens=256, paced_tokens=256, paced_streams=64, paced_rate=50
        )

    @staticmethod
    def quick() -> Sizes:
        return Sizes(
            duration=0.3, warmup_s=0.1, burst_tokens=64, paced_tokens=16, paced_streams=8, paced_rate=100
        )


def cases(sizes: Sizes) -> dict[str, Case]:
    d, w = sizes.duration, sizes.warmup_s
    burst, paced = sizes.burst_tokens, sizes.paced_tokens
    streams = sizes.paced_streams
    listed = [
        Case("ns1", "non-stream, 16 tokens, c=1", "fast", 16, False, 1, d, None, w),
        Case("ns64", "non-stream, 16 tokens, c=64", "fast", 16, False, 64, d, None, w),
        Case("st1", "stream, 16 tokens, c=1", "fast", 16, True, 1, d, None, w),
        Case("st64", "stream, 16 tokens, c=64", "fast", 16, True, 64, d, None, w),
        Case("burst", f"stream, {burst} tokens at once, c=8", "burst", burst, True, 8, d, None, w),
        Case("paced", f"stream, {paced} tokens at {sizes.paced_rate:g}/s, c={streams}", "paced", paced, True,
             streams, None, streams, 0.0),
    ]  # fmt: skip
    return {c.key: c for c in listed}


@dataclass(slots=True)
class Target:
    key: str
    label: str
    kind: str  # "http" or "grpc"
    server: Proc | None  # whose CPU the figures are (None: the simulator is the server)
    cases: tuple[str, ...]
    url: Callable[[Case], str]
    body: Callable[[Case], dict[str, Any]]
    headers: dict[str, str] = field(default_factory=dict)


def direct_target(sims: dict[str, Proc]) -> Target:
    return Target(
        "direct",
        "vLLM simulator, direct",
        "http",
        None,
        ("ns1", "ns64", "st1", "st64", "burst", "paced"),
        lambda c: f"{sims[c.pool].url}/v1/chat/completions",
        lambda c: {"model": "Qwen/Qwen3-14B", "messages": MESSAGES, **NO_THINKING, "stream": c.stream},
    )


def gateway_target(gateway: Proc) -> Target:
    return Target(
        "gateway",
        "gateway, OpenAI HTTP face",
        "http",
        gateway,
        ("ns1", "ns64", "st1", "st64", "burst", "paced"),
        lambda c: f"{gateway.url}/v1/chat/completions",
        lambda c: {"model": c.pool, "messages": MESSAGES, "stream": c.stream},
        GATEWAY_AUTH,
    )


def relay_floor_target(null: Proc) -> Target:
    """A do-nothing aiohttp relay in front of the same simulators (`bench/null_proxy.py`)."""
    return Target(
        "relay",
        "do-nothing aiohttp relay (the floor)",
        "http",
        null,
        ("ns1", "ns64", "st1", "st64", "burst", "paced"),
        lambda c: f"{null.url}/{c.pool}/v1/chat/completions",
        lambda c: {"model": "Qwen/Qwen3-14B", "messages": MESSAGES, **NO_THINKING, "stream": c.stream},
    )


def litellm_target(proxy: Proc) -> Target:
    return Target(
        "litellm",
        "LiteLLM Proxy (1 worker)",
        "http",
        proxy,
        ("ns1", "ns64", "st1", "st64", "burst", "paced"),
        lambda c: f"{proxy.url}/v1/chat/completions",
        lambda c: {"model": c.pool, "messages": MESSAGES, **NO_THINKING, "stream": c.stream},
        LITELLM_AUTH,
    )


def grpc_target(gateway: Proc) -> Target:
    return Target(
        "grpc",
        "gateway, gRPC Chat",
        "grpc",
        gateway,
        ("st1", "st64", "burst", "paced"),
        lambda c: gateway.grpc,
        lambda c: {"model": c.pool, "prompt": PROMPT},
        GATEWAY_AUTH,
    )


def grpc_null_target(null: Proc) -> Target:
    return Target(
        "grpc_null",
        "do-nothing gRPC server (load generator's own rate)",
        "grpc",
        null,
        ("st1", "st64"),
        lambda c: null.grpc,
        lambda c: {"model": c.pool, "prompt": PROMPT},
    )


def ollama_target(sim: Proc) -> Target:
    return Target(
        "ollama",
        "Ollama simulator, direct (/api/chat)",
        "http",
        None,
        ("ns1", "st1"),
        lambda c: f"{sim.url}/api/chat",
        lambda c: {"model": "qwen3:14b", "messages": MESSAGES, "think": False, "stream": c.stream},
    )


def edge_targets(edge: Proc) -> list[Target]:
    return [
        Target(
            "edge_openai",
            "edge agent, OpenAI face",
            "http",
            edge,
            ("ns1", "st1"),
            lambda c: f"{edge.url}/v1/chat/completions",
            lambda c: {"model": "qwen3:14b", "messages": MESSAGES, "stream": c.stream},
        ),
        Target(
            "edge_ollama",
            "edge agent, Ollama face",
            "http",
            edge,
            ("ns1", "st1"),
            lambda c: f"{edge.url}/api/chat",
            lambda c: {"model": "qwen3:14b", "messages": MESSAGES, "stream": c.stream},
        ),
    ]


def run_job(job: Job, cpus: frozenset[int] | None, timeout: float = 900.0) -> dict[str, Any]:
    """Runs one `bench.load_run` job in its own process (pinned to `cpus`); returns its JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.load_run", job.to_json()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=pin_to(cpus),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load_run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def measure(target: Target, case: Case, sim: Proc, cpus: frozenset[int] | None) -> dict[str, Any]:
    """One measured run of `case` against `target`, with the derived per-request figures."""
    server = target.server or sim
    watch = {"server": server.pid, "sim": sim.pid}
    job = Job(
        kind=target.kind,
        target=target.url(case),
        body=target.body(case),
        headers=target.headers,
        concurrency=case.concurrency,
        duration=case.duration,
        requests=case.requests,
        stream=case.stream,
        ttft_regex=TOKEN_REGEX if case.stream else None,
        warmup_s=case.warmup_s,
        watch=watch,
        timeout=600.0,
    )
    out = run_job(job, cpus)
    done = out["requests"]
    cpu = out["cpu_s"]
    out["tokens"] = case.tokens
    out["server_cpu_us_per_req"] = cpu["server"] / done * 1e6 if done and cpu["server"] is not None else None
    out["server_cpu_us_per_token"] = (
        cpu["server"] / (done * case.tokens) * 1e6 if done and cpu["server"] is not None else None
    )
    out["sim_cpu_us_per_req"] = cpu["sim"] / done * 1e6 if done and cpu["sim"] is not None else None
    return out


def run_serving(
    targets: list[Target],
    all_cases: dict[str, Case],
    sims: dict[str, Proc],
    repeats: int,
    cpus: frozenset[int] | None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every case against every target, `repeats` times; results[target][case] = [run, ...]."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {t.key: {} for t in targets}
    for r in range(repeats):
        for case in all_cases.values():
            for target in targets:
                if case.key not in target.cases:
                    continue
                edge_side = target.key in ("ollama", "edge_openai", "edge_ollama")
                sim = sims["ollama"] if edge_side else sims[case.pool]
                started = time.monotonic()
                run = measure(target, case, sim, cpus)
                results[target.key].setdefault(case.key, []).append(run)
                log(
                    f"  [{r + 1}/{repeats}] {target.key:12} {case.key:6} {run['req_per_s']:9.1f} req/s "
                    f"p50 {run['latency_ms_p50']:8.2f} ms  cpu/req "
                    f"{_fmt(run['server_cpu_us_per_req'])} us  errors {run['errors']}  "
                    f"({time.monotonic() - started:.1f}s)"
                )
    return {
        "targets": {t.key: {"label": t.label, "kind": t.kind} for t in targets},
        "cases": {
            k: {"label": c.label, "tokens": c.tokens, "stream": c.stream, "concurrency": c.concurrency}
            for k, c in all_cases.items()
        },
        "runs": results,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:8.0f}"
