"""How light the edge agent is: start-up time to a ready `/readyz`, and resident memory at rest.

    python -m bench.edge_startup [--runs 5] [--rest 2]

Each run starts `tandem edge serve` as a fresh process against a simulated Ollama (its own
process) and a gateway address nobody answers on (start-up must not wait on the WAN), polls
`/readyz` until it answers 200, lets the agent sit idle for `--rest` seconds, reads its resident
memory (VmRSS from /proc, and the figure /readyz reports), then stops it with SIGTERM.
Prints medians and writes bench/results/edge_startup.json.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TANDEM = [sys.executable, "-c", "from cli.main import main; main()"]


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, pattern: str, limit_s: float = 60) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if found := re.search(pattern, log.read_text(errors="replace")):
            return found.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited:\n{log.read_text()[-2000:]}")
        time.sleep(0.002)
    raise SystemExit(f"{proc.args!r} did not print {pattern!r}")


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def ready(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
            body: dict[str, object] = json.loads(resp.read())
            return body
    except OSError:
        return None


def one_run(config: Path, tmp: Path, rest_s: float, n: int) -> dict[str, float]:
    log = tmp / f"edge-{n}.log"
    spawned = time.monotonic()
    edge = start([*TANDEM, "edge", "serve", "--config", str(config)], log)
    try:
        url = wait_for_line(edge, log, r"listening on (http://\S+)")
        while (body := ready(url)) is None or body.get("status") != "ready":
            time.sleep(0.002)
        to_ready = time.monotonic() - spawned
        time.sleep(rest_s)
        at_rest = ready(url) or {}
        rss = vm_rss(edge.pid)
    finally:
        edge.send_signal(signal.SIGTERM)
        code = edge.wait(30)
    return {
        "spawn_to_ready_s": to_ready,
        "self_reported_startup_s": float(str(body.get("startup_seconds"))),
        "rss_at_rest_mib": rss / 2**20,
        "readyz_rss_mib": float(str(at_rest.get("rss_bytes", 0))) / 2**20,
        "exit_code": code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rest", type=float, default=2.0, help="idle seconds before memory is read")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tandem-edge-bench-") as d:
        tmp = Path(d)
        sim = start([*TANDEM, "sim", "ollama", "--port", "0", "--model", "qwen3:14b"], tmp / "ollama.log")
        try:
            ollama_url = wait_for_line(sim, tmp / "ollama.log", r"listening on (http://\S+)")
            config = tmp / "edge.yaml"
            config.write_text(
                f"listen: {{port: 0}}\n"
                f"ollama: {{url: '{ollama_url}', model: 'qwen3:14b'}}\n"
                f"uplink: {{address: '127.0.0.1:9'}}\n"  # nobody there: start-up must not wait on it
            )
            runs = [one_run(config, tmp, opts.rest, n) for n in range(opts.runs)]
        finally:
            sim.send_signal(signal.SIGTERM)
            sim.wait(30)
    summary = {
        key: {"median": statistics.median(r[key] for r in runs), "max": max(r[key] for r in runs)}
        for key in ("spawn_to_ready_s", "self_reported_startup_s", "rss_at_rest_mib", "readyz_rss_mib")
    }
    result = {"runs": runs, "summary": summary, "python": sys.version.split()[0]}
    out = ROOT / "bench" / "results" / "edge_startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in summary.items():
        print(f"{key:26} median {value['median']:8.3f}   max {value['max']:8.3f}")
    print(
        f"exit codes on SIGTERM: {sorted({r['exit_code'] for r in runs})}; written to {out.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
