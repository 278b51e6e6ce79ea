"""Endpoint choice under uneven engines: least-loaded against simple-shuffle and least-busy.

    python -m bench.pool_strategies [--rate 6] [--seconds 20] [--concurrency 40] [--repeats 3]
                                    [--replicas 1,2] [--scrape-interval 1] [--json]

Four vLLM simulators, one of them three times slower (10 tokens/s per stream against 30), each
decoding at most `--max-num-seqs` requests at once (more wait, as vLLM's scheduler makes them),
48 tokens per answer, one token per write. In front of them one or more gateway replicas, all
with the same `router.strategy`; requests are streamed, arrive at random (Poisson, `--rate` per
second in all, spread over the replicas in turn) for `--seconds`, and each one's time to first
token is taken at the caller. Capacity is about 8.3 requests a second (three engines at 2.5, the
slow one at 0.83), so the default rate runs the pool at ~70%. Then the throughput: `--concurrency`
callers send back to back for `--seconds` (more than the pool's 16 decode slots, so it is kept
full) and the answers a second are counted.

Each repeat runs every strategy once, in a shuffled order, against the same engines; the
report gives the median over repeats of each figure. With one replica the gateway sees all the
pool's work in its own in-flight counts; with two, each sees half of it, and only the engines'
`/metrics` (what least-loaded reads) show the rest: that is how a gateway Deployment of several
replicas runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
from collections.abc import AsyncIterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench import streams
from bench.fault_rate import gateway_config
from bench.loadgen import percentile
from bench.streams import Outcome
from gateway.server import GatewayServer
from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tandem import logs

SERVED = "Qwen/Qwen3-14B"
STRATEGIES = ("simple-shuffle", "least-busy", "least-loaded")


@contextlib.asynccontextmanager
async def gateways(
    urls: list[str], strategy: str, replicas: int, scrape_s: float
) -> AsyncIterator[list[str]]:
    """`replicas` gateways over the same engines; yields their chat completions URLs."""
    router = {
        "strategy": strategy,
        "load_scrape": {"interval_seconds": scrape_s, "timeout_seconds": min(0.5, scrape_s)},
    }
    servers = [GatewayServer(gateway_config(urls, router)) for _ in range(replicas)]
    try:
        for server in servers:
            await server.start()
        yield [f"http://127.0.0.1:{s.http_port}/v1/chat/completions" for s in servers]
    finally:
        for server in servers:
            await server.stop()


async def open_loop(urls: list[str], rate: float, seconds: float, seed: int) -> Outcome:
    """Poisson arrivals over `seconds`, each request's time to first token."""
    out = Outcome()
    async with streams.session(120) as http:
        await streams.poisson(http, urls, rate, seconds, random.Random(seed), out)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    model = VllmModel(name=SERVED, max_model_len=4096)
    speeds = [args.tokens_per_second] * 3 + [args.tokens_per_second / 3]
    sims = [
        VllmSimulator(
            VllmSimConfig(
                models=[model],
                seed=i + 1,
                output_tokens=args.output_tokens,
                tokens_per_second=tps,
                max_num_seqs=args.max_num_seqs,
            )
        )
        for i, tps in enumerate(speeds)
    ]
    for sim in sims:
        await sim.start()
    slow = sims[-1]
    rows: dict[str, dict[str, list[float]]] = {}
    try:
        for repeat in range(args.repeats):
            for replicas in args.replicas:
                order = list(STRATEGIES)
                random.Random(repeat * 31 + replicas).shuffle(order)
                for strategy in order:
                    urls = [s.url for s in sims]
                    async with gateways(urls, strategy, replicas, args.scrape_interval) as faces:
                        await asyncio.sleep(1.5)  # least-loaded's first readings
                        slow_before = len(slow.requests)
                        out = await open_loop(faces, args.rate, args.seconds, seed=repeat)
                        slow_share = (len(slow.requests) - slow_before) / max(out.sent, 1)
                        full = Outcome()
                        async with streams.session(120) as http:
                            full_s = await streams.closed_loop(
                                http, faces, args.concurrency, args.seconds, full
                            )
                    row = rows.setdefault(f"{strategy} x{replicas}", {})
                    for key, value in (
                        ("ttft_p50_s", percentile(out.ttft_s, 50)),
                        ("ttft_p95_s", percentile(out.ttft_s, 95)),
                        ("throughput_rps", full.answered / full_s),
                        ("failed", float(out.failed + full.failed)),
                        ("slow_share", slow_share),
                    ):
                        row.setdefault(key, []).append(value)
                    print(
                        f"repeat {repeat + 1} {strategy:>14} x{replicas}: TTFT p50 "
                        f"{row['ttft_p50_s'][-1]:.2f} s p95 {row['ttft_p95_s'][-1]:.2f} s, "
                        f"{row['throughput_rps'][-1]:.2f} req/s kept full, "
                        f"{out.failed + full.failed} failed of {out.sent + full.sent}, "
                        f"{slow_share:.0%} to the slow engine",
                        flush=True,
                    )
    finally:
        for sim in sims:
            await sim.stop()
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "max_num_seqs": args.max_num_seqs,
        "concurrency": args.concurrency,
        "scrape_interval_s": args.scrape_interval,
        "tokens_per_second": speeds,
        "medians": {name: {k: statistics.median(v) for k, v in row.items()} for name, row in rows.items()},
        "runs": rows,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| strategy x gateway replicas | TTFT p50 | TTFT p95 | throughput, kept full | failed"
        " | sent to the slow engine |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in result["medians"].items():
        lines.append(
            f"| {name} | {m['ttft_p50_s']:.2f} s | {m['ttft_p95_s']:.2f} s | {m['throughput_rps']:.2f} req/s"
            f" | {m['failed']:.0f} | {m['slow_share']:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=6.0, help="requests per second, in all")
    parser.add_argument("--seconds", type=float, default=20.0, help="arrivals last this long")
    parser.add_argument("--concurrency", type=int, default=40, help="callers of the throughput phase")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="least-loaded's /metrics reads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--replicas", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--tokens-per-second", type=float, default=30.0, help="the fast engines' pace")
    parser.add_argument("--output-tokens", type=int, default=48)
    parser.add_argument("--max-num-seqs", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    logs.configure(level="warning")
    result = asyncio.run(run(args))
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
