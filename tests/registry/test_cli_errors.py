"""`tandem model` failures: one line, no traceback, a documented exit code, a hint that helps."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.registry.conftest import RegistryServer, make_gguf
from tests.registry.test_auth import private_registry  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[2]


def cli(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    """Runs the CLI as an operator would (a process, no credentials but those in `env`);
    returns the exit code and stderr, after checking stderr is one line and no traceback."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_REGISTRY", "DOCKER_CONFIG"))}
    clean.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT), **env)
    proc = subprocess.run(
        [sys.executable, "-m", "registry.cli", *args], capture_output=True, text=True, env=clean, cwd=ROOT
    )
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    return proc.returncode, err


def test_push_without_credentials_to_a_registry_that_wants_them(
    private_registry: RegistryServer,  # noqa: F811
    gguf_file: Path,
    tmp_path: Path,
) -> None:
    code, err = cli(
        tmp_path, "push", f"{private_registry.host}/models/p:v1", "--gguf", str(gguf_file), "--plain-http"
    )
    assert code == 6 and "no credentials found" in err and "TANDEM_REGISTRY_USERNAME" in err


def test_a_wrong_password_is_named_as_refused_not_as_missing(
    private_registry: RegistryServer,  # noqa: F811
    gguf_file: Path,
    tmp_path: Path,
) -> None:
    args = ("push", f"{private_registry.host}/models/p:v1", "--gguf", str(gguf_file), "--plain-http")
    code, err = cli(tmp_path, *args, TANDEM_REGISTRY_USERNAME="ops", TANDEM_REGISTRY_PASSWORD="wrong")
    assert code == 6 and "credentials from the environment were refused" in err
    assert "set TANDEM_REGISTRY" not in err


@pytest.mark.parametrize("command", ["push", "pull"])
def test_tls_against_a_plain_http_registry_suggests_plain_http(
    registry_server: RegistryServer, gguf_file: Path, tmp_path: Path, command: str
) -> None:
    ref = f"{registry_server.host}/models/tls:v1"
    extra = ["--gguf", str(gguf_file)] if command == "push" else ["--store", str(tmp_path / "s")]
    code, err = cli(tmp_path, command, ref, *extra)
    assert code == 7 and "add --plain-http" in err


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "is empty"), (b"just some text\n", "not a GGUF file"), (os.urandom(4096), "not a GGUF file")],
)
def test_push_refuses_a_file_that_is_not_a_gguf(
    registry_server: RegistryServer, tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "weights.gguf"
    path.write_bytes(content)
    code, err = cli(
        tmp_path, "push", f"{registry_server.host}/models/bad:v1", "--gguf", str(path), "--plain-http"
    )
    assert code == 2 and problem in err


def test_a_reference_without_a_tag_is_refused(registry_server: RegistryServer, tmp_path: Path) -> None:
    gguf = make_gguf(tmp_path / "m.gguf")
    code, err = cli(
        tmp_path, "push", f"{registry_server.host}/models/untagged", "--gguf", str(gguf), "--plain-http"
    )
    assert code == 2 and "no tag" in err and ":latest" in err


def test_pulling_something_that_is_not_a_model_is_rejected_by_name(
    registry_server: RegistryServer, tmp_path: Path
) -> None:
    """A container image (docker schema 2): refused as not a model, exit 3, not "HTTP 400"."""
    config = b"{}"
    base = f"http://{registry_server.host}/v2/models/image"

    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    location = httpx.post(f"{base}/blobs/uploads/").headers["Location"]
    httpx.put(f"{location}&digest={digest}", content=config).raise_for_status()
    manifest = (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        f'"config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{digest}","size":2}},'
        f'"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{digest}","size":2}}]}}'
    )
    httpx.put(
        f"{base}/manifests/v1",
        content=manifest,
        headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"},
    ).raise_for_status()
    code, err = cli(
        tmp_path,
        "pull",
        f"{registry_server.host}/models/image:v1",
        "--plain-http",
        "--store",
        str(tmp_path / "s"),
    )
    assert code == 3, err
