"""`tandem up`: the whole stack on one machine, for trying Tandem and for development.

It runs each part as its own process, as production does: a simulated Ollama and two
simulated vLLM endpoints (free ports), the gateway (gRPC 50051, HTTP 8080) in front of the
vLLM pair, and the edge agent (11435) in front of Ollama and the gateway. State is in memory
(no Redis) and the gateway asks for no API key. Ctrl-C (or SIGTERM) stops everything, edge
first, so in-flight streams drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson
import yaml

from tandem.transport import Transport, Unreachable

LOCAL_MODEL = "qwen3:14b"
CLOUD_MODEL = "Qwen/Qwen3-14B"
POOL = "qwen3"
_LISTENING = re.compile(rb"listening on (http://\S+)")


@dataclass
class Part:
    """One process of the stack."""

    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    url: str = ""
    log: list[bytes] = field(default_factory=list)


def _tandem() -> list[str]:
    # The same interpreter and code as this process, whether installed or run from a checkout.
    return [sys.executable, "-c", "from cli.main import main; main()"]


async def _spawn(part: Part, env: dict[str, str]) -> None:
    part.proc = await asyncio.create_subprocess_exec(
        *part.argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches `tandem up` only; it stops the parts in order
    )


async def _pump(part: Part, verbose: bool) -> None:
    """Forwards a part's output (with its name) when verbose; keeps the tail for errors."""
    assert part.proc is not None and part.proc.stdout is not None
    async for line in part.proc.stdout:
        part.log = [*part.log[-40:], line]
        if verbose:
            sys.stderr.write(f"[{part.name}] {line.decode(errors='replace')}")


async def _listening_url(part: Part, timeout_s: float) -> str:
    """The URL a simulator prints once it listens."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in part.log:
            if m := _LISTENING.search(line):
                return m.group(1).decode()
        _check_alive(part)
        await asyncio.sleep(0.05)
    raise click.ClickException(f"{part.name} did not start within {timeout_s:g}s")


async def _wait_ready(
    part: Part, url: str, timeout_s: float, *, until: Callable[[dict[str, Any]], bool] = lambda _: True
) -> None:
    """Polls `url` until it answers 200 with a JSON body for which `until` holds."""
    deadline = time.monotonic() + timeout_s
    transport = Transport()
    try:
        while time.monotonic() < deadline:
            _check_alive(part)
            with contextlib.suppress(Unreachable, TimeoutError, orjson.JSONDecodeError):
                r = await transport.request("GET", url, total_s=1.0)
                body = await r.read()
                r.release()
                if r.status == 200 and until(orjson.loads(body)):
                    return
            await asyncio.sleep(0.1)
    finally:
        await transport.close()
    raise click.ClickException(f"{part.name} was not ready within {timeout_s:g}s")


def _uplink_closed(readyz: dict[str, Any]) -> bool:
    # The edge's breaker opened while the gateway was still starting; until a probe closes it,
    # thinking work would run locally (reason=degraded). The banner waits for that.
    return bool(readyz.get("uplink", {}).get("breaker") == "closed")


def _check_alive(part: Part) -> None:
    if part.proc is not None and part.proc.returncode is not None:
        tail = b"".join(part.log[-15:]).decode(errors="replace")
        last = tail.strip().splitlines()[-1:] or [""]
        if last[0].startswith("Error: "):  # the part said what went wrong, in one line
            raise click.ClickException(f"{part.name}: {last[0].removeprefix('Error: ')}")
        raise click.ClickException(f"{part.name} exited with {part.proc.returncode}:\n{tail}")


async def _stop(part: Part, grace_s: float) -> None:
    if part.proc is None or part.proc.returncode is not None:
        return
    part.proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(part.proc.wait(), grace_s)
    except TimeoutError:
        part.proc.kill()
        await part.proc.wait()


def _configs(
    workdir: Path, *, ollama_url: str, vllm_urls: list[str], grpc_port: int, http_port: int, edge_port: int
) -> tuple[Path, Path]:
    gateway = {
        "grpc": {"host": "127.0.0.1", "port": grpc_port},
        "http": {"host": "127.0.0.1", "port": http_port},
        "auth": {"required": False},
        "pools": [
            {
                "name": POOL,
                "aliases": [LOCAL_MODEL, "qwen3-14b"],
                "context_length": 32768,
                "endpoints": [
                    {"url": f"{u}/v1", "model": CLOUD_MODEL, "max_concurrency": 128} for u in vllm_urls
                ],
            }
        ],
        "shutdown_grace_seconds": 10,
    }
    edge = {
        "listen": {"host": "127.0.0.1", "port": edge_port},
        "ollama": {"url": ollama_url, "model": LOCAL_MODEL, "num_parallel": 4, "max_queue": 8},
        "uplink": {"address": f"127.0.0.1:{grpc_port}"},
        "edge_id": "tandem-up",
        "group": "local",
        "shutdown_grace_seconds": 10,
    }
    gw_path, edge_path = workdir / "gateway.yaml", workdir / "edge.yaml"
    gw_path.write_text(yaml.safe_dump(gateway, sort_keys=False))
    edge_path.write_text(yaml.safe_dump(edge, sort_keys=False))
    return gw_path, edge_path


def _banner(edge_port: int, http_port: int, grpc_port: int, parts: list[Part]) -> str:
    engines = "\n".join(f"  {p.name:<10} {p.url}" for p in parts if p.url)
    return f"""
