"""What one engine call costs the caller's process: aiohttp's bare client against Tandem's
`Transport` (`tandem/transport.py`: aiohttp plus proxy, TLS and reuse rules), both on one
kept-alive connection to the vLLM simulator (its own process), one request at a time.

    python -m bench.client_cost [--requests 3000] [--rounds 3] [--json]

Per client and round: the CPU time of this process (`time.process_time`) and the wall time per
request, over `--requests` non-streamed 16-token answers after a warm-up; the clients take turns
within a round. Prints medians (min-max) over the rounds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson

from tandem.transport import Transport

TANDEM = Path(sys.executable).with_name("tandem")
LISTENING = re.compile(rb"listening on (http://\S+)")
BODY = orjson.dumps(
    {
        "model": "Qwen/Qwen3-14B",
        "messages": [{"role": "user", "content": "Say hello to the line-3 team."}],
        "chat_template_kwargs": {"enable_thinking": False},
    }
)
HEADERS = {"Content-Type": "application/json"}
WARMUP = 200

Call = Callable[[], Awaitable[bytes]]


async def _measure(call: Call, requests: int) -> tuple[float, float]:
    for _ in range(WARMUP):
        await call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        orjson.loads(await call())
    return (time.process_time() - cpu) / requests * 1e6, (time.perf_counter() - wall) / requests * 1e6


async def _aiohttp(url: str, requests: int) -> tuple[float, float]:
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",), auto_decompress=False) as session:

        async def call() -> bytes:
            async with session.post(url, data=BODY, headers=HEADERS) as resp:
                return await resp.read()

        return await _measure(call, requests)


async def _transport(url: str, requests: int) -> tuple[float, float]:
    client = Transport()

    async def call() -> bytes:
        resp = await client.request("POST", url, BODY, HEADERS)
        try:
            return await resp.read()
        finally:
            resp.release()

    try:
        return await _measure(call, requests)
    finally:
        await client.close()


CLIENTS = {"aiohttp.ClientSession": _aiohttp, "tandem Transport": _transport}


def _start_sim() -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [str(TANDEM), "sim", "vllm", "--port", "0", "--output-tokens", "16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if match := LISTENING.search(line):
            return proc, match.group(1).decode()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the vLLM simulator did not start")


def run(requests: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    import uvloop

    proc, base = _start_sim()
    url = f"{base}/v1/chat/completions"
    out: dict[str, dict[str, list[float]]] = {name: {"cpu_us": [], "wall_us": []} for name in CLIENTS}
    try:
        for _ in range(rounds):
            for name, fn in CLIENTS.items():
                cpu, wall = uvloop.run(fn(url, requests))
                out[name]["cpu_us"].append(cpu)
                out[name]["wall_us"].append(wall)
    finally:
        proc.terminate()
        proc.wait(10)
    return out


def _show(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args(argv)
    out = run(args.requests, args.rounds)
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"{args.requests} non-streamed calls per client and round, {args.rounds} rounds, median (min-max)\n"
    )
    print("| client | CPU us per call | wall us per call |")
    print("|---|---:|---:|")
    for name, figures in out.items():
        print(f"| {name} | {_show(figures['cpu_us'])} | {_show(figures['wall_us'])} |")


if __name__ == "__main__":
    main()
