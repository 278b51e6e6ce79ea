"""`tandem sim ollama|vllm` runs a simulator in its own process."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))")
TANDEM = Path(sys.executable).with_name("tandem")  # the console script of this environment


@pytest.fixture
def run_sim():  # type: ignore[no-untyped-def]
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [str(TANDEM), "sim", *args, "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = LISTENING.search(line)
        assert match, f"no listening line, got {line!r}"
        return proc, match.group(1)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_vllm_command_serves_on_the_port_it_prints_and_exits_cleanly_on_sigterm(run_sim) -> None:  # type: ignore[no-untyped-def]
    proc, url = run_sim("vllm", "--model", "Qwen/Qwen3-8B", "--context-length", "8192")

    models = httpx.get(url + "/v1/models").json()
    proc.send_signal(signal.SIGTERM)

    assert models["data"][0]["id"] == "Qwen/Qwen3-8B"
    assert models["data"][0]["max_model_len"] == 8192
    assert proc.wait(timeout=10) == 0


def test_ollama_command_serves_and_exits_cleanly_on_sigint(run_sim) -> None:  # type: ignore[no-untyped-def]
    proc, url = run_sim("ollama", "--model", "qwen3:8b", "--error-rate", "1", "--error-status", "503")

    tags = httpx.get(url + "/api/tags").json()
    chat = httpx.post(
        url + "/api/chat", json={"model": "qwen3:8b", "messages": [{"role": "user", "content": "x"}]}
    )
    proc.send_signal(signal.SIGINT)

    assert [m["name"] for m in tags["models"]] == ["qwen3:8b"]
    assert chat.status_code == 503
    assert proc.wait(timeout=10) == 0
