"""Where registry credentials come from."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from registry.auth import resolve_credentials
from registry.errors import AuthFailed


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
