"""Redis over TLS (with client certificates) and Redis Cluster, chosen by configuration alone."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import Redis as RedisConfig
from gateway.fleet import EdgeStatus
from gateway.state import RedisLimiter, RedisState, StateHealth, StateUnavailable, Tenant, TenantLimits
from gateway.state.fleet_redis import RedisFleet
from gateway.state.tenants import RedisTenants, key_digest
from tests.state.conftest import RedisServer, free_port

REDIS_CLI = "/usr/bin/redis-cli"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "1", "-subj", "/CN=tandem-test-ca", cwd=tmp_path)  # fmt: skip
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=tmp_path)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "1", "-extfile", "san.ext", cwd=tmp_path)  # fmt: skip
    return tmp_path


@pytest.fixture
def tls_redis(certificates: Path) -> Iterator[RedisServer]:
    """A Redis that speaks only TLS and requires a client certificate."""
    c = certificates
    server = RedisServer(
        c,
        tls=["--tls-cert-file", str(c / "server.crt"), "--tls-key-file", str(c / "server.key"),
             "--tls-ca-cert-file", str(c / "ca.crt"), "--tls-auth-clients", "yes"],
    )  # fmt: skip
    server.start()
    yield server
    server.stop()


async def roundtrip(state: RedisState) -> None:
    """Keys, limits and the fleet all work over this connection."""
    tenants = RedisTenants(state)
    await tenants.set_tenant(Tenant("acme", rpm=5, tpm=1000, streams=2))
    key, _ = await tenants.create_key("acme")
    found = await tenants.lookup(key_digest(key))
    assert found is not None and found.tenant.streams == 2
    tenant = found.tenant
    limits = TenantLimits(RedisLimiter(state, 30))
    await limits.start()
    grant = await limits.acquire(tenant, 100)
    assert grant is not None and grant.shared
    limits.finish(grant, 10)
    await limits.close()
    fleet = RedisFleet(state)
    await fleet.heartbeat(EdgeStatus("e1", "g"))
    await fleet.rollout("g", "registry.local:5000/models/qwen3:v1")
    assert [e.edge_id for e in await fleet.edges()] == ["e1"]
    assert (await fleet.desired("g")) is not None


async def test_tls_with_a_private_ca_and_a_client_certificate(
    tls_redis: RedisServer, certificates: Path
) -> None:
    c = certificates
    config = RedisConfig.model_validate(
        {
            "url": tls_redis.url,
            "key_prefix": "tls:",
            "tls": {"ca_file": c / "ca.crt", "cert_file": c / "client.crt", "key_file": c / "client.key"},
        }
    )
    state = RedisState(config, StateHealth())
    try:
        assert tls_redis.url.startswith("rediss://")
        await roundtrip(state)
    finally:
        await state.close()


async def test_tls_refuses_a_server_it_cannot_verify(tls_redis: RedisServer, certificates: Path) -> None:
    c = certificates
    config = RedisConfig.model_validate(
        {"url": tls_redis.url, "tls": {"cert_file": c / "client.crt", "key_file": c / "client.key"}}
    )
    state = RedisState(config, StateHealth())
    try:
        with pytest.raises(StateUnavailable):
            await RedisTenants(state).lookup("0" * 64)
    finally:
        await state.close()


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port < 55_000:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 10_000))
                except OSError:
                    continue
                return port


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[list[int]]:
    """Three Redis Cluster primaries on loopback."""
    ports = [cluster_port() for _ in range(3)]
    procs = [
        subprocess.Popen(
            [
                "/usr/bin/redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(p),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{p}.conf",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        time.sleep(0.3)
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while (
            b"cluster_state:ok"
            not in subprocess.run(
                [REDIS_CLI, "-p", str(ports[0]), "cluster", "info"], capture_output=True
            ).stdout
        ):
            assert time.monotonic() < deadline, "the cluster did not come up"
            time.sleep(0.1)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


async def test_redis_cluster_keeps_each_scripts_keys_in_one_slot(redis_cluster: list[int]) -> None:
    config = RedisConfig.model_validate(
        {
            "url": f"redis://127.0.0.1:{redis_cluster[0]}",
            "cluster": True,
            "key_prefix": "c:",
            "timeout_seconds": 2,
        }
    )
    state = RedisState(config, StateHealth())
    try:
        await roundtrip(state)
        # Many tenants spread over the slots; each one's limits still run in one script.
        limits = TenantLimits(RedisLimiter(state, 30))
        grants = await asyncio.gather(
            *(limits.acquire(Tenant(f"t{i}", rpm=10, streams=1), 1) for i in range(30))
        )
        assert all(g is not None and g.shared for g in grants)
        await limits.close()
    finally:
        await state.close()


async def test_litellm_shares_its_routing_state_over_the_same_tls_connection(
    tls_redis: RedisServer, certificates: Path
) -> None:
    from gateway.config import GatewayConfig
    from gateway.pool.litellm_balancer import LitellmBalancer
    from tests.pool.conftest import pool

    c = certificates
    config = GatewayConfig.model_validate(
        {
            "pools": [pool("qwen", [9001, 9002, 9003])],
            "router": {"cooldown_seconds": 60, "allowed_fails": 0},
            "redis": {
                "url": tls_redis.url,
                "tls": {"ca_file": c / "ca.crt", "cert_file": c / "client.crt", "key_file": c / "client.key"},
            },
        }
    )
    replica_a, replica_b = LitellmBalancer(config), LitellmBalancer(config)
    try:
        dead = replica_a.upstreams("qwen")[0]
        replica_a.failed(dead, status=503, error="server busy")
        give_up = time.monotonic() + 30
        while True:  # replica b reads Redis when its local view of the cooldowns expires
            chosen = {u.id for u in [await replica_b.choose("qwen") for _ in range(30)] if u is not None}
            if dead.id not in chosen:
                break
            assert time.monotonic() < give_up, "replica b never saw the cooldown"
            await asyncio.sleep(0.05)
    finally:
        replica_a.close()
        replica_b.close()
