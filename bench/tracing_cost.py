"""What tracing costs: CPU per request through the gateway with tracing off and on, same run.

    python -m bench.tracing_cost [--requests 400] [--repeats 3] [--json]

One process holds a vLLM simulator, the gateway and the client; the requests (streamed, 16
tokens, one at a time) are the same in both cases, so the difference in the process's CPU
time (`time.process_time`, every thread: the SDK's exporting thread included) is what tracing
adds. "On" exports every span (sample ratio 1) by OTLP/HTTP to a collector stand-in in another
process that accepts and discards the batches, so the export's serialisation and HTTP are
counted too. Off and on alternate, `--repeats` times each; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import aiohttp

from bench.procs import free_port
from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tandem import logs

SERVED = "Qwen/Qwen3-14B"
BODY = {"model": "qwen3", "messages": [{"role": "user", "content": "Say hello. /no_think"}], "stream": True}
# A collector stand-in: answers every OTLP POST with 200 and an empty protobuf body.
SINK = """
import sys
from aiohttp import web
async def accept(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/traces", accept)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def config(url: str, otlp: str | None) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "grpc": {"port": 0},
            "http": {"port": 0},
            "auth": {"required": False},
            "pools": [{"name": "qwen3", "endpoints": [{"url": f"{url}/v1", "model": SERVED}]}],
            "tracing": {"otlp_endpoint": otlp},
            "shutdown_grace_seconds": 0,
        }
    )


async def measure(url: str, otlp: str | None, requests: int) -> float:
    """CPU seconds per request of `requests` streamed requests, after a warm-up."""
    gateway = GatewayServer(config(url, otlp))
    await gateway.start()
    chat = f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions"
    try:
        async with aiohttp.ClientSession() as http:

            async def one() -> None:
                async with http.post(chat, json=BODY) as resp:
                    assert resp.status == 200
                    await resp.read()

            for _ in range(20):
                await one()
            cpu = time.process_time()
            for _ in range(requests):
                await one()
            used = time.process_time() - cpu
    finally:
        await gateway.stop()  # the exporter's last batch is sent here, outside the measurement
    return used / requests


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    sink = await asyncio.create_subprocess_exec(sys.executable, "-c", SINK, str(port))
    engine = VllmSimulator(VllmSimConfig(models=[VllmModel(name=SERVED)], output_tokens=16))
    await engine.start()
    otlp = f"http://127.0.0.1:{port}/v1/traces"
    off: list[float] = []
    on: list[float] = []
    try:
        await asyncio.sleep(1.0)  # the sink's start
        for _ in range(args.repeats):
            off.append(await measure(engine.url, None, args.requests))
            on.append(await measure(engine.url, otlp, args.requests))
    finally:
        await engine.stop()
        sink.terminate()
        await sink.wait()
    off_us, on_us = statistics.median(off) * 1e6, statistics.median(on) * 1e6
    return {
        "requests": args.requests,
        "repeats": args.repeats,
        "cpu_us_per_request_off": off_us,
        "cpu_us_per_request_on": on_us,
        "added_us_per_request": on_us - off_us,
        "ratio": on_us / off_us,
        "runs_off_us": [x * 1e6 for x in off],
        "runs_on_us": [x * 1e6 for x in on],
    }


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logs.configure(level="warning")
    r = asyncio.run(run(args))
    if args.json:
        print(json.dumps(r))
    else:
        print(
            f"CPU per streamed request (client, gateway and engine in one process): tracing off "
            f"{r['cpu_us_per_request_off']:.0f} us, on {r['cpu_us_per_request_on']:.0f} us "
            f"(+{r['added_us_per_request']:.0f} us, {r['ratio']:.2f}x), medians of {r['repeats']}"
        )


if __name__ == "__main__":
    main()
