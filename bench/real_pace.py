"""CPU per token at a real engine's pace: one token per write, 20-50 tokens/s per stream.

    python -m bench.real_pace [--repeats 3] [--rate 40] [--tokens 32] [--coalesce-ms 0 50 100] [--quick]

A real engine (vLLM decoding, llama.cpp) sends each token in a write of its own as it is
decoded; the serving benchmark's burst figures (a whole answer per write) say little about
that. Here the vLLM simulator paces every stream at `--rate` tokens/s, one event per token, and
the same streams (`--tokens` tokens each, concurrency 1 and 64) go through:

| target | what is called | whose CPU |
|---|---|---|
| `relay` | a do-nothing aiohttp relay (`bench/null_proxy.py`) | the relay's: the floor |
| `grpc_floor` | a do-nothing gRPC server pacing the same stream itself (`grpc_load serve --rate`) | its own |
| `grpc_relay` | a do-nothing gRPC relay: each read of the engine's stream sent on as a message | its own |
| `gateway_http_<N>ms` | the gateway's OpenAI HTTP face | the gateway's |
| `gateway_grpc_<N>ms` | the gateway's gRPC `Chat` | the gateway's |
| `edge_<N>ms` | the edge's OpenAI face, forwarding to the gateway over gRPC | the edge's (and gateway's) |

`<N>` is the gateway's `streaming.coalesce_ms` (how long tokens after the first may be held to
travel on together; 0 sends each engine read as it comes): one gateway, and one edge in front of
it, per value of `--coalesce-ms`, all in the same run. Time to first token and time to the last
byte are reported beside the CPU, so what the hold costs the caller is in the same table.

Every case runs against every target back to back within a repeat; the figures are medians
over the repeats, with the ratio to the relay measured in the same run. CPU is read from /proc
around the measured phase only (`bench/load_run.py`), so start-up and warm-up are not in it.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load_run import Job
from bench.procs import LISTENING, ROOT, Placement, Processes, spawn, wait_for_log
from bench.servers import GATEWAY_KEY, SERVED, start_edge, start_gateway, start_ollama_sim, start_vllm_sim
from bench.serving import TOKEN_REGEX, run_job

POOL = "paced"
GRPC_LISTENING = re.compile(r"listening on grpc://(\S+)")
MESSAGES = [{"role": "user", "content": "Say hello to the line-3 team."}]
AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}


@dataclass(frozen=True, slots=True)
class PaceCase:
    key: str
    concurrency: int
    duration: float


def cases(quick: bool) -> list[PaceCase]:
    if quick:
        return [PaceCase("c1", 1, 4.0), PaceCase("c64", 64, 4.0)]
    # c=1 runs longer: few tokens per second, and /proc counts CPU in 10 ms ticks.
    return [PaceCase("c1", 1, 20.0), PaceCase("c64", 64, 10.0)]


def job(kind: str, target: str, body: dict[str, Any], case: PaceCase, watch: dict[str, int]) -> Job:
    return Job(
        kind=kind,
        target=target,
        body=body,
        headers=AUTH if kind == "grpc" or "v1/chat" in target else {},
        concurrency=case.concurrency,
        duration=case.duration,
        stream=True,
        ttft_regex=TOKEN_REGEX if kind == "http" else None,
        warmup_s=2.0,
        watch=watch,
        timeout=600.0,
    )


def run(
    repeats: int, rate: float, tokens: int, coalesce_ms: list[float], quick: bool, pin: bool, log_dir: Path
) -> dict[str, Any]:
    placement = Placement.choose(pin)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with Processes().scope() as procs:
        sim = start_vllm_sim(procs, log_dir, "vllm-paced", output_tokens=tokens, tokens_per_second=rate,
                             cpus=placement.others)  # fmt: skip
        null_args = [sys.executable, "-m", "bench.null_proxy", "--upstream", f"{POOL}={sim.url}"]
        null = procs.add(spawn("relay", null_args, log_dir, cpus=placement.server))
        null.url = wait_for_log(null, LISTENING).group(1)
        floor_args = [sys.executable, "-m", "bench.grpc_load", "serve", "--tokens", str(tokens),
                      "--chunks", str(tokens), "--rate", str(rate)]  # fmt: skip
        floor = procs.add(spawn("grpc-floor", floor_args, log_dir, cpus=placement.server))
        floor.grpc = wait_for_log(floor, GRPC_LISTENING).group(1)
        grelay_args = [sys.executable, "-m", "bench.grpc_load", "serve", "--upstream", sim.url]
        grelay = procs.add(spawn("grpc-relay", grelay_args, log_dir, cpus=placement.server))
        grelay.grpc = wait_for_log(grelay, GRPC_LISTENING).group(1)
        ollama = start_ollama_sim(procs, log_dir, "ollama", output_tokens=tokens, cpus=placement.others)
        body = {"model": SERVED, "messages": MESSAGES, "stream": True}
        targets: list[tuple[str, str, str, dict[str, Any], dict[str, int]]] = [
            ("relay", "http", f"{null.url}/{POOL}/v1/chat/completions", body, {"server": null.pid}),
            ("grpc_floor", "grpc", floor.grpc, {"model": POOL, "prompt": "-"}, {"server": floor.pid}),
            ("grpc_relay", "grpc", grelay.grpc, {"model": POOL, "prompt": "-"}, {"server": grelay.pid}),
        ]
        for ms in coalesce_ms:
            n = f"{ms:g}ms"
            gateway = start_gateway(procs, log_dir, f"gateway-{n}", {POOL: sim.url}, cpus=placement.server,
                                    sections={"streaming": {"coalesce_ms": ms}})  # fmt: skip
            edge = start_edge(procs, log_dir, f"edge-{n}", ollama_url=ollama.url, uplink=gateway.grpc,
                              cpus=placement.server)  # fmt: skip
            targets += [
                (f"gateway_http_{n}", "http", f"{gateway.url}/v1/chat/completions", {**body, "model": POOL},
                 {"server": gateway.pid}),
                (f"gateway_grpc_{n}", "grpc", gateway.grpc, {"model": POOL, "prompt": MESSAGES[0]["content"]},
                 {"server": gateway.pid}),
                (f"edge_{n}", "http", f"{edge.url}/v1/chat/completions", {**body, "model": POOL},
                 {"server": edge.pid, "gateway": gateway.pid}),
            ]  # fmt: skip
        for r in range(repeats):
            for case in cases(quick):
                for key, kind, url, b, watch in targets:
                    out = run_job(job(kind, url, b, case, {**watch, "sim": sim.pid}), placement.others)
                    done = out["requests"]
                    cpu = out["cpu_s"]
                    n_tokens = done * tokens
                    out["cpu_us_per_token"] = cpu["server"] / n_tokens * 1e6 if n_tokens else None
                    if "gateway" in cpu and cpu["gateway"] is not None and n_tokens:
                        out["gateway_cpu_us_per_token"] = cpu["gateway"] / n_tokens * 1e6
                    results.setdefault(key, {}).setdefault(case.key, []).append(out)
                    print(
                        f"  [{r + 1}/{repeats}] {key:20} {case.key:4} streams {done:5d} "
                        f"errors {out['errors']:3d} cpu/token {out['cpu_us_per_token'] or 0:7.1f} us",
                        flush=True,
                    )
    return {"rate": rate, "tokens": tokens, "repeats": repeats, "coalesce_ms": coalesce_ms,
            "placement": placement.describe(), "runs": results}  # fmt: skip


def summary(result: dict[str, Any]) -> list[str]:
    """The table: median CPU per token per target and case, and the ratio to the relay."""
    runs = result["runs"]

    def med(key: str, case: str, field: str = "cpu_us_per_token") -> float | None:
        values = [r[field] for r in runs.get(key, {}).get(case, []) if r.get(field) is not None]
        return statistics.median(values) if values else None

    case_keys = sorted({c for per in runs.values() for c in per}, key=lambda c: int(c[1:]))
    lines = [
        f"Streams of {result['tokens']} tokens at {result['rate']:g} tokens/s, one token per write; "
        f"median of {result['repeats']} ({result['placement']}).",
        "",
        "| target | " + " | ".join(f"CPU/token c={c[1:]} (us) | vs relay" for c in case_keys) + " |",
        "|---|" + "---:|---:|" * len(case_keys),
    ]
    for key in runs:
        cells = []
        for c in case_keys:
            v, floor = med(key, c), med("relay", c)
            cells.append("n/a" if v is None else f"{v:.0f}")
            cells.append("1.00" if key == "relay" else ("n/a" if not (v and floor) else f"{v / floor:.2f}x"))
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    for c in case_keys:
        lines += ["", f"c={c[1:]}: what the caller sees (p50, ms); the gateway's CPU behind the edge:", "",
                  "| target | time to first token | time to last byte | gateway us/token behind the edge |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        for key in runs:
            ttft, last = med(key, c, "ttft_s_p50"), med(key, c, "latency_s_p50")
            g = med(key, c, "gateway_cpu_us_per_token")
            lines.append(
                f"| {key} | {'n/a' if ttft is None else f'{ttft * 1000:.1f}'} | "
                f"{'n/a' if last is None else f'{last * 1000:.1f}'} | {'' if g is None else f'{g:.0f}'} |"
            )
    for key in runs:
        if key.startswith(("gateway_grpc_", "edge_")):
            for c in case_keys:
                v, floor = med(key, c), med("grpc_relay", c)
                if v and floor:
                    lines.append(f"\n{key} vs the do-nothing gRPC relay, c={c[1:]}: {v / floor:.2f}x.")
    errors = sum(r["errors"] for per in runs.values() for rs in per.values() for r in rs)
    lines.append(f"\nFailed streams over the whole run: {errors}.")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.real_pace", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--rate", type=float, default=40.0, help="tokens per second per stream (20-50 is real)"
    )
    parser.add_argument("--tokens", type=int, default=32, help="tokens per stream")
    parser.add_argument(
        "--coalesce-ms", type=float, nargs="+", default=[0.0, 50.0, 100.0],
        help="the gateway's streaming.coalesce_ms: one gateway and edge per value",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="short phases, 1 repeat: a smoke run")
    parser.add_argument("--pin", action="store_true", help="measured servers on CPU 0, the rest elsewhere")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "real_pace.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tandem-real-pace-") as logs:
        result = run(
            1 if args.quick else args.repeats,
            args.rate,
            args.tokens,
            args.coalesce_ms,
            args.quick,
            args.pin,
            Path(logs),
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("\n".join(summary(result)))


if __name__ == "__main__":
    main()
