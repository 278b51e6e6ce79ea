"""Batch jobs (issue 13): a 1,000-line batch through two gateway replicas over two vLLM
simulators, with the official `openai` SDK as the client.

Figures, all from one run:

- **time to complete** a 1,000-line batch (median over `--repeats`);
- **interactive time to first token, p95, while the batch runs vs without it**: the same
  paced streaming load (`--interactive` concurrent streams at `--tokens-per-second`) for the
  same time, alone (half just before the batch, half just after it) and with a batch
  submitted just before; ratio per repeat, median;
- **durability**: a 1,000-line batch during which one gateway replica is killed with SIGKILL
  (at 25% done) and Redis is killed with SIGKILL and restarted from its append-only file (at 50%
  done; `appendfsync always`): lines in / lines out / duplicates / lost.

Processes: a redis-server of its own (a free port, AOF on), two `tandem sim vllm`, two
`tandem gateway serve` sharing that Redis. Run:

    .venv/bin/python -m bench.batch_run                 # ~3-5 min on 2 cores
    .venv/bin/python -m bench.batch_run --repeats 1 --lines 200   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from openai import AsyncOpenAI

from bench.loadgen import LoadSpec, percentile, run_load
from bench.procs import LISTENING, TANDEM, Proc, Processes, free_port, spawn, wait_for_log, wait_http_ok
from bench.servers import SERVED

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PREFIX = "benchbatch:"
TOKEN = rb'"content":"[^"]'  # a streamed answer token (not the empty role chunk)


class Redis:
    """A redis-server with its append-only file synced on every write: what it acknowledged
    survives a SIGKILL."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory), "--save", "",
                "--appendonly", "yes", "--appendfsync", "always"]  # fmt: skip
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen([REDIS_SERVER, *args], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while (
            subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout
            != b"PONG\n"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def gateway_config(
    args: argparse.Namespace, sims: list[Proc], redis: Redis, http_port: int
) -> dict[str, Any]:
    return {
        "grpc": {"port": free_port()},
        "http": {"port": http_port},
        "pools": [
            {
                "name": "qwen3",
                "context_length": 32768,
                "endpoints": [
                    {"url": f"{s.url}/v1", "model": SERVED, "max_concurrency": args.max_concurrency}
                    for s in sims
                ],
            }
        ],
        "redis": {"url": redis.url, "key_prefix": PREFIX, "timeout_seconds": 1.0},
        "auth": {"required": True},
        "batch": {"share": args.share, "claim_idle_seconds": args.claim_idle, "sweep_seconds": 0.5},
        "shutdown_grace_seconds": 2,
    }


def start_sim(procs: Processes, logs: Path, name: str, args: argparse.Namespace) -> Proc:
    """A vLLM simulator with a prefill time and a decode pace, queueing nothing (the gateway's
    `max_concurrency` is what bounds each endpoint here)."""
    argv = [TANDEM, "sim", "vllm", "--model", SERVED, "--port", "0",
            "--output-tokens", str(args.output_tokens), "--reasoning-tokens", "0",
            "--tokens-per-second", str(args.tokens_per_second),
            "--ttft", str(args.engine_ttft), "--max-num-seqs", "4096"]  # fmt: skip
    proc = procs.add(spawn(name, argv, logs))
    proc.url = wait_for_log(proc, LISTENING).group(1)
    return proc


def start_replica(procs: Processes, logs: Path, name: str, config: dict[str, Any]) -> Proc:
    path = logs / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = procs.add(spawn(name, [TANDEM, "gateway", "serve", "--config", str(path)], logs))
    proc.url = f"http://127.0.0.1:{config['http']['port']}"
    proc.extra["config"] = str(path)
    wait_http_ok(proc, f"{proc.url}/readyz", 180)
    return proc


def create_key(config_path: str) -> str:
    out = subprocess.run(
        [TANDEM, "gateway", "keys", "create", "--tenant", "bench", "--config", config_path, "--json"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return str(json.loads(out)["key"])


def batch_file(lines: int, run: str) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"{run}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "qwen3",
                    "messages": [{"role": "user", "content": f"Summarise document {i}. /no_think"}],
                },
            }
        ).encode()
        + b"\n"
        for i in range(lines)
    )


