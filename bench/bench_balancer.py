"""CPU per request spent in the balancer: one `choose` plus one outcome report, per strategy.

    python -m bench.bench_balancer [--iterations 2000] [--rounds 3] [--redis redis://127.0.0.1:6379]

Prints a markdown table: microseconds of CPU (`time.process_time`) per cycle, the median of
`--rounds` rounds of `--iterations` cycles each, after one warm-up round. Nothing listens on the
configured endpoints: choosing and learning never contact them.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from importlib.metadata import version
from typing import Any

from gateway.config import GatewayConfig
from gateway.pool import Upstream
from gateway.pool.litellm_balancer import LitellmBalancer

POOL = "qwen"
STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing-v2")

Cycle = Callable[[], Awaitable[None]]


def config(strategy: str, redis_url: str | None) -> GatewayConfig:
    endpoints = [{"url": f"http://10.0.0.{i}:8000/v1", "model": "Qwen/Qwen3-14B"} for i in (1, 2, 3)]
    return GatewayConfig.model_validate(
        {
            "pools": [{"name": POOL, "endpoints": endpoints}],
            "router": {"strategy": strategy, "allowed_fails": 3, "cooldown_seconds": 5},
            "redis": {"url": redis_url},
        }
    )


async def chosen(balancer: LitellmBalancer) -> Upstream:
    upstream = await balancer.choose(POOL)
    assert upstream is not None
    return upstream


def cycles(balancer: LitellmBalancer) -> dict[str, Cycle]:
    async def choose_only() -> None:
        await chosen(balancer)

    async def choose_succeeded() -> None:
        balancer.succeeded(await chosen(balancer), latency_s=0.25)

    async def choose_failed() -> None:
        # A 400 is counted and never cools the endpoint down, so every round sees the same pool.
        balancer.failed(await chosen(balancer), status=400, error="bad request")

    return {
        "choose": choose_only,
        "choose + succeeded": choose_succeeded,
        "choose + failed (400)": choose_failed,
    }


async def cpu_us(cycle: Cycle, iterations: int, rounds: int) -> float:
    for _ in range(iterations // 4):
        await cycle()
    results = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(iterations):
            await cycle()
        results.append((time.process_time() - start) / iterations * 1e6)
    return statistics.median(results)


def add_a_day_of_latency_state(balancer: LitellmBalancer) -> None:
    """What latency-based routing keeps after a day of traffic: a usage entry per deployment per
    minute (reaches into litellm's store: this is what the balancer trims)."""
    store: Any = balancer._router.health().store
    minutes = [datetime.now() - timedelta(minutes=m) for m in range(1, 24 * 60)]
    state = {
        u.id: {
            "latency_normalized": [0.25],
            **{m.strftime("%Y-%m-%d-%H-%M"): {"tpm": 0, "rpm": 9} for m in minutes},
        }
        for u in balancer.upstreams(POOL)
    }
    store.set_cache(key=f"{POOL}_map", value=state, ttl=3600)


async def measure(iterations: int, rounds: int, redis_url: str | None) -> list[tuple[str, dict[str, float]]]:
    rows: list[tuple[str, dict[str, float]]] = []
    for strategy in STRATEGIES:
        balancer = LitellmBalancer(config(strategy, redis_url))
        rows.append(
            (strategy, {name: await cpu_us(c, iterations, rounds) for name, c in cycles(balancer).items()})
        )
        balancer.close()
    return rows


async def measure_a_day_of_latency_state(
    iterations: int, rounds: int, redis_url: str | None
) -> tuple[float, float]:
    """`choose` with latency-based routing over a day of per-minute state: as litellm keeps it,
    then once the balancer's first success report trimmed it."""
    balancer = LitellmBalancer(config("latency-based-routing", redis_url))
    add_a_day_of_latency_state(balancer)
    choose = cycles(balancer)["choose"]
    untrimmed = await cpu_us(choose, iterations, rounds)
    balancer.succeeded(await chosen(balancer), latency_s=0.25)
    trimmed = await cpu_us(choose, iterations, rounds)
    balancer.close()
    return untrimmed, trimmed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default=None, help="redis:// URL: measure with shared state in Redis")
    args = parser.parse_args()
    rows = asyncio.run(measure(args.iterations, args.rounds, args.redis))
    untrimmed, trimmed = asyncio.run(
        measure_a_day_of_latency_state(args.iterations // 4, args.rounds, args.redis)
    )
    columns = list(rows[0][1])
    print(f"## Balancer CPU per request (litellm {version('litellm')}, Python {platform.python_version()})\n")
    state = f"Redis at {args.redis}" if args.redis else "in memory"
    print(f"3 endpoints, state {state}; median of {args.rounds} x {args.iterations} cycles, µs of CPU.\n")
    print("| strategy | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for strategy, values in rows:
        print(f"| {strategy} | " + " | ".join(f"{values[c]:.0f}" for c in columns) + " |")
    print(
        "\nlatency-based-routing over a day of per-minute state: "
        f"`choose` {untrimmed:.0f} µs as litellm keeps it, {trimmed:.0f} µs once the balancer trimmed it."
    )


if __name__ == "__main__":
    main()
