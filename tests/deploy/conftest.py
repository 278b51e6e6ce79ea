"""Shared by the deployment tests: Tandem installed by deploy/install.sh into a clean
directory (once per session), the secrets make-secrets.sh writes, and child processes whose
output goes to a file."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """An environment without this checkout's venv or PYTHONPATH: what a fresh shell has."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "TANDEM_LOG_FORMAT": "json",
    }
    return {**env, **extra}


@dataclass
class Process:
    """A child process whose output goes to a file (a pipe nobody reads would block it)."""

    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, args: list[str], log: Path, env: dict[str, str], cwd: Path) -> Process:
        with log.open("wb") as out:
            popen = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        return cls(popen, log)

    def wait_for(self, pattern: str, limit_s: float = 90.0) -> re.Match[str]:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if found := re.search(pattern, text):
                return found
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.popen.args!r} exited {self.popen.returncode}:\n{text[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(
            f"{self.popen.args!r} did not print {pattern!r}:\n{self.log.read_text()[-3000:]}"
        )

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tandem as deploy/install.sh installs it (the Containerfile's build stage runs the same)."""
    prefix = tmp_path_factory.mktemp("install") / "opt-tandem"
    # The installer gets this environment (uv's cache, index and proxy settings live there),
    # less what would tie the result to this checkout's venv.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
    }
    # uv: the checkout's own (deploy/bootstrap.sh put it in .tools/), or one on PATH.
    env["PATH"] = f"{ROOT / '.tools' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    done = subprocess.run(
        ["bash", str(DEPLOY / "install.sh"), str(prefix)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"into {prefix}" in done.stdout
    return prefix


@pytest.fixture(scope="session")
def cluster_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What deploy/kubernetes/make-secrets.sh writes, in a directory of the test's own."""
    out = tmp_path_factory.mktemp("secrets")
    done = subprocess.run(
        ["bash", str(KUBERNETES / "make-secrets.sh"), "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Processes a test starts; each is stopped after it."""
    started: list[Process] = []
    yield started
    for proc in reversed(started):
        proc.stop()