async def submit(client: AsyncOpenAI, lines: int, run: str) -> str:
    uploaded = await client.files.create(file=(f"{run}.jsonl", batch_file(lines, run)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


async def progress(client: AsyncOpenAI, batch_id: str) -> tuple[str, int, int]:
    """(status, lines done, total), riding out a moment when the replica or Redis is away."""
    while True:
        try:
            b = await client.batches.retrieve(batch_id)
        except Exception:
            await asyncio.sleep(0.2)
            continue
        counts = b.request_counts
        done = counts.completed + counts.failed if counts else 0
        return b.status, done, counts.total if counts else 0


async def wait_for(
    client: AsyncOpenAI, batch_id: str, *, fraction: float = 1.0, finished: bool = True
) -> str:
    async with asyncio.timeout(600):  # a batch that never ends is a failed run, not a hung one
        return await _wait(client, batch_id, fraction, finished)


async def _wait(client: AsyncOpenAI, batch_id: str, fraction: float, finished: bool) -> str:
    while True:
        status, done, total = await progress(client, batch_id)
        if status in ("completed", "failed", "cancelled", "expired"):
            return status
        if not finished and total and done >= fraction * total:
            return status
        await asyncio.sleep(0.1)


async def interactive(url: str, key: str, args: argparse.Namespace) -> list[float]:
    spec = LoadSpec(
        url=f"{url}/v1/chat/completions",
        body={
            "model": "qwen3",
            "stream": True,
            "messages": [{"role": "user", "content": "Hello? /no_think"}],
        },
        headers={"Authorization": f"Bearer {key}"},
        concurrency=args.interactive,
        duration=args.interactive_seconds,
        stream=True,
        ttft_regex=TOKEN,
        warmup=args.interactive,
    )
    result = await run_load(spec)
    if result.errors:
        raise RuntimeError(f"interactive requests failed: {dict(result.statuses)}")
    return result.ttft


async def measure(args: argparse.Namespace, a: Proc, b: Proc, key: str, redis: Redis) -> dict[str, Any]:
    out: dict[str, Any] = {"repeats": []}
    async with AsyncOpenAI(base_url=f"{a.url}/v1", api_key=key, max_retries=0) as client:
        for r in range(args.repeats):
            # The baseline is measured half before the batch and half after it, so a drift in
            # what else the machine runs weighs on both sides alike.
            half = argparse.Namespace(**{**vars(args), "interactive_seconds": args.interactive_seconds / 2})
            alone = await interactive(a.url, key, half)
            started = time.perf_counter()
            batch_id = await submit(client, args.lines, f"r{r}")
            waiting = asyncio.ensure_future(wait_for(client, batch_id))
            during = await interactive(a.url, key, args)
            batch_running_after = not waiting.done()
            status = await waiting
            took = time.perf_counter() - started
            alone += await interactive(a.url, key, half)
            p95_alone, p95_during = percentile(alone, 95), percentile(during, 95)
            rep: dict[str, Any] = {
                "batch_status": status,
                "batch_seconds": round(took, 2),
                "batch_still_running_when_interactive_ended": batch_running_after,
                "ttft_p95_ms_alone": round(percentile(alone, 95) * 1000, 2),
                "ttft_p95_ms_with_batch": round(percentile(during, 95) * 1000, 2),
                "ttft_p50_ms_alone": round(percentile(alone, 50) * 1000, 2),
                "ttft_p50_ms_with_batch": round(percentile(during, 50) * 1000, 2),
                "streams_alone": len(alone),
                "streams_with_batch": len(during),
            }
            rep["ttft_p95_ratio"] = round(p95_during / p95_alone, 3)
            out["repeats"].append(rep)
            print(json.dumps(rep), flush=True)
        out["faults"] = await faults(args, client, b, redis)
    return out


async def faults(args: argparse.Namespace, client: AsyncOpenAI, victim: Proc, redis: Redis) -> dict[str, Any]:
    started = time.perf_counter()
    batch_id = await submit(client, args.lines, "fault")
    await wait_for(client, batch_id, fraction=0.25, finished=False)
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait()
    killed_replica_at = time.perf_counter() - started
    await wait_for(client, batch_id, fraction=0.5, finished=False)
    await asyncio.to_thread(redis.kill)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(redis.start)
    restarted_redis_at = time.perf_counter() - started
    status = await wait_for(client, batch_id)
    took = time.perf_counter() - started
    final = await client.batches.retrieve(batch_id)
    ids: list[str] = []
    for file_id in (final.output_file_id, final.error_file_id):
        if file_id:
            text = (await client.files.content(file_id)).text
            ids += [json.loads(line)["custom_id"] for line in text.splitlines()]
    expected = {f"fault-{i}" for i in range(args.lines)}
    counts = Counter(ids)
    result = {
        "status": status,
        "seconds": round(took, 2),
        "replica_killed_at_s": round(killed_replica_at, 2),
        "redis_restarted_at_s": round(restarted_redis_at, 2),
        "lines_in": args.lines,
        "lines_out": len(ids),
        "duplicates": sum(n - 1 for n in counts.values() if n > 1),
        "lost": len(expected - set(counts)),
        "failed_lines": final.request_counts.failed if final.request_counts else None,
    }
    print(json.dumps(result), flush=True)
    return result


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    reps = res["repeats"]

    def med(key: str) -> dict[str, float]:
        vals = [r[key] for r in reps]
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}

    return {
        "batch_seconds": med("batch_seconds"),
        "ttft_p95_ms_alone": med("ttft_p95_ms_alone"),
        "ttft_p95_ms_with_batch": med("ttft_p95_ms_with_batch"),
        "ttft_p95_ratio": med("ttft_p95_ratio"),
        "faults": res["faults"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--tokens-per-second", type=float, default=40.0, help="engine pace (20-50: a real GPU's)"
    )
    parser.add_argument("--output-tokens", type=int, default=32, help="tokens per answer")
    parser.add_argument(
        "--engine-ttft", type=float, default=0.1, help="the simulated engine's prefill time (s)"
    )
    parser.add_argument("--max-concurrency", type=int, default=48, help="per endpoint")
    parser.add_argument("--share", type=float, default=0.25, help="batch.share (per replica)")
    parser.add_argument("--claim-idle", type=float, default=5.0, help="batch.claim_idle_seconds")
    parser.add_argument("--interactive", type=int, default=8, help="concurrent interactive streams")
    parser.add_argument("--interactive-seconds", type=float, default=8.0)
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()
    logs = Path(tempfile.mkdtemp(prefix="tandem-batch-bench-"))
    redis = Redis(logs)
    redis.start()
    try:
        with Processes().scope() as procs:
            sims = [start_sim(procs, logs, f"vllm-{i}", args) for i in range(2)]
            a = start_replica(procs, logs, "gateway-a", gateway_config(args, sims, redis, free_port()))
            b = start_replica(procs, logs, "gateway-b", gateway_config(args, sims, redis, free_port()))
            key = create_key(a.extra["config"])
            res = asyncio.run(measure(args, a, b, key, redis))
    finally:
        redis.stop()
        if not args.keep_logs:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            print(f"logs: {logs}", file=sys.stderr)
    res["summary"] = summarise(res)
    res["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    res["machine"] = {"cpus": os.cpu_count(), "load_at_start": load_at_start, "load_at_end": os.getloadavg()}
    res["summary"]["machine"] = res["machine"]
    print(json.dumps(res["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
