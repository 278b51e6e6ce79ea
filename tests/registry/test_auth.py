"""Where registry credentials come from, and that a pull presents them."""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.auth import Credentials, resolve_credentials
from registry.errors import AuthFailed
from registry.pull import pull_model
from registry.push import ModelFiles, push_model
from registry.reference import parse_reference
from registry.store import Store
from tests.registry.conftest import REGISTRY_BIN, RegistryServer, start_registry
from tests.registry.helpers import CHUNK, same_file


def test_environment_credentials_come_first(tmp_path: Path) -> None:
    env = {"TANDEM_REGISTRY_USERNAME": "ops", "TANDEM_REGISTRY_PASSWORD": "pw", "HOME": str(tmp_path)}
    creds = resolve_credentials("registry.local:5000", env)
    assert (creds.username, creds.password, creds.source) == ("ops", "pw", "env")


def test_password_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    env = {"TANDEM_REGISTRY_USERNAME": "ops", "TANDEM_REGISTRY_PASSWORD_FILE": str(tmp_path / "pw")}
    assert resolve_credentials("registry.local:5000", env).password == "secret"


def test_username_without_password_is_an_error() -> None:
    with pytest.raises(AuthFailed):
        resolve_credentials("registry.local:5000", {"TANDEM_REGISTRY_USERNAME": "ops"})


def test_docker_config_auth_is_used_for_its_host(tmp_path: Path) -> None:
    auth = base64.b64encode(b"robot:tok3n").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"registry.local:5000": {"auth": auth}}}))
    creds = resolve_credentials(
        "registry.local:5000", {"DOCKER_CONFIG": str(tmp_path), "HOME": str(tmp_path)}
    )
    assert (creds.username, creds.password) == ("robot", "tok3n")


def test_no_credentials_means_anonymous(tmp_path: Path) -> None:
    creds = resolve_credentials("registry.local:5000", {"HOME": str(tmp_path)})
    assert creds.basic is None and creds.token is None


def test_secrets_never_appear_in_the_repr() -> None:
    env = {"TANDEM_REGISTRY_USERNAME": "ops", "TANDEM_REGISTRY_PASSWORD": "hunter2"}
    assert "hunter2" not in repr(resolve_credentials("registry.local:5000", env))


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry that wants Basic credentials (ops / s3cret)."""
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")  # bcrypt for htpasswd; gone in Python 3.13
    root = tmp_path_factory.mktemp("private-registry")
    (root / "htpasswd").write_text(
        f"ops:{crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}\n"
    )
    auth = f"auth:\n  htpasswd:\n    realm: tandem\n    path: {root / 'htpasswd'}\n"
    proc, server = start_registry(root, extra_config=auth)
    yield server
    proc.terminate()
    proc.wait(timeout=10)


async def test_a_pull_from_a_registry_that_wants_credentials_sends_them_with_every_layer(
    private_registry: RegistryServer, gguf_file: Path, tmp_path: Path
) -> None:
    ref = parse_reference(f"{private_registry.host}/models/private:v1")
    creds = Credentials(username="ops", password="s3cret")
    push_model(ref, ModelFiles(gguf_file), plain_http=True, max_chunk=CHUNK, creds=creds)
    result = await pull_model(ref, Store(tmp_path / "store"), plain_http=True, creds=creds)
    assert same_file(result.weights_path, gguf_file)


async def test_a_pull_without_credentials_is_refused_by_name(
    private_registry: RegistryServer, tmp_path: Path
) -> None:
    ref = parse_reference(f"{private_registry.host}/models/private:v1")
    with pytest.raises(AuthFailed):
        await pull_model(ref, Store(tmp_path / "store"), plain_http=True, creds=Credentials())
