"""Builds balancers over configured pools of endpoints that need not exist: choosing and learning
never contact an endpoint."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.pool.litellm_balancer import LitellmBalancer
from simulators.dnsmasq import free_dns_port

MakeBalancer = Callable[..., LitellmBalancer]


def pool(name: str, ports: list[int], **fields: Any) -> dict[str, Any]:
    """A pool of vLLM endpoints on loopback ports (nothing listens there)."""
    endpoints = [{"url": f"http://127.0.0.1:{port}/v1", "model": "Qwen/Qwen3-14B"} for port in ports]
    return {"name": name, "endpoints": endpoints, **fields}


def gateway_config(
    pools: list[dict[str, Any]] | None = None, redis_url: str | None = None, **router: Any
) -> GatewayConfig:
    router = {"cooldown_seconds": 60, "allowed_fails": 1, **router}
    pools = pools or [pool("qwen", [9001, 9002, 9003])]
    return GatewayConfig.model_validate({"pools": pools, "router": router, "redis": {"url": redis_url}})


@pytest.fixture
def make_balancer() -> Iterator[MakeBalancer]:
    """`make_balancer(pools=..., redis_url=..., **router_settings)`; each is closed after the test."""
    made: list[LitellmBalancer] = []

    def make(
        pools: list[dict[str, Any]] | None = None, redis_url: str | None = None, **router: Any
    ) -> LitellmBalancer:
        balancer = LitellmBalancer(gateway_config(pools, redis_url, **router))
        made.append(balancer)
        return balancer

    yield make
    for balancer in made:
        balancer.close()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own, on a free loopback port."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
    ]
    process = subprocess.Popen([server, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


class DnsServer:
    """A real DNS server (Debian's dnsmasq) answering for `*.pool.test` from a hosts directory.

    dnsmasq re-reads the directory through inotify as soon as a file in it changes, so `set`
    changes the records without a restart. `--local=/pool.test/` makes it authoritative for
    that domain: a name without records is NXDOMAIN (or NODATA for the other family), not
    REFUSED, which is what it answers for everything else (it has no upstream server).
    """

    def __init__(self, exe: str, directory: Path, port: int) -> None:
        self.port = port
        self.nameserver = f"127.0.0.1:{port}"
        self._exe = exe
        self._dir = directory
        self._hosts = directory / "hosts"
        self._hosts.mkdir()
        self._process: subprocess.Popen[bytes] | None = None
        self._names: dict[str, list[str]] = {}

    def set(self, name: str, addresses: list[str]) -> None:
        """`name`'s records from now on (written aside, then renamed in: dnsmasq never reads half a file)."""
        self._names[name] = addresses
        lines = "".join(f"{address} {n}\n" for n, addrs in self._names.items() for address in addrs)
        staged = self._dir / "hosts.new"
        staged.write_text(lines)
        staged.replace(self._hosts / "pool")

    def start(self) -> None:
        args = ["--no-daemon", "--port", str(self.port), "--listen-address", "127.0.0.1", "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--hostsdir", str(self._hosts), "--local=/pool.test/",
                "--pid-file=", "--user=" + _user()]  # fmt: skip
        self._process = subprocess.Popen(
            [self._exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        query = (
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05probe\x04pool\x04test\x00\x00\x01\x00\x01"
        )
        deadline = time.monotonic() + 10
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.settimeout(0.1)
            while True:
                assert self._process.poll() is None, "dnsmasq exited at start"
                probe.sendto(query, ("127.0.0.1", self.port))
                try:
                    probe.recv(512)
                    return
                except OSError:
                    assert time.monotonic() < deadline, "dnsmasq did not start"

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[DnsServer]:
    """A dnsmasq of this test's own on a free loopback UDP port."""
    exe = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
    if exe is None:
        pytest.fail("dnsmasq is missing: `bash deploy/bootstrap.sh --test` installs it (dnsmasq-base)")
    server = DnsServer(exe, tmp_path, free_dns_port())
    server.set("placeholder.pool.test", [])
    server.start()
    try:
        yield server
    finally:
        server.stop()
