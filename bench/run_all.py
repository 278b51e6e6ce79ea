"""Every Tandem benchmark in one run, written up as `docs/benchmarks.md` and the headline table
in `README.md` (between `<!-- bench:begin -->` and `<!-- bench:end -->`).

    python -m bench.run_all [--quick] [--repeats 3] [--skip-pull] [--no-litellm] [--no-profile]

Suites, in order (`--only` picks some):

- `serving`: latency, throughput, time to first token, CPU per request and per streamed token
  of the gateway's HTTP and gRPC faces and the edge agent's two faces, against the simulators
  directly and against LiteLLM Proxy (`bench/serving.py`), then py-spy profiles of the gateway;
- `lifecycle`: start-up to ready and resident memory, idle and with many streams open
  (`bench/lifecycle.py`);
- `decision`: the route decision (`bench/bench_decision.py`);
- `balancer`: litellm.Router's choice per request (`bench/bench_balancer.py`), and what one
  engine hop costs with aiohttp's client and with the gateway's, side by side (`bench/client_cost.py`);
- `registry`: model pull throughput against curl, bytes per update, resume after a kill
  (`bench/registry_pull.py`, a 1 GiB artifact; `--skip-pull` leaves it out).

Each server runs in its own process, the load generator in another; `--pin` puts the measured
server alone on CPU 0 and the simulators and load generators on the rest (off by default: on a
machine shared with other work, a pinned server waits behind that work on its core). The
figures are medians over `--repeats` repeats with their min-max; the raw results go to
`bench/results/latest.json`, from which `--report-only` writes the report again. Nothing here
asserts a time: targets are reported as met or missed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench import profile, report, serving
from bench.lifecycle import run_lifecycle
from bench.load_run import Job
from bench.procs import (
    LISTENING,
    ROOT,
    Placement,
    Processes,
    pin_to,
    raise_open_files_limit,
    spawn,
    wait_for_log,
)
from bench.servers import (
    litellm_missing,
    start_edge,
    start_gateway,
    start_litellm,
    start_ollama_sim,
    start_vllm_sim,
)

SUITES = ("serving", "lifecycle", "decision", "balancer", "registry")
PACKAGES = ("tandem", "litellm", "aiohttp", "grpcio", "uvloop", "orjson", "protobuf", "fastapi", "uvicorn")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the machine ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    with contextlib.suppress(OSError, IndexError, ValueError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state() -> str:
    """The commit measured, and how many source files had changes not committed yet."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway", "edge_agent", "registry", "proto"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    if not dirty:
        return f"commit {head}"
    return f"commit {head} plus uncommitted changes to {len(dirty)} files of gateway/, edge_agent/, registry/"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --- suites -------------------------------------------------------------------------------------------


def run_serving_suite(
    procs: Processes, logs: Path, args: argparse.Namespace, placement: Placement, results: dict[str, Any]
) -> None:
    sizes = serving.Sizes.quick() if args.quick else serving.Sizes.full()
    others, server = placement.others, placement.server
    log("starting simulators")
    sims = {
        "fast": start_vllm_sim(procs, logs, "vllm-fast", output_tokens=16, cpus=others),
        "burst": start_vllm_sim(procs, logs, "vllm-burst", output_tokens=sizes.burst_tokens, cpus=others),
        "paced": start_vllm_sim(
            procs,
            logs,
            "vllm-paced",
            output_tokens=sizes.paced_tokens,
            tokens_per_second=sizes.paced_rate,
            cpus=others,
        ),
        "ollama": start_ollama_sim(procs, logs, "ollama", output_tokens=16, cpus=others),
    }
    pools = {name: sims[name].url for name in ("fast", "burst", "paced")}
    log("starting the gateway")
    gateway = start_gateway(procs, logs, "gateway", pools, cpus=server)
    log("starting the edge agent")
    edge = start_edge(procs, logs, "edge", ollama_url=sims["ollama"].url, uplink=gateway.grpc, cpus=server)
    null = procs.add(
        spawn(
            "grpc-null",
            [sys.executable, "-m", "bench.grpc_load", "serve", "--port", "0", "--tokens", "16"],
            logs,
            cpus=server,
        )
    )
    null.grpc = wait_for_log(null, _GRPC_LISTENING).group(1)
    upstreams = [f"--upstream={name}={url}" for name, url in pools.items()]
    relay_args = [sys.executable, "-m", "bench.null_proxy", *upstreams]
    relay = procs.add(spawn("relay", relay_args, logs, cpus=server))
    relay.url = wait_for_log(relay, LISTENING).group(1)
    targets = [
        serving.direct_target(sims),
        serving.relay_floor_target(relay),
        serving.gateway_target(gateway),
        serving.grpc_target(gateway),
        serving.grpc_null_target(null),
        serving.ollama_target(sims["ollama"]),
        *serving.edge_targets(edge),
    ]
    proxy = None
    if args.litellm:
        log("starting LiteLLM Proxy")
        proxy = start_litellm(procs, logs, "litellm", pools, cpus=server)
        targets.insert(2, serving.litellm_target(proxy))
    all_cases = serving.cases(sizes)
    log(f"serving: {len(targets)} targets x {len(all_cases)} cases x {args.repeats} repeats")
    results["serving"] = serving.run_serving(targets, all_cases, sims, args.repeats, others, log)
    if args.profile:
        results["profiles"] = run_profiles(gateway, sims, all_cases, others, logs, args)
    for proc in (proxy, edge, gateway):
        if proc is not None:
            procs.stop(proc)