Tandem is up.
  edge agent  http://127.0.0.1:{edge_port}   (OpenAI /v1, Ollama /api)
  gateway     http://127.0.0.1:{http_port}    (OpenAI /v1)   grpc 127.0.0.1:{grpc_port}
  ops page    http://127.0.0.1:{http_port}/ops/
{engines}

Try:
  # OpenAI API on the edge: a quick question stays on the box
  curl -s localhost:{edge_port}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model":"{LOCAL_MODEL}","messages":[{{"role":"user","content":"Say hello /no_think"}}]}}'
  # Ollama API on the edge: thinking work goes up to the gateway
  curl -s localhost:{edge_port}/api/chat -d '{{"model":"{LOCAL_MODEL}","think":true,"stream":false,
    "messages":[{{"role":"user","content":"Prove there are infinitely many primes."}}]}}'
  # The gateway's OpenAI face
  curl -s localhost:{http_port}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model":"{POOL}","reasoning_effort":"high","messages":[{{"role":"user","content":"2+2?"}}]}}'
  # The gateway's gRPC face (grpcurl uses server reflection)
  grpcurl -plaintext -d '{{"model":"{POOL}","messages":[{{"role":"ROLE_USER","content":"hi"}}]}}' \\
    127.0.0.1:{grpc_port} tandem.v1.Gateway/Chat

Ctrl-C stops everything.
"""


async def run_stack(
    *,
    edge_port: int,
    http_port: int,
    grpc_port: int,
    tokens_per_second: float,
    verbose: bool,
    ready_file: Path | None = None,
) -> int:
    env = {**os.environ, "TANDEM_LOG_FORMAT": os.environ.get("TANDEM_LOG_FORMAT", "json")}
    sim_speed = ["--tokens-per-second", str(tokens_per_second)]
    ollama = Part("ollama", [*_tandem(), "sim", "ollama", "--port", "0", "--model", LOCAL_MODEL, *sim_speed])
    vllms = [
        Part(
            f"vllm-{i}",
            [*_tandem(), "sim", "vllm", "--port", "0", "--model", CLOUD_MODEL, "--seed", str(i), *sim_speed],
        )
        for i in (1, 2)
    ]
    parts: list[Part] = [ollama, *vllms]
    pumps: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="tandem-up-") as tmp:
        try:
            for part in parts:
                await _spawn(part, env)
                pumps.append(asyncio.create_task(_pump(part, verbose)))
            for part in parts:
                part.url = await _listening_url(part, 30)
            gw_cfg, edge_cfg = _configs(
                Path(tmp),
                ollama_url=ollama.url,
                vllm_urls=[v.url for v in vllms],
                grpc_port=grpc_port,
                http_port=http_port,
                edge_port=edge_port,
            )
            gateway = Part("gateway", [*_tandem(), "gateway", "serve", "--config", str(gw_cfg)])
            edge = Part("edge", [*_tandem(), "edge", "serve", "--config", str(edge_cfg)])
            for part in (gateway, edge):
                parts.append(part)
                await _spawn(part, env)
                pumps.append(asyncio.create_task(_pump(part, verbose)))
            # The gateway imports litellm (several seconds); the edge is up long before.
            await _wait_ready(edge, f"http://127.0.0.1:{edge_port}/readyz", 60)
            await _wait_ready(gateway, f"http://127.0.0.1:{http_port}/readyz", 120)
            await _wait_ready(edge, f"http://127.0.0.1:{edge_port}/readyz", 30, until=_uplink_closed)
            click.echo(_banner(edge_port, http_port, grpc_port, parts))
            if ready_file is not None:
                await asyncio.to_thread(ready_file.write_text, "ready\n")
            dead = asyncio.create_task(_first_exit(parts))
            done, _ = await asyncio.wait(
                [dead, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            if dead in done:
                _check_alive(dead.result())
            return 0
        finally:
            # Edge first (it drains the streams it relays), then the gateway, then the engines.
            for part in reversed(parts):
                await _stop(part, 15)
            for pump in pumps:
                pump.cancel()


async def _first_exit(parts: list[Part]) -> Part:
    procs = {asyncio.create_task(p.proc.wait()): p for p in parts if p.proc is not None}
    done, pending = await asyncio.wait(procs, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return procs[next(iter(done))]


@click.command()
@click.option("--edge-port", default=11435, show_default=True, help="Edge agent HTTP port.")
@click.option("--http-port", default=8080, show_default=True, help="Gateway OpenAI HTTP port.")
@click.option("--grpc-port", default=50051, show_default=True, help="Gateway gRPC port.")
@click.option(
    "--tokens-per-second",
    default=50.0,
    show_default=True,
    help="Decode speed of the simulated engines (0: as fast as possible).",
)
@click.option("--verbose", "-v", is_flag=True, help="Show every part's log lines.")
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    hidden=True,
    help="Written once everything is ready (for tests and scripts).",
)
def up(
    edge_port: int,
    http_port: int,
    grpc_port: int,
    tokens_per_second: float,
    verbose: bool,
    ready_file: Path | None,
) -> None:
    """Run the whole stack here: simulated Ollama and vLLM, the gateway and the edge agent."""
    try:
        code = asyncio.run(
            run_stack(
                edge_port=edge_port,
                http_port=http_port,
                grpc_port=grpc_port,
                tokens_per_second=tokens_per_second,
                verbose=verbose,
                ready_file=ready_file,
            )
        )
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)
