"""Importing the balancer and building its Router contacts no network (factories are air-gapped)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Records, and refuses, every name lookup or connection that would leave the machine.
PROGRAM = """
import sys
LOCAL = {"127.0.0.1", "::1", "localhost", b"127.0.0.1", b"localhost", None}
attempts = []

def guard(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in LOCAL:
        attempts.append(("connect", args[1]))
        raise OSError("network disabled by the test")
    if event == "socket.getaddrinfo" and args[0] not in LOCAL:
        attempts.append(("getaddrinfo", args[0]))
        raise OSError("name resolution disabled by the test")

sys.addaudithook(guard)

from gateway.config import GatewayConfig
from gateway.pool.litellm_balancer import LitellmBalancer

endpoint = {"url": "http://10.0.0.5:8000/v1", "model": "Qwen/Qwen3-14B"}
config = GatewayConfig.model_validate({"pools": [{"name": "qwen", "endpoints": [endpoint]}]})
LitellmBalancer(config).close()
print("attempts:", attempts)
"""


def test_import_and_router_construction_make_no_network_attempt() -> None:
    # As a fresh process would start: none of the variables the module sets for litellm.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True, timeout=110
    )
    assert result.returncode == 0, result.stderr
    assert "attempts: []" in result.stdout, result.stdout + result.stderr
