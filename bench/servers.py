"""Starting the servers the benchmarks measure, each in its own process, the way an operator
would: the simulators (`tandem sim ...`), the gateway (`tandem gateway serve`), the edge agent
(`tandem edge serve`) and, as the baseline, LiteLLM Proxy (`litellm --config ... --num_workers 1`).

Every `start_*` returns once the server answers (its ready probe says so) and records the
seconds from spawn to ready in `proc.extra["ready_s"]`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from bench.procs import BIN, LISTENING, TANDEM, Proc, Processes, free_port, spawn, wait_for_log, wait_http_ok

SERVED = "Qwen/Qwen3-14B"  # the name the vLLM simulator serves
# The gateway checks API keys and LiteLLM Proxy its master key: every request pays for that.
GATEWAY_KEY = "tdm-benchmark_0123456789abcdefghij"
LITELLM_KEY = "sk-benchmark-0123456789abcdefghij0123456789"
KEY_ENV = "TANDEM_BENCH_API_KEY"  # where the edge agent's uplink reads its key
OLLAMA_MODEL = "qwen3:14b"
# What makes LiteLLM start and run offline, with nothing it does not need here.
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_LOG": "ERROR",  # also turns uvicorn's access log off
    "LITELLM_TELEMETRY": "False",
}
# The modules LiteLLM Proxy imports at start-up beyond litellm itself (the `bench` group).
LITELLM_PROXY_MODULES = (
    "fastapi",
    "uvicorn",
    "backoff",
    "apscheduler",
    "jwt",
    "multipart",
    "fastapi_sso",
    "mcp",
    "websockets",
    "semver",
    "expression",
    "soundfile",
)


def _ready(proc: Proc, spawned: float) -> Proc:
    proc.extra["ready_s"] = f"{time.monotonic() - spawned:.6f}"
    return proc


def start_vllm_sim(
    procs: Processes,
    logs: Path,
    name: str,
    *,
    output_tokens: int,
    tokens_per_second: float = 0.0,
    cpus: frozenset[int] | None = None,
) -> Proc:
    """The vLLM simulator: answers of `output_tokens` tokens, no reasoning, zero delay by default."""
    args = [
        TANDEM, "sim", "vllm", "--model", SERVED, "--port", "0",
        "--output-tokens", str(output_tokens), "--reasoning-tokens", "0",
        "--tokens-per-second", str(tokens_per_second), "--max-num-seqs", "4096",
    ]  # fmt: skip
    spawned = time.monotonic()
    proc = procs.add(spawn(name, args, logs, cpus=cpus))
    proc.url = wait_for_log(proc, LISTENING).group(1)
    return _ready(proc, spawned)


def start_ollama_sim(
    procs: Processes, logs: Path, name: str, *, output_tokens: int, cpus: frozenset[int] | None = None
) -> Proc:
    """The Ollama simulator, running up to 64 requests at once (so it never queues here)."""
    args = [
        TANDEM, "sim", "ollama", "--model", OLLAMA_MODEL, "--port", "0",
        "--output-tokens", str(output_tokens), "--reasoning-tokens", "0",
        "--num-parallel", "64", "--max-queue", "4096",
    ]  # fmt: skip
    spawned = time.monotonic()
    proc = procs.add(spawn(name, args, logs, cpus=cpus))
    proc.url = wait_for_log(proc, LISTENING).group(1)
    return _ready(proc, spawned)


def gateway_config(pools: Mapping[str, str], http_port: int, grpc_port: int) -> dict[str, object]:
    """A gateway over one simulator per pool (pool name -> simulator base URL), with limits high
    enough that none of them is what a benchmark measures."""
    return {
        "grpc": {"port": grpc_port},
        "http": {"port": http_port},
        "pools": [
            {
                "name": name,
                "context_length": 32768,
                "endpoints": [{"url": f"{url}/v1", "model": SERVED, "max_concurrency": 4096}],
            }
            for name, url in pools.items()
        ],
        "limits": {"max_in_flight": 4096},
        "auth": {
            "required": True,
            "tenants": [{"name": "bench", "key_sha256": [hashlib.sha256(GATEWAY_KEY.encode()).hexdigest()]}],
        },
        "shutdown_grace_seconds": 2,
    }


def start_gateway(
    procs: Processes,
    logs: Path,
    name: str,
    pools: Mapping[str, str],
    *,
    cpus: frozenset[int] | None = None,
    timeout: float = 180.0,
    sections: Mapping[str, object] | None = None,
) -> Proc:
    """`tandem gateway serve` over `pools` (with config `sections` besides the benchmark's own);
    returns once `/readyz` answers 200."""
    http_port, grpc_port = free_port(), free_port()
    config = logs / f"{name}.yaml"
    config.write_text(yaml.safe_dump({**gateway_config(pools, http_port, grpc_port), **(sections or {})}))
    spawned = time.monotonic()
    proc = procs.add(spawn(name, [TANDEM, "gateway", "serve", "--config", str(config)], logs, cpus=cpus))
    proc.url = f"http://127.0.0.1:{http_port}"
    proc.grpc = f"127.0.0.1:{grpc_port}"
    wait_http_ok(proc, f"{proc.url}/readyz", timeout)
    return _ready(proc, spawned)


def start_edge(
    procs: Processes,
    logs: Path,
    name: str,
    *,
    ollama_url: str,
    uplink: str | None,
    cpus: frozenset[int] | None = None,
    timeout: float = 60.0,
) -> Proc:
    """`tandem edge serve` in front of the Ollama simulator; returns once `/readyz` says ready.

    `uplink` is the gateway's gRPC address (None: an address nobody answers on, which start-up
    must not wait for). The local queue is large, so no benchmark request spills to the gateway.
    """
    config = logs / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"port": 0},
                "ollama": {"url": ollama_url, "model": OLLAMA_MODEL, "num_parallel": 64, "max_queue": 4096},
                "uplink": {"address": uplink or "127.0.0.1:9", "api_key_env": KEY_ENV},
                "shutdown_grace_seconds": 2,
            }
        )
    )
    spawned = time.monotonic()
    args = [TANDEM, "edge", "serve", "--config", str(config)]
    proc = procs.add(spawn(name, args, logs, cpus=cpus, env={KEY_ENV: GATEWAY_KEY}))
    proc.url = wait_for_log(proc, LISTENING, timeout).group(1)
    wait_http_ok(proc, f"{proc.url}/readyz", timeout - (time.monotonic() - spawned))
    return _ready(proc, spawned)


def litellm_missing() -> list[str]:
    """The modules LiteLLM Proxy needs that are not installed (empty: it can run)."""
    return [m for m in LITELLM_PROXY_MODULES if importlib.util.find_spec(m) is None]


def litellm_config(pools: Mapping[str, str]) -> dict[str, object]:
    """LiteLLM Proxy over the same simulators: one deployment per pool, no callbacks, no spend
    logs, no database; its master key is checked as the gateway checks its API keys."""
    return {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"hosted_vllm/{SERVED}",
                    "api_base": f"{url}/v1",
                    "api_key": "none",
                },
            }
            for name, url in pools.items()
        ],
        "litellm_settings": {
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "service_callback": [],
            "turn_off_message_logging": True,
            "set_verbose": False,
            "json_logs": False,
        },
        "general_settings": {
            "disable_spend_logs": True,
            "disable_error_logs": True,
            "master_key": LITELLM_KEY,
        },
    }


def start_litellm(
    procs: Processes,
    logs: Path,
    name: str,
    pools: Mapping[str, str],
    *,
    cpus: frozenset[int] | None = None,
    timeout: float = 240.0,
) -> Proc:
    """LiteLLM Proxy, one uvicorn worker, over `pools`; returns once `/health/readiness` is 200."""
    port = free_port()
    config = logs / f"{name}.yaml"
    config.write_text(yaml.safe_dump(litellm_config(pools)))
    args = [
        str(BIN / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
        "--num_workers", "1",
    ]  # fmt: skip
    spawned = time.monotonic()
    proc = procs.add(spawn(name, args, logs, cpus=cpus, env=LITELLM_ENV))
    proc.url = f"http://127.0.0.1:{port}"
    wait_http_ok(proc, f"{proc.url}/health/readiness", timeout, poll=0.05)
    return _ready(proc, spawned)
