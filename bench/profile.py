"""Where a server's CPU goes under load: py-spy samples of the running process, summed by
function (self and inclusive) and by the part of the stack the leaf belongs to.

    python -m bench.profile summarize samples.txt     # a py-spy `record -f raw` file

The runner (`bench.run_all --profile`) records the gateway while a load case runs against it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STDLIB = re.compile(r"/lib/python3\.\d+/(.*)$")
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Which part of the stack a sample's leaf frame belongs to: the first area whose prefix starts
# the frame's short file name (see `_short`) wins.
AREAS = (
    ("tandem gateway", ("gateway/",)),
    ("tandem edge agent", ("edge_agent/",)),
    ("litellm", ("litellm/",)),
    ("aiohttp server", ("aiohttp/web", "aiohttp/http_writer", "aiohttp/base_protocol", "aiohttp/_http")),
    ("aiohttp client", ("aiohttp/client", "aiohttp/connector", "aiohttp/streams", "aiohttp/http_parser")),
    ("aiohttp (other)", ("aiohttp/", "multidict/", "yarl/")),
    ("grpc", ("grpc/", "grpc_", "src/python/grpcio")),
    ("protobuf", ("google/protobuf",)),
    ("json (orjson/json)", ("orjson", "json/")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("logging (structlog)", ("structlog/", "logging/")),
    ("event loop (asyncio/uvloop)", ("asyncio/", "uvloop/", "selectors.py")),
    ("threads", ("threading.py", "concurrent/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
)


def available() -> bool:
    return shutil.which("py-spy") is not None


def record(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Starts py-spy sampling `pid` for `seconds` into `out` (raw collapsed stacks)."""
    return subprocess.Popen(
        [
            "py-spy",
            "record",
            "-p",
            str(pid),
            "-d",
            str(max(1, round(seconds))),
            "-r",
            str(rate),
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
            "--full-filenames",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _frame(raw: str) -> tuple[str, str]:
    m = FRAME.match(raw.strip())
    if not m:
        return raw.strip(), ""
    return m.group("func"), m.group("file")


def _short(file: str) -> str:
    """A frame's file without the install prefix: `aiohttp/web_protocol.py`, `gateway/relay.py`."""
    for marker in ("site-packages/", f"{ROOT}/"):
        if marker in file:
            return file.split(marker, 1)[1]
    stdlib = STDLIB.search(file)
    return stdlib.group(1) if stdlib else file


def area(file: str) -> str:
    """The area of a frame's file (short or full name)."""
    short = _short(file)
    for name, prefixes in AREAS:
        if short.startswith(prefixes):
            return name
    return "other"


def _in_gateway(file: str) -> bool:
    short = _short(file)
    # The process's entry point is on every stack: nothing to learn from it.
    return short.startswith("gateway/") and short != "gateway/commands.py"


def summarize(raw: str, top: int = 12) -> dict[str, Any]:
    """Self and inclusive sample shares per function, and self shares per area, from py-spy's
    raw output (`frame;frame;... count` per line, root first)."""
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    project_incl: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        names = [f"{func} ({_short(file)})" for func, file in frames]
        self_counts[names[-1]] += count
        areas[area(frames[-1][1])] += count
        for name in set(names):
            incl[name] += count
        for name in {n for n, (_, file) in zip(names, frames, strict=True) if _in_gateway(file)}:
            project_incl[name] += count

    def shares(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, 100.0 * v / total) for k, v in counter.most_common(n)] if total else []

    return {
        "samples": total,
        "self": shares(self_counts, top),
        "inclusive_gateway": shares(project_incl, top),
        "areas": shares(areas, len(AREAS) + 1),
    }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "summarize":
        raise SystemExit("usage: python -m bench.profile summarize RAW_FILE")
    summary = summarize(Path(args[1]).read_text())
    print(f"{summary['samples']} samples")
    for title in ("areas", "self", "inclusive_gateway"):
        print(f"\n{title}:")
        for name, pct in summary[title]:
            print(f"  {pct:5.1f}%  {name}")


if __name__ == "__main__":
    main()
