"""The decision rules stay light: the edge agent imports them and must start fast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("litellm", "aiohttp", "grpc", "httpx", "tiktoken", "dashscope", "pydantic", "numpy")


def test_importing_and_routing_loads_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "from tandem.chat import ChatRequest, Message\n"
        "from tandem.routing import route, EdgeView\n"
        "route(ChatRequest(model='m', messages=[Message('user', 'hi')]), edge=EdgeView({'m': 4096}))\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
