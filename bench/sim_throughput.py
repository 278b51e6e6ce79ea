"""How many requests per second each engine simulator serves (so a benchmark of the gateway
measures the gateway, not the simulator).

    python -m bench.sim_throughput [--duration 3] [--runs 3]

Each simulator runs in its own process (`tandem sim ...`, uvloop, zero token delay, 16 answer
tokens, no thinking); the load generator runs in this one. Cases: non-streamed and streamed,
concurrency 1 and 64. Prints a markdown table of medians over the runs, with the simulator's
own CPU time per request (from /proc, Linux only).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import LoadSpec, percentile, run_load

TANDEM = Path(sys.executable).with_name("tandem")
LISTENING = re.compile(rb"listening on (http://\S+)")
PROMPT = [{"role": "user", "content": "Summarize the benefits of hybrid edge and cloud inference."}]


@dataclass(frozen=True, slots=True)
class Engine:
    name: str
    args: tuple[str, ...]
    path: str
    body: dict[str, Any]
    markers: tuple[bytes, ...]  # what a token chunk looks like


ENGINES = (
    Engine(
        "ollama",
        ("ollama", "--model", "qwen3:14b", "--num-parallel", "64"),
        "/api/chat",
        {"model": "qwen3:14b", "messages": PROMPT, "think": False},
        (b'"content":"',),
    ),
    Engine(
        "vllm",
        ("vllm", "--model", "Qwen/Qwen3-14B"),
        "/v1/chat/completions",
        {"model": "Qwen/Qwen3-14B", "messages": PROMPT, "chat_template_kwargs": {"enable_thinking": False}},
        (b'"delta":{"content":"',),
    ),
)


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def start(engine: Engine) -> tuple[asyncio.subprocess.Process, str]:
    """Starts a simulator process and returns it with the URL it printed."""
    args = [*engine.args, "--port", "0", "--output-tokens", "16", "--reasoning-tokens", "0"]
    proc = await asyncio.create_subprocess_exec(str(TANDEM), "sim", *args, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    match = LISTENING.search(line)
    if not match:
        proc.kill()
        raise RuntimeError(f"{engine.name} simulator did not start: {line!r}")
    return proc, match.group(1).decode()


@dataclass(slots=True)
class Case:
    engine: str
    stream: bool
    concurrency: int
    rps: list[float]
    p50_ms: list[float]
    p99_ms: list[float]
    cpu_us: list[float]


async def measure(engine: Engine, url: str, pid: int, stream: bool, concurrency: int, args: Any) -> Case:
    case = Case(engine.name, stream, concurrency, [], [], [], [])
    spec = LoadSpec(
        url=url + engine.path,
        body={**engine.body, "stream": stream},
        concurrency=concurrency,
        duration=args.duration,
        stream=stream,
        ttft_markers=engine.markers,
        warmup=200,
    )
    for _ in range(args.runs):
        cpu_before = cpu_seconds(pid)
        result = await run_load(spec)
        cpu_after = cpu_seconds(pid)
        if result.errors:
            raise RuntimeError(f"{engine.name}: {result.errors} errors: {dict(result.statuses)}")
        case.rps.append(result.rps)
        case.p50_ms.append(percentile(result.latencies, 50) * 1000)
        case.p99_ms.append(percentile(result.latencies, 99) * 1000)
        if cpu_before is not None and cpu_after is not None and result.completed:
            # Includes the warm-up of the first run: subtract nothing, it is small against the run.
            case.cpu_us.append((cpu_after - cpu_before) / result.completed * 1e6)
    return case


def table(cases: list[Case], runs: int) -> str:
    lines = [
        f"| simulator | mode | concurrency | req/s (median of {runs}) | p50 ms | p99 ms | sim CPU µs/req |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        mode = "stream, 16 tokens" if c.stream else "non-stream, 16 tokens"
        cpu = f"{statistics.median(c.cpu_us):.0f}" if c.cpu_us else "n/a"
        lines.append(
            f"| {c.engine} | {mode} | {c.concurrency} | {statistics.median(c.rps):,.0f} | "
            f"{statistics.median(c.p50_ms):.2f} | {statistics.median(c.p99_ms):.2f} | {cpu} |"
        )
    return "\n".join(lines)


async def main_async(args: Any) -> None:
    cases: list[Case] = []
    for engine in ENGINES:
        if args.engine and engine.name != args.engine:
            continue
        proc, url = await start(engine)
        try:
            for stream in (False, True):
                for concurrency in (1, 64):
                    cases.append(await measure(engine, url, proc.pid, stream, concurrency, args))
                    print(f"  measured {engine.name} stream={stream} c={concurrency}", file=sys.stderr)
        finally:
            proc.terminate()
            await proc.wait()
    print(table(cases, args.runs))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sim_throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engine", choices=[e.name for e in ENGINES])
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
