"""The elastic loop end to end on one machine: a gateway, `tandem sim fleet` (Kubernetes + KEDA)
and vLLM simulator replicas that it starts and stops, found by the gateway through DNS.

    python -m bench.elastic_fleet burst  [--requests 120] [--cold-start 3] [--json]
    python -m bench.elastic_fleet replay [--day-seconds 20] [--json]

**burst**: the pool at zero replicas; `--requests` streamed requests arrive at once. The gateway
holds them (`cold_start`), its `tandem_pool_demand` rises, the fleet activates and starts
replicas, which become ready after `--cold-start` seconds (model loading) and appear in DNS; the
gateway dispatches what it held. Reported: sent / answered / lost, the first answer's time
after the burst less the simulated cold start (the overhead of the loop: polling, DNS
re-resolution, dispatch), the peak replica count, and the seconds until the fleet is back at
zero after the last answer (KEDA's cooldown plus the drain).

**replay**: a week of a factory's cloud load, compressed: each day is `--day-seconds` (a
compressed hour is day/24), with a weekday-morning interactive peak (09-12h), light use in the
afternoon (12-17h), nothing at night, and on Friday at 16h a batch of 100 documents sent 25 at
a time. The scaling constants are compressed far less than the day (30x: a 90 s cold start is
3 s, the 3-minute cooldown 6 s, a 15 s polling interval 0.5 s), so the replay errs towards
more replica-seconds than a real week would use. The same replay runs twice in one run: on the
elastic fleet (0..5 replicas) and on a fixed fleet of 5 (min = max = 5, same processes, same
DNS path); reported: replica-seconds of each and their ratio, interactive TTFT p50/p95 of each,
and the batch's completion time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # not a line per replica spawned beside gRPC's threads

from bench import streams
from bench.loadgen import percentile
from bench.procs import free_port
from bench.streams import Outcome
from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from simulators.autoscaler import ScalingPolicy
from simulators.fleet import Fleet, FleetConfig
from tandem import logs

SERVED = "Qwen/Qwen3-14B"
POOL = "qwen3"


def gateway_config(fleet: Fleet, http_port: int, cold_start_s: float) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "grpc": {"port": 0},
            "http": {"port": http_port},
            "auth": {"required": False},
            "pools": [
                {
                    "name": POOL,
                    "context_length": 4096,
                    "discovery": {
                        "name": fleet.config.name,
                        "port": fleet.replica_port,
                        "model": SERVED,
                        "nameserver": fleet.dns.server,
                        "interval_seconds": 0.5,
                    },
                    "cold_start": {
                        "max_pending": 1000,
                        "timeout_seconds": 120,
                        "expected_seconds": cold_start_s,
                    },
                }
            ],
            "router": {"cooldown_seconds": 1},
            "shutdown_grace_seconds": 1,
        }
    )


@contextlib.asynccontextmanager
async def elastic_loop(
    policy: ScalingPolicy, cold_start_s: float, args: argparse.Namespace
) -> AsyncIterator[tuple[Fleet, str]]:
    """A fleet and a gateway that follow each other; yields the fleet and the chat URL."""
    http_port = free_port()
    fleet = Fleet(
        FleetConfig(
            metrics_urls=(f"http://127.0.0.1:{http_port}/metrics",),
            pool=POOL,
            policy=policy,
            polling_interval=args.polling_interval,
            cold_start_seconds=cold_start_s,
            drain_seconds=args.drain,
            vllm_args=(
                "--model", SERVED, "--max-model-len", "4096",
                "--tokens-per-second", str(args.tokens_per_second),
                "--output-tokens", str(args.output_tokens),
                "--max-num-seqs", str(args.max_num_seqs),
            ),
        ),
        echo=lambda line: None,
    )  # fmt: skip
    await fleet.start()
    gateway = GatewayServer(gateway_config(fleet, http_port, cold_start_s))
    try:
        await gateway.start()
        yield fleet, f"http://127.0.0.1:{http_port}/v1/chat/completions"
    finally:
        await gateway.stop()
        await fleet.stop()


def _policy(args: argparse.Namespace, *, fixed: int | None = None) -> ScalingPolicy:
    return ScalingPolicy(
        target=args.target,
        min_replicas=fixed if fixed is not None else 0,
        max_replicas=fixed if fixed is not None else args.max_replicas,
        cooldown_seconds=args.cooldown,
        scale_down_window_seconds=args.scale_down_window,
    )


async def _until(check: Callable[[], bool], every_s: float = 0.2) -> None:
    """Polls `check` (the fleet has no event for its states; it polls too)."""
    while not check():  # noqa: ASYNC110
        await asyncio.sleep(every_s)


async def _peak(fleet: Fleet, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        peak = max(peak, fleet.autoscaler.replicas)
        await asyncio.sleep(0.1)
    return peak


async def burst(args: argparse.Namespace) -> dict[str, Any]:
    async with elastic_loop(_policy(args), args.cold_start, args) as (fleet, url):
        stop = asyncio.Event()
        peak = asyncio.create_task(_peak(fleet, stop))
        out = Outcome()
        loop = asyncio.get_running_loop()
        async with streams.session() as http:
            sent_at, sent_loop = time.monotonic(), loop.time()
            await streams.burst(http, url, args.requests, args.requests, out)
        answered_at = time.monotonic()
        while fleet.status()["starting"] or fleet.status()["ready"] or fleet.status()["draining"]:
            if time.monotonic() - answered_at > args.cooldown + args.scale_down_window + args.drain + 30:
                break
            await asyncio.sleep(0.2)
        back_to_zero_s = time.monotonic() - answered_at
        stop.set()
        status = fleet.status()
        started = min((r.started_at for r in fleet.replicas), default=float("nan")) - sent_loop
        ready = min((r.ready_at for r in fleet.replicas if r.ready_at), default=float("nan")) - sent_loop
    first = min(out.first_at) - sent_at if out.first_at else None
    return {
        "sent": out.sent,
        "answered": out.answered,
        "lost": out.sent - out.answered,
        "statuses": out.statuses,
        "cold_start_s": args.cold_start,
        "first_answer_s": first,
        "added_delay_s": None if first is None else first - args.cold_start,
        # Where the added delay went: the fleet seeing the demand (its polling), the first
        # replica's process start beyond the cold start (Python start-up on a busy machine),
        # and the gateway from that replica's DNS record to the first token (re-resolution,
        # dispatch, the engine's first token).
        "first_replica_started_s": started,
        "first_replica_ready_s": ready,
        "ready_to_first_answer_s": None if first is None else first - ready,
        "ttft_p50_s": percentile(out.ttft_s, 50),
        "ttft_max_s": max(out.ttft_s, default=float("nan")),
        "peak_replicas": await peak,
        "back_to_zero_s": back_to_zero_s,
        "replica_seconds": status["replica_seconds"],
    }


async def _week(url: str, day_s: float, documents: int, rng: random.Random) -> tuple[Outcome, Outcome, float]:
    """Plays the week; returns the interactive outcome, the batch's, and its seconds."""
    hour = day_s / 24
    interactive, batch = Outcome(), Outcome()
    batch_s = 0.0
    async with streams.session() as http:
        for day in range(5):
            await asyncio.sleep(9 * hour)  # the night and early morning: nothing
            await streams.poisson(http, [url], 4.0, 3 * hour, rng, interactive)  # 09-12h peak
            afternoon = asyncio.create_task(streams.poisson(http, [url], 0.3, 5 * hour, rng, interactive))
            if day == 4:  # Friday: the batch of documents at 16h
                await asyncio.sleep(4 * hour)
                started = time.monotonic()
                await streams.burst(http, url, documents, 25, batch)
                batch_s = time.monotonic() - started
            await afternoon
            await asyncio.sleep(max(0.0, 7 * hour))  # the evening: nothing
    return interactive, batch, batch_s


