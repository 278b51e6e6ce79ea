"""Configuration: YAML plus TANDEM_* overrides, validated, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from tandem.configfile import Section, load_config
from tandem.errors import ConfigError


class Http(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)


class Sample(Section):
    http: Http = Http()
    api_key_env: str = "KEY"
    pools: list[str] = Field(default_factory=list)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_apply_without_a_file() -> None:
    assert load_config(Sample, None, env={}).http.port == 8080


def test_file_values_are_read(tmp_path: Path) -> None:
    cfg = load_config(Sample, write(tmp_path, "http:\n  port: 9000\n"), env={})
    assert cfg.http.port == 9000


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    cfg = load_config(Sample, write(tmp_path, "http:\n  port: 9000\n"), env={"TANDEM_HTTP__PORT": "9100"})
    assert cfg.http.port == 9100


def test_environment_lists_parse_as_yaml() -> None:
    assert load_config(Sample, None, env={"TANDEM_POOLS": "[a, b]"}).pools == ["a", "b"]


def test_other_processes_variables_are_ignored() -> None:
    assert load_config(Sample, None, env={"TANDEM_UPLINK__URL": "x"}).http.port == 8080


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http\.port: .*(less than or equal|65535)"):
        load_config(Sample, write(tmp_path, "http:\n  port: 70000\n"), env={})


def test_unknown_key_is_rejected_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http\.prot: unknown key"):
        load_config(Sample, write(tmp_path, "http:\n  prot: 1\n"), env={})


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Sample, write(tmp_path, "http: [\n"), env={})


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(Sample, tmp_path / "nope.yaml", env={})


def test_secret_like_values_are_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(Sample, write(tmp_path, "api_key_env: [sk-verysecretvalue123]\n"), env={})
    assert "sk-verysecretvalue123" not in str(err.value)
    assert "api_key_env" in str(err.value)


def test_environment_text_that_looks_like_a_mapping_stays_text() -> None:
    assert load_config(Sample, None, env={"TANDEM_API_KEY_ENV": "prod:"}).api_key_env == "prod:"
