"""Loading one process's configuration: a YAML file, then `TANDEM_*` environment overrides,
validated with pydantic before anything starts.

Every process (gateway, edge agent) declares its settings as a pydantic model and loads it
with `load_config`. Nested keys are overridden with `__`: `TANDEM_HTTP__PORT=9000` sets
`http.port`. A bad value or an unknown key fails with a `ConfigError` naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tandem.errors import ConfigError

ENV_PREFIX = "TANDEM_"

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def load_config(
    model: type[M],
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    env_skip: frozenset[str] = frozenset(),
) -> M:
    """Reads `path` (optional), applies `TANDEM_*` overrides from `env`, and validates.

    `env_skip` names top-level keys of other processes' variables to leave alone (for
    example `TANDEM_LOG_FORMAT`, read by logging, not by the model).
    """
    source = str(path) if path else "defaults"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(loaded).__name__}")
        data = loaded or {}
    overrides = _env_overrides(env if env is not None else os.environ, model, env_skip)
    for _, keys, value in overrides:
        _set_path(data, keys, value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        setters = [(name, keys) for name, keys, _ in overrides]
        raise ConfigError(_describe(source, exc, setters)) from None


def _env_overrides(
    env: Mapping[str, str], model: type[BaseModel], skip: frozenset[str]
) -> list[tuple[str, list[str], Any]]:
    known = set(model.model_fields)
    out = []
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        # Only variables whose first key belongs to this model: the gateway and edge agent
        # share one environment in `tandem up` and must not reject each other's settings.
        if keys[0] not in known or keys[0] in skip:
            continue
        out.append((name, keys, _env_value(raw)))
    return out


def _env_value(raw: str) -> Any:
    """YAML gives numbers, booleans and lists their natural types ("9000" -> 9000); a value
    that only looks like a mapping ("prod:") stays the text it is."""
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, dict | list) and not raw.lstrip().startswith(("{", "[")):
        return raw
    return value


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def _describe(source: str, exc: ValidationError, setters: list[tuple[str, list[str]]]) -> str:
    """One line per problem, each saying where the bad value came from: an environment
    variable (it overrides the file, so a typo there must not be blamed on the file) or `source`."""
    lines = [f"{source}: invalid configuration" if not setters else "invalid configuration"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        origin = next((name for name, keys in setters if loc[: len(keys)] == keys), None)
        where = f" (from {origin})" if origin else (f" (from {source})" if setters else "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        given = err.get("input")
        shown = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {given!r})"
        if any(s in key.lower() for s in ("key", "password", "secret", "token")):
            shown = ""  # never echo something that may be a secret
        lines.append(f"  {key}: {msg}{shown}{where}")
    return "\n".join(lines)
