"""Endpoint sources: a static list, and a DNS name whose records are the endpoints, against a real
DNS server (dnsmasq) on loopback whose records change while the watch runs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from gateway.pool.discovery import (
    Address,
    Change,
    DnsEndpoints,
    DnsSource,
    EndpointWatch,
    StaticEndpoints,
    parse_nameserver,
)
from simulators.vllm import VllmSimConfig, VllmSimulator
from tandem.transport import Transport
from tests.pool.conftest import DnsServer

NAME = "vllm.pool.test"


def dns(server: DnsServer, **fields: object) -> DnsEndpoints:
    return DnsEndpoints(
        DnsSource.model_validate({"name": NAME, "port": 8000, "nameserver": server.nameserver, **fields})
    )


def urls(addresses: frozenset[Address]) -> set[str]:
    return {a.base_url for a in addresses}


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polled: the DNS server's state is a file
            await asyncio.sleep(0.02)


@pytest.fixture
async def watched(dns_server: DnsServer) -> AsyncIterator[tuple[EndpointWatch, list[Change]]]:
    """A watch on NAME polling every 0.5 s, with the changes it reported."""
    changes: list[Change] = []
    watch = EndpointWatch(
        dns(dns_server, interval_seconds=0.5, timeout_seconds=0.3), changes.append, min_gap_s=0.05
    )
    await watch.start()
    yield watch, changes
    await watch.stop()


async def test_a_records_are_the_endpoints_with_the_configured_scheme_port_and_path(
    dns_server: DnsServer,
) -> None:
    dns_server.set(NAME, ["127.0.0.2", "127.0.0.3"])
    found = await dns(dns_server, scheme="https", path="/openai/v1").endpoints()
    assert urls(found) == {"https://127.0.0.2:8000/openai/v1", "https://127.0.0.3:8000/openai/v1"}
    assert {a.origin for a in found} == {"https://127.0.0.2:8000", "https://127.0.0.3:8000"}


async def test_aaaa_records_are_endpoints_with_the_address_in_brackets(dns_server: DnsServer) -> None:
    dns_server.set(NAME, ["127.0.0.2", "::1"])
    assert urls(await dns(dns_server).endpoints()) == {"http://127.0.0.2:8000/v1", "http://[::1]:8000/v1"}


async def test_a_name_without_records_is_an_empty_pool_not_a_failure(dns_server: DnsServer) -> None:
    assert await dns(dns_server).endpoints() == frozenset()  # NXDOMAIN: scaled to zero


async def test_endpoints_appear_and_disappear_without_a_restart(
    dns_server: DnsServer, watched: tuple[EndpointWatch, list[Change]]
) -> None:
    watch, changes = watched
    assert watch.endpoints == frozenset() and changes == []
    dns_server.set(NAME, ["127.0.0.2"])
    await eventually(lambda: len(changes) == 1)
    dns_server.set(NAME, ["127.0.0.2", "127.0.0.3"])
    await eventually(lambda: len(changes) == 2)
    dns_server.set(NAME, ["127.0.0.3"])
    await eventually(lambda: len(changes) == 3)
    dns_server.set(NAME, [])
    await eventually(lambda: len(changes) == 4)
    assert [(urls(c.added), urls(c.removed)) for c in changes] == [
        ({"http://127.0.0.2:8000/v1"}, set()),
        ({"http://127.0.0.3:8000/v1"}, set()),
        (set(), {"http://127.0.0.2:8000/v1"}),
        (set(), {"http://127.0.0.3:8000/v1"}),
    ]
    assert watch.endpoints == frozenset() == changes[-1].current


async def test_refresh_soon_resolves_before_the_interval(dns_server: DnsServer) -> None:
    changes: list[Change] = []
    watch = EndpointWatch(dns(dns_server, interval_seconds=300), changes.append, min_gap_s=0.05)
    await watch.start()
    try:
        dns_server.set(NAME, ["127.0.0.2"])
        await asyncio.sleep(0.2)  # dnsmasq has read the file; the watch has not asked yet
        assert changes == []
        watch.refresh_soon()
        await eventually(lambda: len(changes) == 1, within=2.0)
        assert urls(changes[0].added) == {"http://127.0.0.2:8000/v1"}
    finally:
        await watch.stop()


async def test_a_failed_resolution_keeps_the_last_set_and_logs_once(
    dns_server: DnsServer, watched: tuple[EndpointWatch, list[Change]]
) -> None:
    watch, changes = watched
    dns_server.set(NAME, ["127.0.0.2", "127.0.0.3"])
    await eventually(lambda: len(watch.endpoints) == 2)
    with capture_logs() as logs:
        dns_server.stop()  # every poll now times out
        await eventually(lambda: watch.failing is not None)
        await asyncio.sleep(1.6)  # three more polls
        assert urls(watch.endpoints) == {"http://127.0.0.2:8000/v1", "http://127.0.0.3:8000/v1"}
        dns_server.start()
        await eventually(lambda: watch.failing is None)
    events = [e["event"] for e in logs if e["event"].startswith("discovery_")]
    assert events == ["discovery_failed", "discovery_recovered"]
    assert len(changes) == 1  # the outage changed nothing


async def test_discovered_engines_share_one_port_on_their_own_loopback_addresses(
    dns_server: DnsServer,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sims = [VllmSimulator(VllmSimConfig(host=host, port=port)) for host in ("127.0.0.2", "127.0.0.3")]
    for sim in sims:
        await sim.start()
    transport = Transport()
    try:
        dns_server.set(NAME, ["127.0.0.2", "127.0.0.3"])
        found = await dns(dns_server, port=port).endpoints()
        for address in found:
            response = await transport.request("GET", f"{address.base_url}/models")
            assert response.status == 200
            await response.read()
            response.release()
        assert len(found) == 2
    finally:
        await transport.close()
        for sim in sims:
            await sim.stop()


async def test_the_system_resolver_resolves_localhost() -> None:
    source = DnsEndpoints(DnsSource(name="localhost", port=8000))
    found = await source.endpoints()
    assert "http://127.0.0.1:8000/v1" in urls(found)
    assert all(a.base_url in ("http://127.0.0.1:8000/v1", "http://[::1]:8000/v1") for a in found)


async def test_a_static_list_is_reported_once_and_never_polled() -> None:
    changes: list[Change] = []
    watch = EndpointWatch(StaticEndpoints(["http://a:8000/v1", "http://b:8000/v1"]), changes.append)
    await watch.start()
    await watch.stop()
    assert len(changes) == 1 and urls(changes[0].added) == {"http://a:8000/v1", "http://b:8000/v1"}
    assert watch._task is None


def test_nameserver_is_an_ip_address_with_an_optional_port() -> None:
    assert parse_nameserver("10.0.0.10") == ("10.0.0.10", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[fd00::a]:5353") == ("fd00::a", 5353)
    assert parse_nameserver("fd00::a") == ("fd00::a", 53)
    for bad in ("kube-dns:53", "127.0.0.1:0", "[::1]x", "127.0.0.1:port"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


def test_polling_is_bounded() -> None:
    for bad in (
        {"interval_seconds": 0.1},
        {"interval_seconds": 3600},
        {"timeout_seconds": 0},
        {"path": "v1"},
    ):
        with pytest.raises(ValidationError):
            DnsSource.model_validate({"name": NAME, "port": 8000, **bad})
    assert DnsSource(name=NAME, port=8000, path="/v1/").path == "/v1"


async def test_while_a_request_waits_the_name_is_asked_every_hurry_interval(dns_server: DnsServer) -> None:
    """A pool scaling from zero: with a caller waiting, the first engine is seen within
    `hurry_s` of being listed, not at the next (here 300 s) interval."""
    changes: list[Change] = []
    watch = EndpointWatch(dns(dns_server, interval_seconds=300), changes.append, min_gap_s=60, hurry_s=0.1)
    await watch.start()
    try:
        with watch.waiting():
            await asyncio.sleep(0.3)  # asked a few times, nothing listed yet
            assert changes == []
            dns_server.set(NAME, ["127.0.0.2"])
            await eventually(lambda: len(changes) == 1, within=5.0)
        assert urls(changes[0].added) == {"http://127.0.0.2:8000/v1"}
        await asyncio.sleep(0.3)  # the round that started while it waited is over
        dns_server.set(NAME, ["127.0.0.2", "127.0.0.3"])
        await asyncio.sleep(1.0)  # nobody waits: back to the interval (and min_gap_s is 60 s)
        assert len(changes) == 1
    finally:
        await watch.stop()
