"""Where a pool's endpoints come from: a static list, or a DNS name whose records are the endpoints.

A building block of the elastic pool (docs/elastic-pool.md).

- `EndpointSource` is the interface: `endpoints()` asks the source now and returns the whole
  set of base URLs (`Address`), or raises `ResolutionFailed`.
- `StaticEndpoints` is today's `pools[].endpoints` list.
- `DnsEndpoints` resolves a name's A and AAAA records (a Kubernetes headless Service lists its
  ready pods only) with the system resolver, or with dnspython against a configured
  `nameserver`, and builds one base URL per address with the configured scheme, port and path.
- `EndpointWatch` asks a source every `interval_s`, at once when asked (after a failure), and
  every `hurry_s` while requests wait for an endpoint (`waiting()`), and reports each change as
  added and removed sets. A failed resolution keeps the last known set and is logged once, not
  once per poll.

What a caller does with a change is its job: an added endpoint joins the pool; a removed one
takes no new requests, while the streams already running on it finish (the engine behind a
Kubernetes pod that stopped being ready keeps serving its open connections until it exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import dns.asyncresolver
import dns.exception
import dns.resolver
from pydantic import Field, field_validator
from yarl import URL

from tandem.configfile import Section
from tandem.logs import get_logger

log = get_logger("tandem.gateway.discovery")

# While requests wait for a pool's first endpoint, its name is asked this often: a scale-up is
# seen this long at most after the engine turned ready (a local DNS query is ~1 ms).
HURRY_S = 0.1


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """One engine as a source reports it: its OpenAI base URL (`http://10.1.2.3:8000/v1`)."""

    base_url: str

    @property
    def origin(self) -> str:
        """`scheme://host:port`, where the engine also serves `/metrics` and `/health`."""
        return str(URL(self.base_url).origin())


class ResolutionFailed(Exception):
    """The source could not say which endpoints exist now (timeout, server failure, refusal).

    Not raised for a name that exists with no addresses, or does not exist: that is an empty
    pool (a Deployment scaled to zero), which a source reports as an empty set.
    """


class EndpointSource(Protocol):
    """Where a pool's endpoints come from."""

    interval_s: float | None  # how often to ask again; None: the set never changes

    async def endpoints(self) -> frozenset[Address]:
        """Every endpoint there is now. Raises `ResolutionFailed` when that cannot be known."""
        ...

    def describe(self) -> str:
        """The source in a few words, for log lines."""
        ...


class StaticEndpoints:
    """A fixed list of base URLs (today's `pools[].endpoints[].url`)."""

    interval_s: float | None = None

    def __init__(self, base_urls: Iterable[str]) -> None:
        self._endpoints = frozenset(Address(url) for url in base_urls)

    async def endpoints(self) -> frozenset[Address]:
        return self._endpoints

    def describe(self) -> str:
        return f"{len(self._endpoints)} configured endpoints"


class DnsSource(Section):
    """A pool's endpoints as the A/AAAA records of one DNS name (a Kubernetes headless Service)."""

    name: str = Field(
        min_length=1, max_length=253, description="the name to resolve, e.g. vllm.ns.svc.cluster.local"
    )
    port: int = Field(ge=1, le=65535, description="the engines' port")
    scheme: Literal["http", "https"] = "http"
    path: str = Field("/v1", description="the OpenAI base path on each engine")
    interval_seconds: float = Field(5.0, ge=0.5, le=300, description="resolve again this often")
    timeout_seconds: float = Field(2.0, gt=0, le=30, description="give up on one resolution after this long")
    nameserver: str | None = Field(
        None, description="host:port of a DNS server to ask (an IP address); none: the system resolver"
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value.rstrip("/") or ""

    @field_validator("nameserver")
    @classmethod
    def _nameserver(cls, value: str | None) -> str | None:
        if value is not None:
            parse_nameserver(value)
        return value


def parse_nameserver(value: str) -> tuple[str, int]:
    """`10.0.0.10`, `10.0.0.10:53`, `[fd00::a]:5353` -> (IP address, port); ValueError otherwise."""
    host, port = value, 53
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not host:port: {value!r}")
        if rest:
            port = _port(rest[1:], value)
    elif value.count(":") == 1:
        host, port_text = value.split(":")
        port = _port(port_text, value)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"the nameserver must be an IP address (host:port), not {value!r}") from None
    return host, port


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"bad port in {value!r}")
    return int(text)


