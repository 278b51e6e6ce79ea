"""deploy/install.sh (the Containerfile's build stage) installs a Tandem that runs on its own:
from a clean directory, outside this checkout, without its venv, the gateway starts with the
configuration the Kubernetes manifests ship, serves /healthz, exports the demand metric KEDA
scales on, and speaks gRPC over TLS with the certificates make-secrets.sh writes."""

from __future__ import annotations

import re
import subprocess
import tomllib
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.conftest import KUBERNETES, ROOT, Process, clean_env, free_port

pytestmark = pytest.mark.timeout(600)

CLUSTER_CONFIG = KUBERNETES / "config" / "gateway.yaml"  # the ConfigMap's content
GATEWAY_HOST = "tandem-gateway.example.com"  # the gRPC Ingress's host, named in the certificate


def site_packages(prefix: Path) -> Path:
    (found,) = prefix.glob("lib/python3.*/site-packages")
    return found


def test_the_install_holds_the_locked_runtime_set_and_nothing_of_the_checkout(installed: Path) -> None:
    packages = site_packages(installed)
    names = {p.name.split("-")[0].lower() for p in packages.glob("*.dist-info")}
    assert {"tandem", "litellm", "grpcio", "redis", "aiohttp"} <= names
    # No dev group: no test runner, no linters, no code generators.
    assert not names & {"pytest", "mypy", "ruff", "hypothesis", "grpcio_tools", "kubernetes_validate"}
    # Tandem is a wheel install, not a link back to this checkout (an editable .pth).
    assert (packages / "gateway" / "server.py").is_file()
    assert not [p for p in packages.glob("*.pth") if str(ROOT) in p.read_text()]
    # Bytecode compiled at install (a read-only image cannot write it at start).
    assert list((packages / "gateway" / "__pycache__").glob("server.*.pyc"))
    assert list((packages / "litellm" / "__pycache__").glob("*.pyc"))


def test_the_installed_gateway_serves_the_shipped_cluster_config(
    installed: Path, cluster_secrets: Path, tmp_path: Path, processes: list[Process]
) -> None:
    http_port, grpc_port = free_port(), free_port()
    # The ConfigMap's file as shipped; only what differs between a pod and this machine is
    # overridden, the way an operator would: addresses, where the mounted secret lies, Redis.
    env = clean_env(
        TANDEM_HTTP__HOST="127.0.0.1",
        TANDEM_HTTP__PORT=str(http_port),
        TANDEM_GRPC__HOST="127.0.0.1",
        TANDEM_GRPC__PORT=str(grpc_port),
        TANDEM_GRPC__TLS__CERT_FILE=str(cluster_secrets / "gateway.crt"),
        TANDEM_GRPC__TLS__KEY_FILE=str(cluster_secrets / "gateway.key"),
        TANDEM_REDIS__URL="redis://127.0.0.1:6379/0",
        TANDEM_REDIS__KEY_PREFIX=f"deploy-test-{http_port}:",
        TANDEM_SHUTDOWN_GRACE_SECONDS="1",
        VLLM_API_KEY=(cluster_secrets / "vllm-api-key").read_text(),
    )
    gateway = Process.start(
        [
            str(installed / "bin" / "tandem"),
            "gateway",
            "serve",
            "--config",
            str(KUBERNETES / "config" / "gateway.yaml"),
        ],
        tmp_path / "gateway.log",
        env,
        cwd=tmp_path,  # not the checkout: nothing may be imported from it
    )
    processes.append(gateway)
    gateway.wait_for(r'"gateway_ready"')

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    # What the ScaledObject's Prometheus query sums (tests/deploy/test_kubernetes.py checks the query).
    assert re.search(r'^tandem_pool_demand\{pool="qwen3-14b"\} 0\.0$', metrics, re.M)

    creds = grpc.ssl_channel_credentials(root_certificates=(cluster_secrets / "ca.crt").read_bytes())
    options = [("grpc.ssl_target_name_override", GATEWAY_HOST)]
    with grpc.secure_channel(f"127.0.0.1:{grpc_port}", creds, options=options) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tandem.v1.Gateway"), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert gateway.stop() == 0


def test_the_installed_cli_reports_its_version_without_the_checkout(installed: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(installed / "bin" / "tandem"), "--version"],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0
    assert re.fullmatch(r"tandem, version \d+\.\d+\.\d+\S*\n", done.stdout)


def test_the_install_asks_for_the_pythons_the_project_supports() -> None:
    script = (ROOT / "deploy" / "install.sh").read_text()
    (default,) = re.findall(r'^python="([^"]+)"', script, re.M)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert default == pyproject["project"]["requires-python"]


@pytest.mark.parametrize(
    "script", ["deploy/install.sh", "deploy/edge/install.sh", "deploy/kubernetes/make-secrets.sh"]
)
def test_each_script_explains_itself_and_refuses_what_it_does_not_know(script: str) -> None:
    helped = subprocess.run(["bash", str(ROOT / script), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0
    assert script in helped.stdout and "set -e" not in helped.stdout  # the header, nothing after
    refused = subprocess.run(["bash", str(ROOT / script), "--no-such-option"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--no-such-option" in refused.stderr
