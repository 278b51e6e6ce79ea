"""The uplink's credentials: TLS, mTLS with the edge's client certificate, and the API key.

The server here is a real gRPC server with the standard health service over mTLS, built the
way the gateway builds its own (`grpc.ssl_server_credentials`, client certificates required);
certificates come from the `openssl` command.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edge_agent.breaker import CircuitBreaker
from edge_agent.config import Uplink as UplinkConfig
from edge_agent.uplink import Uplink, UplinkDown

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "1", "-subj", "/CN=tandem-test-ca", cwd=d)  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("edge", "extendedKeyUsage=clientAuth"),
    ):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


class Recorder(grpc.aio.ServerInterceptor):
    """Keeps the metadata of every call the server receives."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        self.metadata.append({k: v for k, v in details.invocation_metadata or () if isinstance(v, str)})
        return await continuation(details)


@pytest.fixture
async def mtls_server(certs: Path) -> AsyncIterator[tuple[int, Recorder]]:
    recorder = Recorder()
    server = grpc.aio.server(interceptors=[recorder])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [((certs / "server.key").read_bytes(), (certs / "server.pem").read_bytes())],
        root_certificates=(certs / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    await servicer.set("tandem.v1.Gateway", health_pb2.HealthCheckResponse.SERVING)
    yield port, recorder
    await server.stop(None)


async def probe(port: int, tls: dict[str, Any] | None, **fields: Any) -> None:
    config = UplinkConfig.model_validate({"address": f"127.0.0.1:{port}", "tls": tls, **fields})
    breaker = CircuitBreaker(failures_to_open=1, probe_failures_to_open=1, successes_to_close=1)
    uplink = Uplink(config, breaker, edge_id="edge-1")
    await uplink.start()
    try:
        await uplink.probe(5.0)
    finally:
        await uplink.close()


async def test_mtls_with_the_edges_certificate_connects(
    mtls_server: tuple[int, Recorder], certs: Path
) -> None:
    port, _ = mtls_server
    tls = {"ca_file": certs / "ca.pem", "cert_file": certs / "edge.pem", "key_file": certs / "edge.key"}
    await probe(port, tls)


async def test_without_a_client_certificate_the_gateway_refuses(
    mtls_server: tuple[int, Recorder], certs: Path
) -> None:
    port, _ = mtls_server
    with pytest.raises(UplinkDown, match="UNAVAILABLE"):
        await probe(port, {"ca_file": certs / "ca.pem"})


async def test_the_api_key_travels_as_bearer_metadata(
    mtls_server: tuple[int, Recorder], certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, recorder = mtls_server
    monkeypatch.setenv("EDGE_TEST_KEY", "tdm-edge-secret-123")
    tls = {"ca_file": certs / "ca.pem", "cert_file": certs / "edge.pem", "key_file": certs / "edge.key"}
    await probe(port, tls, api_key_env="EDGE_TEST_KEY")
    assert recorder.metadata[-1]["authorization"] == "Bearer tdm-edge-secret-123"
    assert recorder.metadata[-1]["x-tandem-edge-id"] == "edge-1"


def test_a_certificate_without_its_key_is_a_config_error(certs: Path) -> None:
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        UplinkConfig.model_validate({"tls": {"cert_file": certs / "edge.pem"}})