_GRPC_LISTENING = re.compile(r"listening on grpc://(\S+)")


def run_profiles(
    gateway: Any,
    sims: dict[str, Any],
    all_cases: dict[str, serving.Case],
    cpus: frozenset[int] | None,
    logs: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """py-spy samples of the gateway under five loads: requests one at a time and 64 at once,
    streamed tokens in bursts and at a decode pace, gRPC calls."""
    if not profile.available():
        log("py-spy not found: no profiles")
        return {}
    seconds = 2.0 if args.quick else 8.0
    plans = [
        ("http_ns1", serving.gateway_target(gateway), all_cases["ns1"]),
        ("http_ns64", serving.gateway_target(gateway), all_cases["ns64"]),
        ("http_burst", serving.gateway_target(gateway), all_cases["burst"]),
        ("http_paced", serving.gateway_target(gateway), all_cases["paced"]),
        ("grpc_st64", serving.grpc_target(gateway), all_cases["st64"]),
    ]
    out: dict[str, Any] = {}
    for name, target, case in plans:
        job = Job(
            kind=target.kind,
            target=target.url(case),
            body=target.body(case),
            headers=target.headers,
            concurrency=case.concurrency,
            duration=seconds + 2.0,
            stream=case.stream,
            warmup_s=0.5,
            timeout=120.0,
        )
        load = subprocess.Popen(
            [sys.executable, "-m", "bench.load_run", job.to_json()],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=pin_to(cpus),
        )
        time.sleep(1.0)
        raw = logs / f"profile-{name}.txt"
        spy = profile.record(gateway.pid, seconds, raw)
        _, err = spy.communicate(timeout=seconds + 60)
        stdout, _ = load.communicate(timeout=seconds + 120)
        if spy.returncode != 0 or not raw.exists():
            log(f"py-spy failed on {name}: {err.decode(errors='replace')[-500:]}")
            continue
        summary = profile.summarize(raw.read_text())
        summary["case"] = case.label
        summary["face"] = target.label
        try:
            summary["load"] = json.loads(stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            summary["load"] = {}
        out[name] = summary
        log(f"  profiled {name}: {summary['samples']} samples")
    return out


def run_lifecycle_suite(
    procs: Processes, logs: Path, args: argparse.Namespace, placement: Placement, results: dict[str, Any]
) -> None:
    quick = args.quick
    hold_sim = start_vllm_sim(
        procs, logs, "vllm-hold", output_tokens=100_000, tokens_per_second=1.0, cpus=placement.others
    )
    fast_sim = start_vllm_sim(procs, logs, "vllm-life", output_tokens=16, cpus=placement.others)
    ollama = start_ollama_sim(procs, logs, "ollama-life", output_tokens=16, cpus=placement.others)
    log(f"lifecycle: {args.repeats} repeats")
    results["lifecycle"] = run_lifecycle(
        procs,
        logs,
        gateway_pools={"fast": fast_sim.url, "hold": hold_sim.url},
        hold_pool="hold",
        ollama_url=ollama.url,
        with_litellm=args.litellm,
        repeats=args.repeats,
        hold=args.hold,
        rest_s=0.5 if quick else 2.0,
        server_cpus=placement.server,
        other_cpus=placement.others,
        log=log,
    )
    results["lifecycle"]["hold_streams"] = args.hold
    for proc in (ollama, fast_sim, hold_sim):
        procs.stop(proc)


def _module(args: list[str], cpus: frozenset[int] | None, timeout: float) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=pin_to(cpus),
    )
    if done.returncode != 0:
        raise RuntimeError(f"python -m {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def run_decision_suite(args: argparse.Namespace, placement: Placement, results: dict[str, Any]) -> None:
    iterations = "300" if args.quick else "20000"
    out = _module(
        ["bench.bench_decision", "--json", "--iterations", iterations, "--repeats", str(args.repeats)],
        placement.server,
        1800,
    )
    results["decision"] = json.loads(out.strip().splitlines()[-1])


def run_balancer_suite(args: argparse.Namespace, placement: Placement, results: dict[str, Any]) -> None:
    sizes = ["--iterations", "40", "--rounds", "1"] if args.quick else ["--rounds", str(args.repeats)]
    results["balancer"] = _module(["bench.bench_balancer", *sizes], placement.server, 1800)
    calls = ["--quick"] if args.quick else ["--rounds", str(args.repeats)]
    results["client_cost"] = _module(["bench.client_cost", *calls], placement.server, 900)


def run_registry_suite(args: argparse.Namespace, results: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp:
        figures_path = Path(tmp) / "registry.json"
        size = "8" if args.quick else str(args.pull_size_mib)
        markdown = _module(
            [
                "bench.registry_pull",
                "--size-mib",
                size,
                "--runs",
                str(args.repeats),
                "--json",
                str(figures_path),
            ],
            None,  # the pull and curl run in parallel: give them every core
            3600,
        )
        results["registry"] = {"figures": json.loads(figures_path.read_text()), "markdown": markdown}


# --- the run ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny durations and sizes")
    parser.add_argument("--repeats", type=int, help="repeats of every measurement (default 3; --quick 1)")
    parser.add_argument("--only", default=",".join(SUITES), help=f"comma-separated suites of {SUITES}")
    parser.add_argument("--skip-pull", action="store_true", help="leave out the registry suite (1 GiB)")
    parser.add_argument("--pull-size-mib", type=int, default=1024)
    parser.add_argument("--no-litellm", dest="litellm", action="store_false", help="leave LiteLLM Proxy out")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="no py-spy profiles")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the measured server to CPU 0 and the rest to the other CPUs (off: on a shared "
        "machine a pinned server waits behind other work on its core)",
    )
    parser.add_argument("--hold", type=int, help="streams held open for the memory figure (1000; --quick 20)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--no-write", action="store_true", help="write the JSON results only")
    parser.add_argument("--report-only", action="store_true", help="write the report from --results again")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (path printed)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.hold is None:
        args.hold = 20 if args.quick else 1000
    args.suites = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suites: {sorted(unknown)}")
    if args.skip_pull and "registry" in args.suites:
        args.suites.remove("registry")
    return args


def compile_bytecode() -> str:
    """Start-up is measured as installed: `deploy/bootstrap.sh` compiles every module at install,
    but an environment made another way on a machine with PYTHONDONTWRITEBYTECODE set would
    compile every module at every start (the edge agent: 1.06 s instead of about 0.5 s)."""
    started = time.monotonic()
    paths = [
        sysconfig.get_paths()["purelib"],
        *(str(ROOT / p) for p in ("gateway", "edge_agent", "registry", "proto")),
    ]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", *paths],
        cwd=ROOT,
        check=False,
        capture_output=True,
    )
    return (
        f"PYTHONDONTWRITEBYTECODE is set here: the runner compiled the environment's bytecode first, "
        f"as `deploy/bootstrap.sh` does at install ({time.monotonic() - started:.0f} s), so start-up "
        "figures are those of an installed agent."
    )


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    notes: list[str] = []
    if args.litellm and ("serving" in args.suites or "lifecycle" in args.suites):
        missing = litellm_missing()
        if missing:
            args.litellm = False
            notes.append(
                "LiteLLM Proxy is not installed (missing: "
                + ", ".join(missing)
                + "): its comparisons are left out. Install it with `uv sync --group bench`."
            )
            log("NOTE: " + notes[-1])
    if "lifecycle" in args.suites and sys.dont_write_bytecode and not args.quick:
        notes.append(compile_bytecode())
        log("NOTE: " + notes[-1])
    placement = Placement.choose(args.pin)
    results: dict[str, Any] = {
        "meta": {
            "command": "python -m bench.run_all " + shlex.join(argv),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "versions": versions(),
            "load_start": load_average(),
            "placement": placement.describe(),
            "git": git_state(),
            "repeats": args.repeats,
            "quick": args.quick,
            "suites": args.suites,
            "open_files_limit": raise_open_files_limit(),
            "litellm_proxy": args.litellm,
        },
        "notes": notes,
        "failed": [],
    }
    logs = Path(tempfile.mkdtemp(prefix="tandem-bench-logs-"))
    suites: dict[str, Callable[[Processes], None]] = {
        "serving": lambda procs: run_serving_suite(procs, logs, args, placement, results),
        "lifecycle": lambda procs: run_lifecycle_suite(procs, logs, args, placement, results),
        "decision": lambda procs: run_decision_suite(args, placement, results),
        "balancer": lambda procs: run_balancer_suite(args, placement, results),
        "registry": lambda procs: run_registry_suite(args, results),
    }
    started = time.monotonic()
    try:
        for name in args.suites:
            log(f"== {name}")
            try:
                with Processes().scope() as procs:
                    suites[name](procs)
            except Exception as exc:  # one suite failing must not lose the others' figures
                results["failed"].append(name)
                notes.append(f"the {name} suite failed: {type(exc).__name__}: {str(exc)[-1500:]}")
                log(f"FAILED: {name}: {exc}")
            results["meta"]["load_end"] = load_average()
            results["meta"]["seconds"] = round(time.monotonic() - started, 1)
            save(results, args.results)  # what is measured so far survives a later failure
    finally:
        if args.keep_logs:
            log(f"server logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    return results


def save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # SIGTERM unwinds like Ctrl-C, so every server started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args(argv)
    if args.report_only:
        results = json.loads(args.results.read_text())
    else:
        results = run(args, argv)
        log(f"results written to {args.results}")
    if not args.no_write:
        report.write(results, args.out, args.readme)
        log(f"report written to {args.out} and {args.readme}")
    print(report.headline(results))
    if results.get("failed"):
        log(f"suites that failed: {', '.join(results['failed'])} (see the notes in the report)")
        sys.exit(1)


if __name__ == "__main__":
    main()
