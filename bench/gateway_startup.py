"""Gateway start-up: time from `tandem gateway serve` to a 200 on `/readyz`, against
`python -c "import litellm"` measured in the same run (the gateway's budget is that import + 1 s).

    python -m bench.gateway_startup [--repeats 3]

`bench.run_all` measures the same (with memory at rest, and the edge agent and LiteLLM Proxy
beside it) in its `lifecycle` suite; this is that figure alone.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.lifecycle import import_litellm_s
from bench.procs import Processes
from bench.servers import start_gateway


def measure(repeats: int) -> tuple[list[float], list[float]]:
    """(`import litellm` seconds, gateway spawn-to-ready seconds), one of each per repeat."""
    imports, readies = [], []
    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp, Processes().scope() as procs:
        for n in range(repeats):
            imports.append(import_litellm_s())
            # The endpoint need not exist: start-up must not touch the network.
            gateway = start_gateway(procs, Path(tmp), f"gateway-{n}", {"qwen3": "http://127.0.0.1:9"})
            readies.append(float(gateway.extra["ready_s"]))
            procs.stop(gateway)
    return imports, readies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    imports, readies = measure(args.repeats)
    imp, ready = statistics.median(imports), statistics.median(readies)
    over = statistics.median(r - i for r, i in zip(readies, imports, strict=True))
    print("| figure | median s | min-max s |")
    print("|---|---|---|")
    print(f"| `python -c 'import litellm'` | {imp:.2f} | {min(imports):.2f}-{max(imports):.2f} |")
    spread = f"{min(readies):.2f}-{max(readies):.2f}"
    print(f"| `tandem gateway serve` to `/readyz` 200 | {ready:.2f} | {spread} |")
    print(f"| gateway minus import, per repeat (budget <= 1 s) | {over:.2f} | |")


if __name__ == "__main__":
    main()
