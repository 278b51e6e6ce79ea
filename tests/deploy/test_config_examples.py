"""Every configuration example in README.md and docs/ loads as written, with the class the
process that reads it uses (a new example must be listed in EXAMPLES, or this test fails).
Absolute paths an example names (certificates, keys) are created under a temporary directory
first: the configuration checks that such files exist."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import edge_agent.config
from edge_agent.config import EdgeConfig
from edge_agent.model_sync import ModelSyncConfig
from gateway.config import GatewayConfig
from gateway.pool.discovery import DnsSource
from tandem.configfile import load_config
from tests.deploy.conftest import ROOT
from tests.deploy.test_kubernetes import check_scaled_object

BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.S)
PATH = re.compile(r"(?<![\w.])/(?:etc|var/lib)/tandem/[\w./-]+\.\w+")


def gateway(path: Path) -> None:
    load_config(GatewayConfig, path, env={})


def edge(path: Path) -> None:
    load_config(EdgeConfig, path, env={})


def edge_with_model_sync(path: Path) -> None:
    cfg = load_config(EdgeConfig, path, env={})
    assert cfg.model_sync is not None
    ModelSyncConfig.model_validate(cfg.model_sync)  # what the edge does when it starts model sync


def dns_source(path: Path) -> None:
    DnsSource.model_validate(yaml.safe_load(path.read_text())["discovery"])


def scaled_object(path: Path) -> None:
    check_scaled_object(yaml.safe_load(path.read_text()))


def gateway_and_edge(path: Path) -> None:
    """A section both processes take (`tracing`)."""
    gateway(path)
    edge(path)


def distribution_config(path: Path) -> None:
    """The stock registry's (distribution's) own configuration, as a factory mirror."""
    config = yaml.safe_load(path.read_text())
    assert config["version"] == 0.1 and "storage" in config
    assert config["proxy"]["remoteurl"].startswith("https://")


Loader = Callable[[Path], None]
EXAMPLES: dict[tuple[str, int], Loader] = {
    ("docs/edge-agent.md", 0): edge,
    ("docs/edge-agent.md", 1): edge,
    ("docs/edge-agent.md", 2): edge,
    ("docs/elastic-pool.md", 0): gateway,
    ("docs/elastic-pool.md", 1): dns_source,
    ("docs/elastic-pool.md", 2): scaled_object,
    ("docs/gateway.md", 0): gateway,
    ("docs/gateway.md", 1): gateway,
    ("docs/gateway.md", 2): gateway,
    ("docs/model-distribution.md", 0): edge_with_model_sync,
    ("docs/shared-state.md", 0): gateway,
    ("docs/shared-state.md", 1): gateway,
    ("docs/deploy.md", 0): edge,
    ("docs/batches.md", 0): gateway,
    ("docs/model-distribution.md", 1): distribution_config,
    ("docs/observability.md", 0): gateway_and_edge,
    ("docs/routing.md", 0): gateway,
    ("docs/routing.md", 1): edge,
    ("docs/engines.md", 0): gateway,
}


def examples() -> dict[tuple[str, int], str]:
    found = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(BLOCK.findall(doc.read_text())):
            found[(str(doc.relative_to(ROOT)), i)] = block
    # The edge configuration's own docstring shows one too.
    docstring = edge_agent.config.__doc__ or ""
    example = re.search(r"Example.*?:\n\n((?:    .*\n|\n)+)", docstring)
    assert example, "edge_agent/config.py's docstring lost its example"
    found[("edge_agent/config.py", 0)] = textwrap.dedent(example.group(1))
    return found


EXAMPLES[("edge_agent/config.py", 0)] = edge


def test_every_example_is_listed() -> None:
    assert sorted(examples()) == sorted(EXAMPLES)


@pytest.mark.parametrize("where", sorted(EXAMPLES), ids=lambda w: f"{w[0]}#{w[1]}")
def test_the_example_loads(where: tuple[str, int], tmp_path: Path) -> None:
    text = examples()[where]
    for path in set(PATH.findall(text)):
        made = tmp_path / path.lstrip("/")
        made.parent.mkdir(parents=True, exist_ok=True)
        made.write_text("made by the test: the example names this file\n")
        text = text.replace(path, str(made))
    file = tmp_path / "example.yaml"
    file.write_text(text)
    loader: Any = EXAMPLES[where]
    loader(file)
