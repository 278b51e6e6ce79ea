"""A reusable asyncio HTTP load generator: one aiohttp session, N concurrent workers.

    result = await run_load(LoadSpec(url=..., body={...}, concurrency=64, duration=5, stream=True))
    print(result.summary())

Bounded by a request count, a duration, or both (whichever ends first). Per request it records
latency (send to last byte), time to first byte (response headers) and, for streams, time to
first token: the first chunk that contains one of `ttft_markers` (or the first body chunk when
none are given). Streams are read chunk by chunk without parsing, so the generator costs little
beside the system it measures; run it in its own process (`python -m bench.loadgen`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson


@dataclass(slots=True)
class LoadSpec:
    """What to send, how hard, and for how long."""

    url: str
    body: bytes | dict[str, Any] | None = None
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    concurrency: int = 1
    requests: int | None = None  # stop after this many measured requests
    duration: float | None = None  # stop after this many seconds
    stream: bool = False  # read the body incrementally and record time to first token
    ttft_markers: tuple[bytes, ...] = ()  # what a token looks like on the wire (default: any byte)
    # A regular expression for a token instead, when a marker would also match an empty delta
    # (an OpenAI role chunk carries `"content":""`): e.g. rb'"content":"[^"]'.
    ttft_regex: bytes | None = None
    warmup: int = 0  # requests sent (and not measured) before measuring
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.requests is None and self.duration is None:
            raise ValueError("LoadSpec needs requests or duration (or both)")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(slots=True)
class LoadResult:
    """Per-request measurements (seconds) of one load run."""

    elapsed: float
    latencies: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)  # 0 = no response (connection error)
    errors: int = 0
    bytes_received: int = 0

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        ms = 1000.0
        return {
            "requests": self.completed,
            "errors": self.errors,
            "statuses": dict(self.statuses),
            "elapsed_s": round(self.elapsed, 3),
            "req_per_s": round(self.rps, 1),
            "latency_ms_p50": round(percentile(self.latencies, 50) * ms, 3),
            "latency_ms_p99": round(percentile(self.latencies, 99) * ms, 3),
            "ttfb_ms_p50": round(percentile(self.ttfb, 50) * ms, 3),
            "ttfb_ms_p99": round(percentile(self.ttfb, 99) * ms, 3),
            "ttft_ms_p50": round(percentile(self.ttft, 50) * ms, 3) if self.ttft else None,
            "ttft_ms_p99": round(percentile(self.ttft, 99) * ms, 3) if self.ttft else None,
            "bytes_received": self.bytes_received,
        }


class _Run:
    def __init__(self, spec: LoadSpec, session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.session = session
        body = spec.body
        self.data = orjson.dumps(body) if isinstance(body, dict) else body
        self.headers = dict(spec.headers)
        if isinstance(body, dict):
            self.headers.setdefault("Content-Type", "application/json")
        self.token = re.compile(spec.ttft_regex) if spec.ttft_regex else None
        self.started = 0  # requests handed to workers in this phase
        self.limit: int | None = None
        self.deadline = float("inf")

    async def one(self, result: LoadResult | None) -> None:
        spec = self.spec
        t0 = time.perf_counter()
        first_token = None
        received = 0
        try:
            async with self.session.request(
                spec.method, spec.url, data=self.data, headers=self.headers
            ) as resp:
                headers_at = time.perf_counter()
                if spec.stream:
                    markers, token = spec.ttft_markers, self.token
                    async for chunk in resp.content.iter_any():
                        received += len(chunk)
                        if first_token is None and (
                            token.search(chunk) is not None
                            if token is not None
                            else not markers or any(m in chunk for m in markers)
                        ):
                            first_token = time.perf_counter()
                else:
                    received = len(await resp.read())
                status = resp.status
        except (TimeoutError, aiohttp.ClientError):
            if result is not None:
                result.errors += 1
                result.statuses[0] += 1
            return
        end = time.perf_counter()
        if result is None:
            return
        result.statuses[status] += 1
        result.bytes_received += received
        if status >= 400:
            result.errors += 1
            return
        result.latencies.append(end - t0)
        result.ttfb.append(headers_at - t0)
        if first_token is not None:
            result.ttft.append(first_token - t0)

    async def worker(self, result: LoadResult | None) -> None:
        while time.perf_counter() < self.deadline and (self.limit is None or self.started < self.limit):
            self.started += 1
            await self.one(result)

    async def phase(self, result: LoadResult | None, limit: int | None, duration: float | None) -> None:
        self.started = 0
        self.limit = limit
        self.deadline = time.perf_counter() + duration if duration is not None else float("inf")
        workers = [asyncio.create_task(self.worker(result)) for _ in range(self.spec.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()


async def run_load(spec: LoadSpec, session: aiohttp.ClientSession | None = None) -> LoadResult:
    """Runs the load described by `spec` and returns what was measured."""
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            connector = aiohttp.TCPConnector(limit=spec.concurrency, limit_per_host=spec.concurrency)
            timeout = aiohttp.ClientTimeout(total=spec.timeout)
            session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=connector, timeout=timeout)
            )
        run = _Run(spec, session)
        if spec.warmup:
            await run.phase(None, spec.warmup, None)
        result = LoadResult(elapsed=0.0)
        start = time.perf_counter()
        await run.phase(result, spec.requests, spec.duration)
        result.elapsed = time.perf_counter() - start
        return result


def _parse_args(argv: list[str] | None) -> LoadSpec:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--method", default="POST")
    parser.add_argument("--body", help="JSON body (or @file)")
    parser.add_argument("--header", "-H", action="append", default=[], help="'Name: value' (repeatable)")
    parser.add_argument("--concurrency", "-c", type=int, default=1)
    parser.add_argument("--requests", "-n", type=int)
    parser.add_argument("--duration", "-d", type=float)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument(
        "--ttft-marker", action="append", default=[], help="bytes that mark a token (repeatable)"
    )
    parser.add_argument("--ttft-regex", help="a regular expression that marks a token (instead of markers)")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    body: bytes | None = None
    if args.body:
        text = Path(args.body[1:]).read_text() if args.body.startswith("@") else args.body
        body = json.dumps(json.loads(text)).encode()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    return LoadSpec(
        url=args.url,
        body=body,
        method=args.method,
        headers=headers,
        concurrency=args.concurrency,
        requests=args.requests,
        duration=args.duration if args.duration or args.requests else 5.0,
        stream=args.stream,
        ttft_markers=tuple(m.encode() for m in args.ttft_marker),
        ttft_regex=args.ttft_regex.encode() if args.ttft_regex else None,
        warmup=args.warmup,
        timeout=args.timeout,
    )


def main(argv: list[str] | None = None) -> None:
    spec = _parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        result = asyncio.run(run_load(spec))
    else:
        result = uvloop.run(run_load(spec))
    print(json.dumps(result.summary(), indent=2))


if __name__ == "__main__":
    main()
