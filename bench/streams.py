"""Streamed chat requests timed at the caller, sent open-loop: each arrives on its own schedule,
whatever the ones before it are doing (Poisson arrivals, or a burst), as users do.

A request counts as answered only when it got HTTP 200, a first content chunk and `[DONE]`;
anything else (an error status, a cut stream, no answer) is failed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PROMPT = [{"role": "user", "content": "Say hello. /no_think"}]


def chat(model: str = "qwen3") -> dict[str, Any]:
    return {"model": model, "messages": PROMPT, "stream": True}


@dataclass(slots=True)
class Outcome:
    """What the callers got: one time to first token per answered request (seconds from its
    send), and when each answered one arrived and finished (`time.monotonic()`)."""

    ttft_s: list[float] = field(default_factory=list)
    first_at: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)  # 0: no answer (a connection error)
    failed: int = 0
    sent: int = 0
    finished_at: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.ttft_s)


async def one(session: aiohttp.ClientSession, url: str, body: dict[str, Any], out: Outcome) -> None:
    """Sends one streamed request and records its outcome in `out`."""
    out.sent += 1
    started = time.monotonic()
    first: float | None = None
    try:
        async with session.post(url, json=body) as resp:
            out.statuses[resp.status] = out.statuses.get(resp.status, 0) + 1
            if resp.status != 200:
                out.failed += 1
                await resp.read()
                return
            done = False
            async for line in resp.content:
                if first is None and line.startswith(b"data: {"):
                    first = time.monotonic()
                done = done or line.startswith(b"data: [DONE]")
    except (aiohttp.ClientError, TimeoutError):
        out.statuses[0] = out.statuses.get(0, 0) + 1
        out.failed += 1
        return
    if first is None or not done:
        out.failed += 1
        return
    out.ttft_s.append(first - started)
    out.first_at.append(first)
    out.finished_at = max(out.finished_at, time.monotonic())


def session(timeout_s: float = 300.0) -> aiohttp.ClientSession:
    """A client session with no connection limit (each request its own connection if need be)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


async def poisson(
    http: aiohttp.ClientSession,
    urls: Sequence[str],
    rate: float,
    seconds: float,
    rng: random.Random,
    out: Outcome,
    body: dict[str, Any] | None = None,
) -> None:
    """Requests arriving at random, `rate` a second on average, for `seconds`, spread over
    `urls` in turn; returns when every one has its outcome."""
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    at = 0.0
    while rate > 0:
        at += rng.expovariate(rate)
        if at >= seconds:
            break
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        url = urls[len(tasks) % len(urls)]
        tasks.append(asyncio.create_task(one(http, url, body or chat(), out)))
    await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
    await asyncio.gather(*tasks)


async def burst(
    http: aiohttp.ClientSession,
    url: str,
    count: int,
    concurrency: int,
    out: Outcome,
    body: dict[str, Any] | None = None,
) -> None:
    """`count` requests, at most `concurrency` at a time (a batch client)."""
    gate = asyncio.Semaphore(concurrency)

    async def gated() -> None:
        async with gate:
            await one(http, url, body or chat(), out)

    await asyncio.gather(*(gated() for _ in range(count)))


async def closed_loop(
    http: aiohttp.ClientSession,
    urls: Sequence[str],
    concurrency: int,
    seconds: float,
    out: Outcome,
    body: dict[str, Any] | None = None,
) -> float:
    """`concurrency` callers, each sending its next request when the last is answered, for
    `seconds`; requests still running at the end finish and count. Returns the seconds from the
    first send to the last answer: answers over that are the pool's throughput kept full."""
    started = time.monotonic()
    deadline = started + seconds

    async def caller(index: int) -> None:
        while time.monotonic() < deadline:
            await one(http, urls[index % len(urls)], body or chat(), out)

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return max(out.finished_at - started, 1e-9)