class DnsEndpoints:
    """The endpoints a DNS name's A and AAAA records give, one base URL per address."""

    def __init__(self, config: DnsSource) -> None:
        self.config = config
        self.interval_s: float | None = config.interval_seconds
        self._resolver: dns.asyncresolver.Resolver | None = None
        if config.nameserver is not None:
            host, port = parse_nameserver(config.nameserver)
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [host]
            self._resolver.port = port
            self._resolver.cache = None  # every poll asks the server: the records are the live pod list

    async def endpoints(self) -> frozenset[Address]:
        if self._resolver is not None:
            hosts = await self._dnspython(self._resolver)
        else:
            hosts = await self._system()
        return frozenset(self._address(host) for host in hosts)

    def describe(self) -> str:
        via = self.config.nameserver or "the system resolver"
        return f"DNS name {self.config.name} via {via}"

    def _address(self, host: str) -> Address:
        c = self.config
        shown = f"[{host}]" if ":" in host else host
        return Address(f"{c.scheme}://{shown}:{c.port}{c.path}")

    async def _system(self) -> set[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                infos = await loop.getaddrinfo(
                    self.config.name, self.config.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except TimeoutError:
            raise ResolutionFailed(f"no answer within {self.config.timeout_seconds:g} s") from None
        except socket.gaierror as exc:
            # The name does not exist, or has no address: no endpoint now (scaled to zero).
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                return set()
            raise ResolutionFailed(exc.strerror or str(exc)) from None
        # A scope id (link-local IPv6) is not part of a URL's host; engines are not link-local.
        return {
            str(info[4][0]).split("%")[0] for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)
        }

    async def _dnspython(self, resolver: dns.asyncresolver.Resolver) -> set[str]:
        a, aaaa = await asyncio.gather(self._records(resolver, "A"), self._records(resolver, "AAAA"))
        return a | aaaa

    async def _records(self, resolver: dns.asyncresolver.Resolver, kind: str) -> set[str]:
        try:
            answer = await resolver.resolve(self.config.name, kind, lifetime=self.config.timeout_seconds)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return set()  # no such name, or no record of this type: no endpoint of this family
        except dns.exception.Timeout:
            raise ResolutionFailed(f"no {kind} answer within {self.config.timeout_seconds:g} s") from None
        except dns.exception.DNSException as exc:  # SERVFAIL, REFUSED, a broken answer
            raise ResolutionFailed(f"{kind}: {exc}") from None
        return {record.to_text() for record in answer}


@dataclass(frozen=True, slots=True)
class Change:
    """What a resolution changed: endpoints to add, endpoints to take out of the pool, and all of them now."""

    added: frozenset[Address]
    removed: frozenset[Address]
    current: frozenset[Address]


OnChange = Callable[[Change], Awaitable[None] | None]


class EndpointWatch:
    """Keeps a source's endpoint set up to date and tells `on_change` what changed.

    `start()` resolves once (the first set, reported as all added) and then again every
    `source.interval_s`; `refresh_soon()` asks for a resolution now (after a failed request),
    at most one per `min_gap_s` however often it is called. A failed resolution keeps the last
    known set: one warning when resolutions start failing, one when they work again.
    """

    def __init__(
        self,
        source: EndpointSource,
        on_change: OnChange | None = None,
        *,
        min_gap_s: float = 0.5,
        hurry_s: float = HURRY_S,
    ) -> None:
        self.source = source
        self._on_change = on_change
        self._min_gap_s = min_gap_s
        self._hurry_s = hurry_s
        self._waiting = 0  # callers waiting for an endpoint (`waiting()`)
        self._current: frozenset[Address] = frozenset()
        self._failing: str | None = None  # why the last resolution failed; None: it worked
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def endpoints(self) -> frozenset[Address]:
        """The last known set (empty before the first good resolution)."""
        return self._current

    @property
    def failing(self) -> str | None:
        """Why the latest resolution failed, or None when it worked."""
        return self._failing

    async def start(self) -> Change | None:
        """Resolves once, reports it, and starts following the source (if it can change)."""
        change = await self.refresh()
        if self.source.interval_s is not None:
            self._task = asyncio.create_task(self._follow(), name=f"endpoint-watch {self.source.describe()}")
        return change

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def refresh_soon(self) -> None:
        """Resolve now rather than at the next interval (a request to an endpoint just failed)."""
        self._wake.set()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """While a request waits for an endpoint (a pool scaling from zero): resolve now, then
        every `hurry_s` rather than every interval, so that it goes as soon as the name lists
        the first ready engine, not up to an interval later."""
        self._waiting += 1
        self._wake.set()
        try:
            yield
        finally:
            self._waiting -= 1

    async def refresh(self) -> Change | None:
        """Resolves now; returns what changed (and reports it), or None when nothing did or it failed."""
        async with self._lock:
            try:
                found = await self.source.endpoints()
            except ResolutionFailed as exc:
                self._failed(str(exc))
                return None
            if self._failing is not None:
                log.warning("discovery_recovered", source=self.source.describe(), endpoints=len(found))
                self._failing = None
            added, removed = found - self._current, self._current - found
            if not added and not removed:
                return None
            self._current = found
            change = Change(added, removed, found)
            log.info(
                "endpoints_changed",
                source=self.source.describe(),
                added=sorted(a.base_url for a in added),
                removed=sorted(a.base_url for a in removed),
                now=len(found),
            )
            # Called under the lock, so callers see changes in the order they happened.
            if self._on_change is not None:
                result = self._on_change(change)
                if result is not None:
                    await result
            return change

    def _failed(self, why: str) -> None:
        if self._failing is None:
            log.warning(
                "discovery_failed",
                source=self.source.describe(),
                error=why,
                kept=len(self._current),
                note="keeping the last known endpoints until a resolution works",
            )
        self._failing = why

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            interval = self._hurry_s if self._waiting else self.source.interval_s or 0.0
            gap = self._hurry_s if self._waiting else self._min_gap_s
            try:
                async with asyncio.timeout(max(0.0, last + interval - loop.time())):
                    await self._wake.wait()
                await asyncio.sleep(max(0.0, last + gap - loop.time()))  # asked: bounded rate
            except TimeoutError:
                pass
            self._wake.clear()
            last = loop.time()
            try:
                await self.refresh()
            except Exception:  # a caller's callback failing must not stop discovery
                log.exception("endpoint_change_failed", source=self.source.describe())
