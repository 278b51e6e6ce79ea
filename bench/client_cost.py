"""What the engine hop costs the caller's process: aiohttp's bare client against Tandem's
`Transport` (`tandem/transport.py`: aiohttp's client with Tandem's proxy, TLS, timeout and reuse
rules), side by side in one run, against the vLLM simulator (its own processes, one per pace).
The figures for the hand-written `EngineClient` that `Transport` replaced were measured with
this command at commit 32764ff (docs/benchmarks.md, "Engine hop").

    python -m bench.client_cost [--rounds 3] [--requests 3000] [--quick] [--json]

Cases, each run by both clients (they take turns within a round; the order flips every round):

- non-stream: 16-token answers read whole and parsed (`orjson.loads`), c=1 and c=64;
- paced streams: 64-token answers at 25 and at 50 tokens/s, one token per write (the
  simulator's `--tokens-per-second`), c=1 and c=64;
- burst streams: 64-token answers as fast as the simulator writes them, c=64.

A stream is read the way a relay reads it: chunks as they arrive (aiohttp
`resp.content.iter_any()`, `Transport`'s `Response.readany()` then `drain()`), nothing parsed
beyond looking for `data: [DONE]` (a stream that lacks it fails the run). c=64 is 64 tasks
sharing one client (one `ClientSession`, one `Transport`). Both clients are set up as the gateway sets up its
own: connect timeout 3 s; a stream has a 60 s limit between reads and 600 s in all (aiohttp:
`ClientTimeout(total=600, sock_connect=3, sock_read=60)`); a non-stream call 600 s for both.

Per case, client and round, after a warm-up on the same client (which opens its connections):
this process's CPU time (`time.process_time`, all threads) and the wall time over the measured
calls, per call and, for streams, per streamed token (answer tokens: 64 per stream; the role and
the final chunk are not counted as tokens); and the TCP connections each client opened, counted
where each connector creates one (nothing per request: an aiohttp `TraceConfig` would send its
signals on every request). Prints medians (min-max) over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson

from tandem.transport import Transport

TANDEM = Path(sys.executable).with_name("tandem")
LISTENING = re.compile(r"listening on (http://\S+)")
MODEL = "Qwen/Qwen3-14B"
HEADERS = {"Content-Type": "application/json"}
DONE = b"data: [DONE]"
CONNECT_S = 3.0  # the gateway's defaults (gateway/config.py)
FIRST_TOKEN_S = 60.0
TOTAL_S = 600.0
AIOHTTP, TANDEM_TRANSPORT = "aiohttp.ClientSession", "tandem Transport"


def _body(*, stream: bool, max_tokens: int | None = None) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello to the line-3 team."}],
        "chat_template_kwargs": {"enable_thinking": False},
    }
    if stream:
        body["stream"] = True
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return orjson.dumps(body)


# --- the two clients -----------------------------------------------------------------------------


class Client(Protocol):
    async def call(self, url: str, body: bytes) -> int: ...  # a non-stream call; body bytes read
    async def stream(self, url: str, body: bytes) -> int: ...  # a stream read to its end; bytes read
    async def close(self) -> None: ...
    def opened(self) -> int: ...  # TCP connections opened so far


def _ends(seen: bool, tail: bytes, chunk: bytes) -> bool:
    """Whether `data: [DONE]` has come, counting one split across two chunks."""
    return seen or DONE in chunk or DONE in tail + chunk[: len(DONE)]


class AiohttpClient:
    def __init__(self) -> None:
        timeout = aiohttp.ClientTimeout(total=TOTAL_S, sock_connect=CONNECT_S, sock_read=FIRST_TOKEN_S)
        self.connector = _CountingConnector()
        self.session = aiohttp.ClientSession(
            connector=self.connector,
            skip_auto_headers=("User-Agent",),
            auto_decompress=False,
            timeout=timeout,
        )
        self.whole = aiohttp.ClientTimeout(total=TOTAL_S, sock_connect=CONNECT_S, sock_read=TOTAL_S)

    async def call(self, url: str, body: bytes) -> int:
        async with self.session.post(url, data=body, headers=HEADERS, timeout=self.whole) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
            orjson.loads(data)
            return len(data)

    async def stream(self, url: str, body: bytes) -> int:
        async with self.session.post(url, data=body, headers=HEADERS) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            size, seen, tail = 0, False, b""
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                seen = _ends(seen, tail, chunk)
                tail = chunk[-len(DONE) :]
            if not seen:
                raise RuntimeError("a stream ended without data: [DONE]")
            return size

    async def close(self) -> None:
        await self.session.close()

    def opened(self) -> int:
        return self.connector.opened


class _CountingConnector(aiohttp.TCPConnector):
    opened = 0

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.opened += 1
        return await super()._create_connection(*args, **kwargs)


class TransportClient:
    def __init__(self) -> None:
        self.transport = Transport()

    async def call(self, url: str, body: bytes) -> int:
        resp = await self.transport.request(
            "POST", url, body, HEADERS, connect_s=CONNECT_S, read_s=TOTAL_S, total_s=TOTAL_S
        )
        try:
            data = await resp.read()
        finally:
            resp.release()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        orjson.loads(data)
        return len(data)

    async def stream(self, url: str, body: bytes) -> int:
        resp = await self.transport.request(
            "POST", url, body, HEADERS, connect_s=CONNECT_S, read_s=FIRST_TOKEN_S, total_s=TOTAL_S
        )
        try:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            size, seen, tail = 0, False, b""
            while not seen and (chunk := await resp.readany()):
                size += len(chunk)
                seen = _ends(seen, tail, chunk)
                tail = chunk[-len(DONE) :]
            await resp.drain()  # as the relay does after [DONE]
        finally:
            resp.release()
        if not seen:
            raise RuntimeError("a stream ended without data: [DONE]")
        return size

    async def close(self) -> None:
        await self.transport.close()

    def opened(self) -> int:
        return self.transport.connections_opened


CLIENTS: dict[str, Callable[[], Client]] = {AIOHTTP: AiohttpClient, TANDEM_TRANSPORT: TransportClient}


# --- the cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sim:
    tokens: int
    tokens_per_second: float  # 0 = as fast as possible


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    sim: str
    stream: bool
    concurrency: int
    per_task: int  # measured calls per task
    warm_per_task: int
    tokens: int = 0  # streamed answer tokens per call (0: not a stream)


@dataclass(frozen=True)
class Sizes:
    requests: int  # non-stream calls per case
    tokens: int  # tokens of a streamed answer
    paced_c1: int  # streams at c=1, per pace
    paced_c64: int  # streams per task at c=64, per pace
    burst_c64: int  # streams per task, burst


DEFAULT = Sizes(requests=3000, tokens=64, paced_c1=4, paced_c64=2, burst_c64=16)
QUICK = Sizes(requests=100, tokens=8, paced_c1=1, paced_c64=1, burst_c64=2)


def sims(sizes: Sizes) -> dict[str, Sim]:
    return {
        "nonstream": Sim(16, 0.0),
        "burst": Sim(sizes.tokens, 0.0),
        "paced25": Sim(sizes.tokens, 25.0),
        "paced50": Sim(sizes.tokens, 50.0),
    }


def cases(sizes: Sizes) -> list[Case]:
    n, t = sizes.requests, sizes.tokens
    return [
        Case("nonstream_c1", "non-stream, 16 tokens, c=1", "nonstream", False, 1, n, min(200, n)),
        Case("nonstream_c64", "non-stream, 16 tokens, c=64", "nonstream", False, 64, max(1, n // 64), 4),
        Case("paced25_c1", f"stream, {t} tokens at 25/s, c=1", "paced25", True, 1, sizes.paced_c1, 10, t),
        Case("paced50_c1", f"stream, {t} tokens at 50/s, c=1", "paced50", True, 1, sizes.paced_c1, 10, t),
        Case("paced25_c64", f"stream, {t} tokens at 25/s, c=64", "paced25", True, 64, sizes.paced_c64, 2, t),
        Case("paced50_c64", f"stream, {t} tokens at 50/s, c=64", "paced50", True, 64, sizes.paced_c64, 2, t),
        Case("burst_c64", f"stream, {t} tokens at once, c=64", "burst", True, 64, sizes.burst_c64, 4, t),
    ]


@dataclass
class Sample:
    calls: int
    cpu_s: float
    wall_s: float
    opened_warm: int  # connections opened during the warm-up
    opened: int  # connections opened during the measured calls


async def _run(name: str, case: Case, url: str) -> Sample:
    client = CLIENTS[name]()
    # The warm-up streams ask for one token: they open the connections without the pacing's wait.
    warm_body = _body(stream=case.stream, max_tokens=1 if case.stream else None)
    body = _body(stream=case.stream)
    op = client.stream if case.stream else client.call

    async def task(payload: bytes, calls: int) -> None:
        for _ in range(calls):
            await op(url, payload)

    def wave(payload: bytes, calls: int) -> Awaitable[list[None]]:
        return asyncio.gather(*(task(payload, calls) for _ in range(case.concurrency)))

    try:
        start = client.opened()
        await wave(warm_body, case.warm_per_task)
        warm = client.opened()
        cpu, wall = time.process_time(), time.perf_counter()
        await wave(body, case.per_task)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return Sample(case.per_task * case.concurrency, cpu, wall, warm - start, client.opened() - warm)
    finally:
        await client.close()


# --- the simulators ------------------------------------------------------------------------------


@contextmanager
def _simulators(specs: dict[str, Sim]) -> Iterator[dict[str, str]]:
    """One `tandem sim vllm` process per pace; yields their chat URLs by name."""
    with tempfile.TemporaryDirectory(prefix="client-cost-") as tmp:
        procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        try:
            for name, sim in specs.items():
                log = Path(tmp) / f"{name}.log"
                with log.open("wb") as out:
                    args = [str(TANDEM), "sim", "vllm", "--model", MODEL, "--port", "0"]
                    args += ["--output-tokens", str(sim.tokens), "--reasoning-tokens", "0"]
                    args += ["--tokens-per-second", str(sim.tokens_per_second), "--max-num-seqs", "4096"]
                    procs[name] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT), log
            urls = {name: f"{_wait(proc, log)}/v1/chat/completions" for name, (proc, log) in procs.items()}
            yield urls
        finally:
            for proc, _ in procs.values():
                proc.terminate()
            for proc, _ in procs.values():
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _wait(proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if match := LISTENING.search(log.read_text(errors="replace")):
            return match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"a vLLM simulator did not start:\n{log.read_text(errors='replace')[-2000:]}")


# --- the run -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "aiohttp": aiohttp.__version__,
    }


def run(sizes: Sizes, rounds: int) -> dict[str, Any]:
    import uvloop

    meta = machine()
    todo = cases(sizes)
    raw: dict[str, dict[str, list[Sample]]] = {c.key: {name: [] for name in CLIENTS} for c in todo}
    began = time.monotonic()
    with _simulators(sims(sizes)) as urls:
        for r in range(rounds):
            order = list(CLIENTS) if r % 2 == 0 else list(reversed(CLIENTS))
            for case in todo:
                for name in order:
                    raw[case.key][name].append(uvloop.run(_run(name, case, urls[case.sim])))
    meta["load_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["seconds"] = round(time.monotonic() - began, 1)
    return {
        "machine": meta,
        "rounds": rounds,
        "sizes": asdict(sizes),
        "cases": [
            {**asdict(c), "clients": {n: _figures(c, samples) for n, samples in raw[c.key].items()}}
            for c in todo
        ],
    }


def _figures(case: Case, samples: list[Sample]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {
        "calls": [s.calls for s in samples],
        "cpu_us_per_call": [s.cpu_s / s.calls * 1e6 for s in samples],
        "wall_us_per_call": [s.wall_s / s.calls * 1e6 for s in samples],
        "connections_warmup": [s.opened_warm for s in samples],
        "connections_measured": [s.opened for s in samples],
        "connections_per_100_calls": [s.opened / s.calls * 100 for s in samples],
    }
    if case.tokens:
        out["cpu_us_per_token"] = [s.cpu_s / (s.calls * case.tokens) * 1e6 for s in samples]
        # Each task reads its streams one after another: the wall time over their count is how
        # long one stream took (64 tokens at 25/s: 2.56 s at the least).
        out["ms_per_stream"] = [s.wall_s / case.per_task * 1e3 for s in samples]
    return out


# --- the report ----------------------------------------------------------------------------------


def _show(values: list[float], digits: int = 1) -> str:
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def markdown(out: dict[str, Any]) -> str:
    m = out["machine"]
    lines = [
        f"{m['cores']} cores, Python {m['python']}, aiohttp {m['aiohttp']}, load average at start "
        f"{', '.join(map(str, m['load_start']))} (end {', '.join(map(str, m['load_end']))}); "
        f"{out['rounds']} rounds, {m['seconds']} s; median (min-max) over the rounds. CPU: this "
        "process's CPU time over the measured calls. Connections: TCP connections the client opened "
        "(the warm-up opens them; per 100 measured calls, any it opened after).",
        "",
        "| non-stream | client | calls | CPU us per call | wall us per call (wall / calls) | "
        "connections opened: warm-up, per 100 measured calls |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for case in out["cases"]:
        if case["stream"]:
            continue
        for name, f in case["clients"].items():
            lines.append(
                f"| {case['label']} | {name} | {f['calls'][0]} | {_show(f['cpu_us_per_call'])} | "
                f"{_show(f['wall_us_per_call'])} | {_connections(case, f)} |"
            )
    lines += [
        "",
        "| stream (answer tokens) | client | streams | CPU us per token | CPU us per stream | "
        "ms per stream (its duration) | connections opened: warm-up, per 100 measured streams |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case in out["cases"]:
        if not case["stream"]:
            continue
        for name, f in case["clients"].items():
            lines.append(
                f"| {case['label']} | {name} | {f['calls'][0]} | {_show(f['cpu_us_per_token'])} | "
                f"{_show(f['cpu_us_per_call'])} | {_show(f['ms_per_stream'], 2)} | {_connections(case, f)} |"
            )
    return "\n".join(lines)


def _connections(case: dict[str, Any], f: dict[str, list[float]]) -> str:
    warm = case["warm_per_task"] * case["concurrency"]
    return f"{_show(f['connections_warmup'], 0)} in {warm}; {_show(f['connections_per_100_calls'])}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="repeats of every case (default 3; 1 quick)")
    parser.add_argument("--requests", type=int, default=None, help="non-stream calls per case (default 3000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few calls, 8-token streams")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULT
    if args.requests is not None:
        sizes = Sizes(args.requests, sizes.tokens, sizes.paced_c1, sizes.paced_c64, sizes.burst_c64)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    out = run(sizes, rounds)
    print(json.dumps(out) if args.json else markdown(out))


if __name__ == "__main__":
    main()