async def replay(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"day_seconds": args.day_seconds}
    for name, policy, cold_start in (
        ("elastic", _policy(args), args.cold_start),
        ("fixed", _policy(args, fixed=args.max_replicas), args.cold_start),
    ):
        async with elastic_loop(policy, cold_start, args) as (fleet, url):
            if name == "fixed":  # the fixed pool is up before the week starts, as it always is
                await _until(lambda: len(fleet.status()["ready"]) >= args.max_replicas)
            before = fleet.status()["replica_seconds"]
            started = time.monotonic()
            interactive, batch, batch_s = await _week(url, args.day_seconds, args.documents, random.Random(7))
            status = fleet.status()
        result[name] = {
            "seconds": time.monotonic() - started,
            "replica_seconds": status["replica_seconds"] - before,
            "interactive_sent": interactive.sent,
            "interactive_lost": interactive.sent - interactive.answered,
            "ttft_p50_s": percentile(interactive.ttft_s, 50),
            "ttft_p95_s": percentile(interactive.ttft_s, 95),
            "batch_answered": batch.answered,
            "batch_seconds": batch_s,
        }
        print(f"{name}: {json.dumps(result[name])}", flush=True)
    result["replica_seconds_ratio"] = (
        result["elastic"]["replica_seconds"] / result["fixed"]["replica_seconds"]
    )
    return result


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("scenario", choices=("burst", "replay"))
    parser.add_argument("--requests", type=int, default=120, help="burst: requests sent at once")
    parser.add_argument("--day-seconds", type=float, default=20.0, help="replay: one compressed day")
    parser.add_argument("--documents", type=int, default=100, help="replay: the Friday batch's size")
    parser.add_argument("--cold-start", type=float, default=3.0, help="a replica's seconds to ready")
    parser.add_argument("--cooldown", type=float, default=6.0, help="KEDA cooldownPeriod")
    parser.add_argument("--scale-down-window", type=float, default=3.0, help="the HPA's scale-down window")
    parser.add_argument("--polling-interval", type=float, default=0.5, help="KEDA pollingInterval")
    parser.add_argument("--drain", type=float, default=2.0, help="a stopped replica's grace")
    parser.add_argument("--target", type=float, default=8.0, help="demand per replica (the trigger)")
    parser.add_argument("--max-replicas", type=int, default=5)
    parser.add_argument("--tokens-per-second", type=float, default=30.0)
    parser.add_argument("--output-tokens", type=int, default=48)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logs.configure(level="warning")
    result = asyncio.run(burst(args) if args.scenario == "burst" else replay(args))
    print(json.dumps(result) if args.json else _summary(args.scenario, result))


