"""The caller's error rate when every engine of a pool fails a share of requests at random.

    python -m bench.fault_rate [--endpoints 4] [--error-rate 0.3] [--requests 600]
                               [--concurrency 16] [--rejected 40] [--max-seconds 120] [--json]

One gateway (in process, the `router` section at its defaults unless `--router key=value` is
given) over `--endpoints` vLLM simulators, each failing `--error-rate` of its requests with
HTTP 500 (independent, seeded draws). Sends `--requests` non-streamed chat requests,
`--concurrency` at a time, and counts what the callers got. Then, with the faults off, sends
`--rejected` requests that every engine refuses because of the request (a `response_format`
they do not support, answered 500 as llama.cpp's server does) between ordinary ones, and checks
that every endpoint still takes requests afterwards (none was cooled down for the request's
own faults). Everything stops after `--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import aiohttp

from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from simulators.faults import Faults
from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tandem import logs

SERVED = "Qwen/Qwen3-14B"
PROMPT = [{"role": "user", "content": "Say hello. /no_think"}]
UNSUPPORTED = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


def gateway_config(urls: list[str], router: dict[str, Any]) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "grpc": {"port": 0},
            "http": {"port": 0},
            "auth": {"required": False},
            "pools": [
                {
                    "name": "qwen3",
                    "context_length": 4096,
                    "endpoints": [{"url": f"{u}/v1", "model": SERVED} for u in urls],
                }
            ],
            "router": router,
        }
    )


def router_overrides(pairs: list[str]) -> dict[str, Any]:
    router: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        router[key] = json.loads(value)
    return router


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    try:
        async with session.post(url, json=body) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return 0  # no answer at all


async def burst(
    session: aiohttp.ClientSession, url: str, bodies: list[dict[str, Any]], concurrency: int, deadline: float
) -> Counter[int]:
    statuses: Counter[int] = Counter()
    queue = list(reversed(bodies))

    async def worker() -> None:
        while queue and time.monotonic() < deadline:
            statuses[await post(session, url, queue.pop())] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


@contextlib.asynccontextmanager
async def gateway(sims: list[VllmSimulator], router: dict[str, Any]) -> AsyncIterator[str]:
    """A gateway over `sims`; yields its chat completions URL."""
    server = GatewayServer(gateway_config([s.url for s in sims], router))
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.http_port}/v1/chat/completions"
    finally:
        await server.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.max_seconds
    sims = [
        VllmSimulator(
            VllmSimConfig(models=[VllmModel(name=SERVED, max_model_len=4096)], seed=i + 1, output_tokens=8)
        )
        for i in range(args.endpoints)
    ]
    for sim in sims:
        await sim.start()
    router = router_overrides(args.router)
    body = {"model": "qwen3", "messages": PROMPT}
    try:
        async with aiohttp.ClientSession() as session, gateway(sims, router) as url:
            for sim in sims:
                sim.set_faults(Faults(error_rate=args.error_rate, error_status=500))
            started = time.monotonic()
            faulty = await burst(session, url, [body] * args.requests, args.concurrency, deadline)
            faulty_s = time.monotonic() - started
            engine_attempts = sum(len(s.requests) for s in sims)

        # A gateway of its own, so no cooldown from the faults above is still running.
        async with aiohttp.ClientSession() as session, gateway(sims, router) as url:
            for sim in sims:
                sim.set_faults(Faults(reject_field="response_format", reject_status=500))
            bad = {**body, "response_format": UNSUPPORTED}
            mixed = [bad if i % 2 == 0 else body for i in range(2 * args.rejected)]
            rejected = await burst(session, url, mixed, min(args.concurrency, 4), deadline)
            seen = [len(s.requests) for s in sims]
            after = await burst(session, url, [body] * (25 * args.endpoints), 1, deadline)
            still_used = sum(len(s.requests) > n for s, n in zip(sims, seen, strict=True))
    finally:
        for sim in sims:
            await sim.stop()
    sent = sum(faulty.values())
    failed = sent - faulty[200]
    return {
        "endpoints": args.endpoints,
        "engine_error_rate": args.error_rate,
        "requests": sent,
        "failed": failed,
        "caller_error_rate": failed / sent if sent else None,
        "statuses": {str(k): v for k, v in sorted(faulty.items())},
        "engine_attempts_per_request": engine_attempts / sent if sent else None,
        "seconds": round(faulty_s, 2),
        "rejected_phase": {
            "statuses": {str(k): v for k, v in sorted(rejected.items())},
            "after": {str(k): v for k, v in sorted(after.items())},
            "endpoints_still_used": still_used,
        },
    }


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--endpoints", type=int, default=4)
    parser.add_argument("--error-rate", type=float, default=0.3)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rejected", type=int, default=40, help="requests every engine refuses")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--router", action="append", default=[], metavar="KEY=JSON", help="a router setting")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    logs.configure(level="ERROR", stream=sys.stderr)  # a line per failed request otherwise
    figures = asyncio.run(run(args))
    if args.json:
        print(json.dumps(figures))
        return
    rate = figures["caller_error_rate"]
    print(f"### Caller error rate, {figures['endpoints']} endpoints failing {args.error_rate:.0%} each\n")
    print("| requests | failed | caller error rate | statuses | engine attempts / request | seconds |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {figures['requests']} | {figures['failed']} | {rate:.1%} | {figures['statuses']} "
        f"| {figures['engine_attempts_per_request']:.2f} | {figures['seconds']} |"
    )
    phase = figures["rejected_phase"]
    print(f"\nRequests the engines refuse (and ordinary ones between them): {phase['statuses']}")
    print(
        f"Afterwards: {phase['after']}; endpoints still taking requests: "
        f"{phase['endpoints_still_used']} of {figures['endpoints']}"
    )


if __name__ == "__main__":
    main()
