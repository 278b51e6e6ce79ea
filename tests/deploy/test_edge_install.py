"""deploy/edge/install.sh: one command writes the edge's config, key, certificates and units,
and `tandem edge doctor` checks the result against a real gateway (run from the install) and
an Ollama (the simulator). `--root` puts every file under a temporary directory and leaves
systemd alone; what systemd itself does with the units is not exercised here."""

from __future__ import annotations

import re
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import yaml

from edge_agent.config import EdgeConfig
from tandem.configfile import load_config
from tests.deploy.conftest import DEPLOY, Process, clean_env, free_port

pytestmark = pytest.mark.timeout(600)

EDGE = "line-a-box-1"
CERT_HOST = "tandem-gateway.example.com"  # named in the gateway certificate make-secrets.sh writes


@dataclass
class Center:
    grpc_address: str
    ollama_host: str
    keys: dict[str, str]  # edge id -> its key
    tls: bool


def offline_key(tandem: Path, edge: str) -> dict[str, str]:
    done = subprocess.run(
        [
            str(tandem),
            "gateway",
            "keys",
            "create",
            "--offline",
            "--tenant",
            "factory-a",
            "--edge",
            edge,
            "--json",
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    reply: dict[str, str] = orjson.loads(done.stdout)
    return reply


def start_center(
    installed: Path, tmp: Path, processes: list[Process], secrets: Path | None, *, mtls: bool = False
) -> tuple[str, dict[str, str]]:
    """A gateway from the install, knowing the edge keys of two boxes (no Redis: auth.tenants)."""
    tandem = installed / "bin" / "tandem"
    made = {edge: offline_key(tandem, edge) for edge in (EDGE, "line-a-box-2")}
    grpc_port = free_port()
    grpc: dict[str, object] = {"host": "127.0.0.1", "port": grpc_port}
    if secrets is not None:
        grpc["tls"] = {"cert_file": str(secrets / "gateway.crt"), "key_file": str(secrets / "gateway.key")}
        if mtls:  # edges must present a certificate signed by the center's CA
            grpc["tls"]["client_ca_file"] = str(secrets / "ca.crt")  # type: ignore[index]
    config = {
        "grpc": grpc,
        "http": {"host": "127.0.0.1", "port": free_port()},
        "pools": [
            {"name": "qwen3-14b", "endpoints": [{"url": "http://127.0.0.1:9/v1", "model": "Qwen/Qwen3-14B"}]}
        ],
        "auth": {
            "required": True,
            "tenants": [
                {
                    "name": "factory-a",
                    "edge_keys": [{"sha256": k["sha256"], "edge": edge} for edge, k in made.items()],
                }
            ],
        },
        "shutdown_grace_seconds": 0,
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = Process.start(
        [str(tandem), "gateway", "serve", "--config", str(path)], tmp / "gw.log", clean_env(), tmp
    )
    processes.append(gateway)
    gateway.wait_for(r'"gateway_ready"')
    return f"127.0.0.1:{grpc_port}", {edge: k["key"] for edge, k in made.items()}


@pytest.fixture
def ollama(installed: Path, tmp_path: Path, processes: list[Process]) -> Iterator[str]:
    port = free_port()
    sim = Process.start(
        [str(installed / "bin" / "tandem"), "sim", "ollama", "--port", str(port), "--model", "qwen3:14b"],
        tmp_path / "ollama.log",
        clean_env(),
        tmp_path,
    )
    processes.append(sim)
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=1):
                break
        except OSError:
            sim.wait_for(r"", 0.05)  # raises if it exited
    yield f"127.0.0.1:{port}"


def run_install(installed: Path, root: Path, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
    key_file = root.parent / f"{root.name}.key"
    key_file.write_text(key + "\n")
    # The box's /opt/tandem is the session's install (a venv cannot move; --no-install uses it).
    (root / "opt").mkdir(parents=True, exist_ok=True)
    if not (root / "opt" / "tandem").exists():
        (root / "opt" / "tandem").symlink_to(installed)
    return subprocess.run(
        [
            *("bash", str(DEPLOY / "edge" / "install.sh"), "--root", str(root), "--no-install"),
            *("--edge-id", EDGE, "--group", "line-a", "--api-key-file", str(key_file), *extra),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def doctor_lines(stdout: str) -> dict[str, tuple[str, str]]:
    lines = {}
    for line in stdout.splitlines():
        if found := re.fullmatch(r"(ok|FAIL|skip)\s+(\w+)\s+(.*)", line):
            lines[found.group(2)] = (found.group(1), found.group(3))
    return lines


def unit_environment(text: str) -> dict[str, str]:
    return dict(line.split("=", 2)[1:] for line in text.splitlines() if line.startswith("Environment="))


def test_one_command_installs_enrolls_and_checks_a_factory_box(
    installed: Path, ollama: str, tmp_path: Path, processes: list[Process]
) -> None:
    address, keys = start_center(installed, tmp_path, processes, secrets=None)
    root = tmp_path / "root"
    done = run_install(
        installed, root, keys[EDGE], "--gateway", address, "--plaintext", "--ollama-host", ollama
    )
    assert done.returncode == 0, done.stdout + done.stderr
    checks = doctor_lines(done.stdout)
    assert {name: outcome for name, (outcome, _) in checks.items()} == {
        "ollama": "ok", "model": "ok", "gateway": "ok", "clock": "ok", "disk": "ok",
    }  # fmt: skip
    assert f"accepts edge {EDGE!r}" in checks["gateway"][1]

    etc = root / "etc" / "tandem"
    cfg = load_config(EdgeConfig, etc / "edge.yaml", env={})
    assert (cfg.edge_id, cfg.group, cfg.uplink.address, cfg.uplink.tls) == (EDGE, "line-a", address, None)
    # The key is in a root-only file systemd reads, under the variable the config names.
    env_file = etc / "edge.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert f"{cfg.uplink.api_key_env}={keys[EDGE]}\n" in env_file.read_text()
    assert keys[EDGE] not in (etc / "edge.yaml").read_text()

    units = root / "etc" / "systemd" / "system"
    unit = (units / "tandem-edge.service").read_text()
    assert "ExecStart=/opt/tandem/bin/tandem edge serve --config /etc/tandem/edge.yaml\n" in unit
    assert "EnvironmentFile=-/etc/tandem/edge.env\n" in unit
    # Ollama runs as the edge config expects it to: same address, same slots, same keep-alive.
    override = unit_environment((units / "ollama.service.d" / "tandem.conf").read_text())
    assert f"http://{override['OLLAMA_HOST']}" == cfg.ollama.url
    assert int(override["OLLAMA_NUM_PARALLEL"]) == cfg.ollama.num_parallel == 4
    assert override["OLLAMA_KEEP_ALIVE"] == cfg.ollama.keep_alive
    assert (override["OLLAMA_KV_CACHE_TYPE"], override["OLLAMA_FLASH_ATTENTION"]) == ("q8_0", "1")

    # Run again (an upgrade, a new key): the previous config is kept beside the new one.
    again = run_install(
        installed, root, keys[EDGE], "--gateway", address, "--plaintext", "--ollama-host", ollama
    )
    assert again.returncode == 0, again.stdout
    assert (etc / "edge.yaml.bak").read_text() == (etc / "edge.yaml").read_text()


def test_a_key_the_gateway_does_not_accept_fails_the_install_at_the_doctor(
    installed: Path, ollama: str, tmp_path: Path, processes: list[Process]
) -> None:
    address, keys = start_center(installed, tmp_path, processes, secrets=None)
    common = ("--gateway", address, "--plaintext", "--ollama-host", ollama)
    unknown = run_install(installed, tmp_path / "a", "tdm-" + "x" * 43, *common)
    assert unknown.returncode == 1
    outcome, detail = doctor_lines(unknown.stdout)["gateway"]
    assert outcome == "FAIL" and "Unauthenticated" in detail and "TANDEM_EDGE_API_KEY" in detail
    # Another box's key: accepted by the gateway, but not for this edge id.
    other = run_install(installed, tmp_path / "b", keys["line-a-box-2"], *common)
    assert other.returncode == 1
    outcome, detail = doctor_lines(other.stdout)["gateway"]
    assert outcome == "FAIL" and "PermissionDenied" in detail and "line-a-box-2" in detail


def test_the_edge_checks_the_gateways_certificate_with_the_ca_it_was_given(
    installed: Path, ollama: str, cluster_secrets: Path, tmp_path: Path, processes: list[Process]
) -> None:
    address, keys = start_center(installed, tmp_path, processes, secrets=cluster_secrets)
    common = ("--gateway", address, "--ollama-host", ollama, "--server-name", CERT_HOST)
    done = run_install(
        installed, tmp_path / "root", keys[EDGE], *common, "--ca-file", str(cluster_secrets / "ca.crt")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert doctor_lines(done.stdout)["gateway"][0] == "ok"
    assert "(TLS)" in doctor_lines(done.stdout)["gateway"][1]
    written = yaml.safe_load((tmp_path / "root" / "etc" / "tandem" / "edge.yaml").read_text())
    assert written["uplink"]["tls"] == {"ca_file": "/etc/tandem/tls/ca.crt", "server_name": CERT_HOST}
    # Without the CA (the system's CAs do not know make-secrets.sh's), the handshake fails.
    untrusted = run_install(installed, tmp_path / "other", keys[EDGE], *common)
    assert untrusted.returncode == 1
    assert doctor_lines(untrusted.stdout)["gateway"][0] == "FAIL"


def client_certificate(secrets: Path, tmp: Path, name: str) -> tuple[Path, Path]:
    """A client certificate for an edge, signed by the CA make-secrets.sh made."""
    key, csr, cert, ext = (tmp / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    ext.write_text("extendedKeyUsage=clientAuth\n")
    subprocess.run(
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(secrets / "ca.crt"), "-CAkey",
         str(secrets / "ca.key"), "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_with_mtls_the_box_is_enrolled_with_its_certificate(
    installed: Path, ollama: str, cluster_secrets: Path, tmp_path: Path, processes: list[Process]
) -> None:
    address, keys = start_center(installed, tmp_path, processes, secrets=cluster_secrets, mtls=True)
    common = ("--gateway", address, "--ollama-host", ollama, "--server-name", CERT_HOST,
              "--ca-file", str(cluster_secrets / "ca.crt"))  # fmt: skip
    without = run_install(installed, tmp_path / "without", keys[EDGE], *common)
    assert without.returncode == 1
    assert doctor_lines(without.stdout)["gateway"][0] == "FAIL"
    cert, key = client_certificate(cluster_secrets, tmp_path, EDGE)
    root = tmp_path / "root"
    done = run_install(installed, root, keys[EDGE], *common, "--cert-file", str(cert), "--key-file", str(key))
    assert done.returncode == 0, done.stdout + done.stderr
    outcome, detail = doctor_lines(done.stdout)["gateway"]
    assert outcome == "ok" and "(mTLS)" in detail
    tls = root / "etc" / "tandem" / "tls"
    assert (tls / "edge.crt").read_bytes() == cert.read_bytes()
    assert stat.S_IMODE((tls / "edge.key").stat().st_mode) == 0o640  # root and the tandem group
