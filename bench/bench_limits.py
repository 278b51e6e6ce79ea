"""CPU per request spent on authentication and tenant limits, in memory and on Redis.

    python -m bench.bench_limits [--iterations 5000] [--rounds 3] [--e2e]

Components (in this process, `time.process_time`, median of `--rounds`): a cached key lookup,
and one request's limits (`acquire` before the engine call, `finish` after: the correction of
the token charge and the release of the stream slot) on local state and on Redis, one request
at a time and 64 at once (the settlements of concurrent requests share one pipeline).

`--e2e` also runs a real gateway process over a vLLM simulator process and measures the
gateway's own CPU per request (utime + stime from /proc) with authentication off, and with a
key and rpm + tpm + streams limits on Redis. A redis-server of its own is started on a free
port (`/usr/bin/redis-server`) unless `--redis` names one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from gateway.auth import Authenticator
from gateway.config import Redis as RedisConfig
from gateway.state import MemoryTenants, RedisLimiter, RedisState, StateHealth, Tenant, TenantLimits
from gateway.state.tenants import RedisTenants

Cycle = Callable[[], Awaitable[None]]
TENANT = Tenant("bench", rpm=10**9, tpm=10**12, streams=10**6)  # checked, never reached
ROOT = Path(__file__).resolve().parents[1]
TANDEM = [sys.executable, "-c", "from cli.main import main; main()"]


async def cpu_us(cycle: Cycle, iterations: int, rounds: int, per_cycle: int = 1) -> float:
    for _ in range(max(iterations // 10, 1)):
        await cycle()
    results = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(iterations):
            await cycle()
        await asyncio.sleep(0.01)  # let batched settlements run (their CPU counts)
        results.append((time.process_time() - start) / (iterations * per_cycle) * 1e6)
    return statistics.median(results)


def limits_cycles(limits: TenantLimits) -> dict[str, tuple[Cycle, int]]:
    async def one() -> None:
        limits.finish(await limits.acquire(TENANT, 500), 120)

    async def sixty_four() -> None:
        grants = await asyncio.gather(*(limits.acquire(TENANT, 500) for _ in range(64)))
        for grant in grants:
            limits.finish(grant, 120)
        await asyncio.sleep(0)  # the batch goes out

    return {"one at a time": (one, 1), "64 at once": (sixty_four, 64)}


async def components(iterations: int, rounds: int, redis_url: str) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    store = MemoryTenants()
    key, _ = await store.create_key("bench")
    auth = Authenticator(store, required=True, cache_seconds=60)

    async def authenticate() -> None:
        await auth.authenticate(key)

    rows.append(("authenticate (cached key)", await cpu_us(authenticate, iterations, rounds)))
    local = TenantLimits()
    for name, (cycle, n) in limits_cycles(local).items():
        rows.append((f"limits on local state, {name}", await cpu_us(cycle, iterations // n or 1, rounds, n)))
    state = RedisState(RedisConfig(url=redis_url, key_prefix="bench:"), StateHealth())
    shared = TenantLimits(RedisLimiter(state, 30))
    await shared.start()
    for name, (cycle, n) in limits_cycles(shared).items():
        rows.append((f"limits on Redis, {name}", await cpu_us(cycle, iterations // n or 1, rounds, n)))
    await shared.close()
    await state.close()
    return rows


# --- the end-to-end measurement ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait()


def start(args: list[str], log: Path, ready: str) -> tuple[subprocess.Popen[bytes], re.Match[str]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TANDEM_LOG_FORMAT": "json"},
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if found := re.search(ready, log.read_text(errors="replace")):
            return proc, found
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        time.sleep(0.05)
    raise RuntimeError(f"{args} did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def gateway_cpu_per_request(
    engine: str, tmp: Path, extra: dict[str, object], key: str | None, n: int
) -> float:
    from bench.loadgen import LoadSpec, run_load

    http_port = free_port()
    config = tmp / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "grpc": {"port": 0},
                "http": {"port": http_port},
                "pools": [
                    {"name": "qwen3", "endpoints": [{"url": f"{engine}/v1", "model": "Qwen/Qwen3-14B"}]}
                ],
                **extra,
            }
        )
    )
    proc, _ = start(
        [*TANDEM, "gateway", "serve", "--config", str(config)], tmp / "gateway.log", r"gateway_ready"
    )
    try:
        spec_args = {
            "url": f"http://127.0.0.1:{http_port}/v1/chat/completions",
            "body": {"model": "qwen3", "messages": [{"role": "user", "content": "Say hello. /no_think"}]},
            "headers": {"Authorization": f"Bearer {key}"} if key else {},
            "concurrency": 32,
        }
        await run_load(LoadSpec(**spec_args, requests=500))  # type: ignore[arg-type]
        before = cpu_seconds(proc.pid)
        result = await run_load(LoadSpec(**spec_args, requests=n))  # type: ignore[arg-type]
        used = cpu_seconds(proc.pid) - before
        assert set(result.statuses) == {200}, result.statuses
        return used / n * 1e6
    finally:
        proc.terminate()
        proc.wait()


async def end_to_end(redis_url: str, n: int, rounds: int) -> list[tuple[str, float]]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        engine, found = start(
            [*TANDEM, "sim", "vllm", "--port", "0", "--output-tokens", "16"],
            tmp / "vllm.log",
            r"listening on (http://\S+)",
        )
        try:
            url = found.group(1)
            state = RedisState(RedisConfig(url=redis_url, key_prefix="bench-e2e:"), StateHealth())
            tenants = RedisTenants(state)
            await tenants.set_tenant(TENANT)
            key, _ = await tenants.create_key("bench")
            await state.close()
            off_runs, on_runs = [], []
            for _ in range(rounds):  # alternating, so drift in the machine hits both alike
                off_runs.append(
                    await gateway_cpu_per_request(url, tmp, {"auth": {"required": False}}, None, n)
                )
                on_runs.append(
                    await gateway_cpu_per_request(
                        url, tmp, {"redis": {"url": redis_url, "key_prefix": "bench-e2e:"}}, key, n
                    )
                )
            off, on = statistics.median(off_runs), statistics.median(on_runs)
        finally:
            engine.terminate()
            engine.wait()
    return [
        ("gateway, authentication off, no Redis", off),
        ("gateway, key + rpm/tpm/streams limits on Redis", on),
        ("difference", on - off),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default=None, help="redis:// URL (default: start one)")
    parser.add_argument("--e2e", action="store_true", help="also measure a gateway process end to end")
    parser.add_argument("--requests", type=int, default=4000, help="requests measured end to end")
    args = parser.parse_args()
    with redis_server(args.redis) as url:
        rows = asyncio.run(components(args.iterations, args.rounds, url))
        e2e = asyncio.run(end_to_end(url, args.requests, args.rounds)) if args.e2e else []
    print(f"## Authentication and tenant limits: CPU per request (Python {platform.python_version()})\n")
    print(f"Median of {args.rounds} rounds, µs of CPU in the gateway's process.\n")
    print("| what | µs |\n|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")
    if e2e:
        print(
            f"\nEnd to end, non-streamed requests, 32 at once, median of {args.rounds} runs of "
            f"{args.requests} each (runs alternate):\n"
        )
        print("| gateway | µs of CPU per request |\n|---|---:|")
        for name, us in e2e:
            print(f"| {name} | {us:.0f} |")


if __name__ == "__main__":
    main()
