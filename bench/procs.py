"""Processes under measurement: start them pinned to a CPU, wait until they serve, read what
they cost from /proc (CPU time, resident memory), stop them.

Linux only (/proc, sched_setaffinity); elsewhere CPU and memory read as None and nothing is
pinned.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TANDEM = str(BIN / "tandem")
LISTENING = re.compile(r"listening on (http://\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process (all its threads), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int | None:
    """Resident memory (VmRSS) of a process, from /proc/PID/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def raise_open_files_limit(wanted: int = 65536) -> int:
    """Raises this process's soft limit on open files (children inherit it); returns the limit.

    A gateway holding 1000 streams holds 2000 sockets, over the usual default of 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True, slots=True)
class Placement:
    """Which CPUs the system under test and everything else (simulators, load) run on.

    On a 2-core machine: the measured server alone on CPU 0, simulators and load generators
    on CPU 1, so the figures are the server's and not its neighbours'. None: not pinned.
    """

    server: frozenset[int] | None = None
    others: frozenset[int] | None = None

    @staticmethod
    def choose(pin: bool) -> Placement:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not pin or len(cpus) < 2:
            return Placement()
        return Placement(server=frozenset(cpus[:1]), others=frozenset(cpus[1:]))

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (every process may run on every core)"
        return (
            f"measured server pinned to CPU {_cpus(self.server)}; simulators and load generators "
            f"to CPU {_cpus(self.others or frozenset())}"
        )


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def pin_to(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        return None

    def pin() -> None:  # runs in the child before exec: every thread it starts inherits it
        os.sched_setaffinity(0, cpus)

    return pin


@dataclass
class Proc:
    """A process started for the benchmark, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""  # HTTP base URL, once known
    grpc: str = ""  # host:port of a gRPC face, when it has one
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid)

    def rss(self) -> int | None:
        return rss_bytes(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def spawn(
    name: str,
    args: Sequence[str],
    logs: Path,
    *,
    cpus: frozenset[int] | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    """Starts `args` with stdout and stderr in `logs/NAME.log`, pinned to `cpus` when given."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(args),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            preexec_fn=pin_to(cpus),
        )
    return Proc(name, popen, log)


def wait_for_log(proc: Proc, pattern: re.Pattern[str], timeout: float = 120.0) -> re.Match[str]:
    """Waits until the process's log matches `pattern`; fails with its log if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := pattern.search(proc.tail(1 << 20)):
            return found
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        time.sleep(0.005)
    raise RuntimeError(f"{proc.name} did not print {pattern.pattern!r} within {timeout:g}s:\n{proc.tail()}")


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of a GET (None when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def wait_http_ok(proc: Proc, url: str, timeout: float = 120.0, poll: float = 0.005) -> float:
    """Polls `url` until it answers 200; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if http_status(url) == 200:
            return time.monotonic() - started
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        time.sleep(poll)
    raise RuntimeError(f"{proc.name}: {url} did not answer 200 within {timeout:g}s:\n{proc.tail()}")


class Processes:
    """Every process the benchmark started, stopped together (newest first) at the end."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> int | None:
        code = proc.stop()
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)
        return code

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                proc.stop(timeout=10)
        self._procs.clear()

    @contextlib.contextmanager
    def scope(self) -> Iterator[Processes]:
        try:
            yield self
        finally:
            self.stop_all()
