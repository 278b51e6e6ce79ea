"""A DNS name whose A records are a set of addresses, served by a dnsmasq of our own.

`tandem sim fleet` publishes its ready replicas through it, as a Kubernetes headless Service
lists its ready pods. Debian's dnsmasq (`dnsmasq-base`) runs in the foreground on a loopback
port, reads its records from a hosts directory it watches with inotify (a file renamed in is
read at once, no SIGHUP), and is authoritative for the name (`--local=/NAME/`), so an empty
set is NXDOMAIN, an empty pool, not REFUSED. Records from a hosts file have TTL 0: nothing
caches them between polls.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message

from simulators.children import DIE_WITH_PARENT, terminate


def find_dnsmasq() -> str | None:
    """dnsmasq's path (it lives in /usr/sbin, often not on a user's PATH), or None."""
    found = shutil.which("dnsmasq")
    if found is None and Path("/usr/sbin/dnsmasq").exists():
        found = "/usr/sbin/dnsmasq"
    return found


def free_dns_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host`: dnsmasq serves both, and exits at start
    when either is taken."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port on {host} free for both UDP and TCP")


class DnsPublisher:
    """Serves `name` on `127.0.0.1:port` with the addresses last given to `publish`."""

    def __init__(self, name: str, directory: Path, port: int = 0, exe: str | None = None) -> None:
        self.name = name.rstrip(".")
        self.port = port or free_dns_port()
        self._exe = exe or find_dnsmasq()
        self._dir = directory
        self._hosts = directory / "hosts"
        self._process: asyncio.subprocess.Process | None = None
        self.addresses: tuple[str, ...] = ()

    @property
    def server(self) -> str:
        """`127.0.0.1:PORT`, the form a pool's `discovery.nameserver` takes."""
        return f"127.0.0.1:{self.port}"

    def publish(self, addresses: Iterable[str]) -> None:
        """The name's A records from now on (written beside, then renamed in: dnsmasq reads every
        file that appears in the directory, so it must never see a half-written one)."""
        self.addresses = tuple(sorted(set(addresses), key=_address_order))
        staged = self._dir / "hosts.new"
        staged.write_text("".join(f"{address} {self.name}\n" for address in self.addresses))
        staged.replace(self._hosts / "fleet")

    async def start(self, within_s: float = 10.0) -> None:
        """Starts dnsmasq and waits until it answers."""
        if self._exe is None:
            raise FileNotFoundError("dnsmasq is not installed (Debian: dnsmasq-base)")
        self._hosts.mkdir(parents=True, exist_ok=True)
        self.publish(self.addresses)
        args = ["--no-daemon", "--port", str(self.port), "--listen-address", "127.0.0.1", "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--hostsdir", str(self._hosts), f"--local=/{self.name}/",
                "--pid-file=", "--user=" + pwd.getpwuid(os.getuid()).pw_name]  # fmt: skip
        log = self._dir / "dnsmasq.log"
        with log.open("wb") as stderr:  # a file, not a pipe: nobody reads it while it runs
            self._process = await asyncio.create_subprocess_exec(
                self._exe, *args, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=DIE_WITH_PARENT
            )
        query = dns.message.make_query(self.name, "A")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while True:
            if self._process.returncode is not None:
                why = log.read_text(errors="replace").strip()
                raise RuntimeError(f"dnsmasq exited at start: {why}")
            try:
                await dns.asyncquery.udp(query, "127.0.0.1", port=self.port, timeout=0.1)
                return
            except (dns.exception.Timeout, OSError):
                if loop.time() > deadline:
                    await self.stop()
                    raise RuntimeError(
                        f"dnsmasq did not answer on {self.server} within {within_s} s"
                    ) from None

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await terminate(process)


def _address_order(address: str) -> tuple[int, ...]:
    return tuple(int(part) for part in address.split("."))
