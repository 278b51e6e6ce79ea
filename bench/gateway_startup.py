"""Gateway start-up: time from `tandem gateway serve` to a 200 on `/readyz`, against
`python -c "import litellm"` measured in the same run (the gateway's budget is that import + 1 s).

    python -m bench.gateway_startup [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

TANDEM = str(Path(sys.executable).with_name("tandem"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def import_litellm_s() -> float:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import litellm"], check=True, env=env, capture_output=True)
    return time.perf_counter() - started


def gateway_ready_s(config: Path, http_port: int) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen([TANDEM, "gateway", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        http_port = _free_port()
        config = Path(tmp) / "gateway.yaml"
        config.write_text(yaml.safe_dump({
            "grpc": {"port": _free_port()}, "http": {"port": http_port},
            # The endpoint need not exist: start-up must not touch the network.
            "pools": [{"name": "qwen3", "endpoints": [{"url": "http://127.0.0.1:9/v1", "model": "Qwen/Qwen3-14B"}]}],
        }))
        imports, readies = [], []
        for _ in range(args.repeats):
            imports.append(import_litellm_s())
            readies.append(gateway_ready_s(config, http_port))
    imp, ready = statistics.median(imports), statistics.median(readies)
    print("| figure | median s | min-max s |")
    print("|---|---|---|")
    print(f"| `python -c 'import litellm'` | {imp:.2f} | {min(imports):.2f}-{max(imports):.2f} |")
    print(f"| `tandem gateway serve` to `/readyz` 200 | {ready:.2f} | {min(readies):.2f}-{max(readies):.2f} |")
    print(f"| gateway minus import (budget <= 1 s) | {ready - imp:.2f} | |")


if __name__ == "__main__":
    main()
