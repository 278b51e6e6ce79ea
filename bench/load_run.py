"""One measured load run, in its own process: what the runner (`bench.run_all`) starts for every
case, so the load generator never shares a process (or, when pinned, a core) with the server
it measures.

    python -m bench.load_run '<job as JSON>'

A job is `{"kind": "http" | "grpc" | "hold", ...}` (see `Job`). For "http" and "grpc" it warms up
for `warmup_s` seconds, reads the CPU time of every process in `watch` (pids, from /proc), runs
the measured phase, reads them again, and prints one JSON object: the load summary plus the CPU
seconds each watched process spent during exactly that phase. For "hold" it opens `concurrency`
streams, waits for the first token of each, prints `{"holding": N, ...}`, keeps them open until
a line arrives on stdin, then closes them and prints the final count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from bench.grpc_load import PROMPT, GrpcSpec, channel, run_grpc_load
from bench.loadgen import LoadResult, LoadSpec, percentile, run_load
from bench.procs import cpu_seconds


@dataclass(slots=True)
class Job:
    kind: str  # "http", "grpc" or "hold"
    target: str  # URL (http, hold) or host:port (grpc)
    body: dict[str, Any] = field(default_factory=dict)  # http body; grpc: {"model", "prompt"}
    headers: dict[str, str] = field(default_factory=dict)  # HTTP headers or gRPC metadata
    concurrency: int = 1
    duration: float | None = None
    requests: int | None = None
    stream: bool = False
    ttft_regex: str | None = None
    warmup_s: float = 0.0
    watch: dict[str, int] = field(default_factory=dict)  # name -> pid
    timeout: float = 60.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _cpu(watch: dict[str, int]) -> dict[str, float | None]:
    return {name: cpu_seconds(pid) for name, pid in watch.items()}


def _delta(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, b in before.items():
        a = after.get(name)
        out[name] = None if a is None or b is None else a - b
    return out


def _summary(result: LoadResult) -> dict[str, Any]:
    ms = 1000.0
    out = result.summary()
    # unrounded, for differences of sub-millisecond figures
    out["latency_s_p50"] = percentile(result.latencies, 50)
    out["ttft_s_p50"] = percentile(result.ttft, 50) if result.ttft else None
    out["ttft_ms_p99"] = round(percentile(result.ttft, 99) * ms, 3) if result.ttft else None
    out["statuses"] = {str(k): v for k, v in result.statuses.items()}
    return out


async def _http(job: Job) -> dict[str, Any]:
    spec = LoadSpec(
        url=job.target,
        body=job.body,
        headers=job.headers,
        concurrency=job.concurrency,
        requests=job.requests,
        duration=job.duration,
        stream=job.stream,
        ttft_regex=job.ttft_regex.encode() if job.ttft_regex else None,
        timeout=job.timeout,
    )
    connector = aiohttp.TCPConnector(limit=job.concurrency, limit_per_host=job.concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=job.timeout)
    ) as session:
        if job.warmup_s > 0:
            warm = LoadSpec(
                url=spec.url,
                body=spec.body,
                headers=spec.headers,
                concurrency=spec.concurrency,
                duration=job.warmup_s,
                stream=spec.stream,
                timeout=job.timeout,
            )
            await run_load(warm, session)
        before = _cpu(job.watch)
        result = await run_load(spec, session)
        after = _cpu(job.watch)
    return {**_summary(result), "cpu_s": _delta(before, after)}


async def _grpc(job: Job) -> dict[str, Any]:

    spec = GrpcSpec(
        target=job.target,
        model=str(job.body.get("model", "qwen3")),
        prompt=str(job.body.get("prompt", PROMPT)),
        metadata=tuple((k.lower(), v) for k, v in job.headers.items()),
        concurrency=job.concurrency,
        requests=job.requests,
        duration=job.duration,
        timeout=job.timeout,
    )
    async with channel(spec.target) as chan:
        if job.warmup_s > 0:
            await run_grpc_load(
                GrpcSpec(
                    target=spec.target,
                    model=spec.model,
                    prompt=spec.prompt,
                    metadata=spec.metadata,
                    concurrency=spec.concurrency,
                    duration=job.warmup_s,
                ),
                chan,
            )
        before = _cpu(job.watch)
        result = await run_grpc_load(spec, chan)
        after = _cpu(job.watch)
    return {**_summary(result), "cpu_s": _delta(before, after)}


async def _hold(job: Job) -> dict[str, Any]:
    """Opens `concurrency` streams and keeps them open (reading slowly) until told to stop."""
    token = re.compile(job.ttft_regex.encode()) if job.ttft_regex else None
    release = asyncio.Event()
    opened = 0
    failed = 0
    all_in = asyncio.Event()

    def settled() -> None:
        if opened + failed >= job.concurrency:
            all_in.set()

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal opened, failed
        counted = False
        try:
            async with session.post(job.target, json=job.body, headers=job.headers) as resp:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                async for chunk in resp.content.iter_any():
                    if not counted and (token is None or token.search(chunk)):
                        counted = True
                        opened += 1
                        settled()
                        await release.wait()
                        return
        except (aiohttp.ClientError, TimeoutError):
            pass
        if not counted:
            failed += 1
            settled()

    connector = aiohttp.TCPConnector(limit=job.concurrency, limit_per_host=job.concurrency)
    started = time.perf_counter()
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=job.timeout)
    ) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(job.concurrency)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), timeout=job.timeout)
        print(
            json.dumps({"holding": opened, "failed": failed, "open_s": time.perf_counter() - started}),
            flush=True,
        )
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)
        release.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"held": opened, "failed": failed}


async def run_job(job: Job) -> dict[str, Any]:
    if job.kind == "http":
        return await _http(job)
    if job.kind == "grpc":
        return await _grpc(job)
    if job.kind == "hold":
        return await _hold(job)
    raise ValueError(f"unknown job kind {job.kind!r}")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m bench.load_run '<job as JSON>'")
    job = Job(**json.loads(args[0]))
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        out = asyncio.run(run_job(job))
    else:
        out = uvloop.run(run_job(job))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
