"""Every Tandem environment variable the edge's systemd unit, its installer and the docs tell an
operator to set is read by the code: an override of a real configuration key, a variable the
configuration names for a secret, or one a module reads itself. (The unit once told operators
to set TANDEM_UPLINK_API_KEY, which nothing read: an edge set up by the docs had no key.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge_agent.config import EdgeConfig
from gateway.config import GatewayConfig
from tests.deploy.conftest import DEPLOY, ROOT

# "tests": the docs also name knobs of the test suite and benchmarks (TANDEM_OPS_SCREENSHOT, ...)
SOURCES = ["tandem", "gateway", "edge_agent", "registry", "cli", "tests", "bench"]
NAMED = re.compile(r"\bTANDEM_[A-Z0-9_]*[A-Z0-9]\b")


def overrides_a_key(model: type[BaseModel], name: str) -> bool:
    """Whether `TANDEM_A__B` sets a key `a.b` the model has (what tandem.configfile applies)."""
    node: Any = model
    for key in name.removeprefix("TANDEM_").lower().split("__"):
        fields = getattr(node, "model_fields", None)
        if fields is None or key not in fields:
            return False
        annotation = fields[key].annotation
        # a section, or an optional section: descend into the model
        node = next(
            (a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")), None
        )
    return True


def read_by_the_code(name: str) -> bool:
    if overrides_a_key(EdgeConfig, name) or overrides_a_key(GatewayConfig, name):
        return True
    # a default of a `*_env` field: the configuration reads it without being told
    if EdgeConfig().uplink.api_key_env == name:
        return True
    # read by a module itself (logging, registry credentials, the model store), or the default
    # of a command's `--*-env` option, which names the variable the command reads its key from
    literal = re.compile(
        rf"""environ(\.get)?[\[(]\s*["']{name}["']|env\.get\(\s*["']{name}["']|default=["']{name}["']"""
    )
    if any(literal.search(p.read_text()) for d in SOURCES for p in (ROOT / d).rglob("*.py")):
        return True
    # read by a set-up script (`${TANDEM_ENGINE_CACHE:-...}` in deploy/test-engine.sh)
    expansion = re.compile(rf"\$\{{?{name}\b")
    return any(expansion.search(p.read_text()) for p in (ROOT / "deploy").rglob("*.sh"))


def named_in(path: Path) -> set[str]:
    return set(NAMED.findall(path.read_text()))


def test_the_check_tells_a_read_variable_from_an_unread_one() -> None:
    assert read_by_the_code("TANDEM_LOG_FORMAT")  # tandem/logs.py
    assert read_by_the_code("TANDEM_HTTP__PORT")  # gateway http.port
    assert read_by_the_code("TANDEM_UPLINK__TLS__CA_FILE")  # edge uplink.tls.ca_file, through an optional
    assert read_by_the_code("TANDEM_EDGE_API_KEY")  # uplink.api_key_env's default
    assert read_by_the_code("TANDEM_REGISTRY_PASSWORD")  # registry/auth.py
    assert not read_by_the_code("TANDEM_UPLINK_API_KEY")  # the old unit's
    assert not read_by_the_code("TANDEM_HTTP__PROT")
    assert not read_by_the_code("TANDEM_UPLINK__API_KEY")


def test_every_variable_the_unit_and_the_installer_name_is_read() -> None:
    named = named_in(DEPLOY / "edge" / "tandem-edge.service") | named_in(DEPLOY / "edge" / "install.sh")
    assert {"TANDEM_EDGE_API_KEY", "TANDEM_LOG_FORMAT", "TANDEM_REGISTRY_USERNAME"} <= named
    assert sorted(n for n in named if not read_by_the_code(n)) == []


def test_the_unit_sets_only_variables_that_are_read() -> None:
    unit = (DEPLOY / "edge" / "tandem-edge.service").read_text()
    set_here = re.findall(r"^Environment=(\w+)=", unit, re.M)
    assert set_here and all(read_by_the_code(n) for n in set_here)


def test_every_variable_the_docs_name_is_read() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {(n, p.name) for p in docs for n in named_in(p)}
    # A variable the docs' own example configuration names for a secret (`*_env: NAME`).
    configured = {n for p in docs for n in re.findall(r"_env:\s+(TANDEM_\w+)", p.read_text())}
    unread = sorted((n, doc) for n, doc in named if n not in configured and not read_by_the_code(n))
    assert unread == []