def _summary(scenario: str, r: dict[str, Any]) -> str:
    if scenario == "burst":
        return (
            f"burst: {r['sent']} sent, {r['answered']} answered, {r['lost']} lost; first answer "
            f"{r['first_answer_s']:.2f} s after the burst ({r['added_delay_s']:+.2f} s beyond the "
            f"{r['cold_start_s']:.0f} s cold start: replica started at {r['first_replica_started_s']:.2f} s, "
            f"ready at {r['first_replica_ready_s']:.2f} s, first token {r['ready_to_first_answer_s']:.2f} s "
            f"after); peak {r['peak_replicas']} replicas; back to zero "
            f"{r['back_to_zero_s']:.1f} s after the last answer"
        )
    e, f = r["elastic"], r["fixed"]
    return (
        f"replay: replica-seconds elastic {e['replica_seconds']:.0f} vs fixed {f['replica_seconds']:.0f} "
        f"({r['replica_seconds_ratio']:.2f}x); interactive TTFT p50/p95 elastic {e['ttft_p50_s']:.2f}/"
        f"{e['ttft_p95_s']:.2f} s vs fixed {f['ttft_p50_s']:.2f}/{f['ttft_p95_s']:.2f} s; lost "
        f"{e['interactive_lost']} and {f['interactive_lost']} of {e['interactive_sent']}; the batch "
        f"answered {e['batch_answered']} in {e['batch_seconds']:.1f} s vs {f['batch_answered']} in "
        f"{f['batch_seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
