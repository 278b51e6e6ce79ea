"""The package map's arrows point one way (docs/architecture.md draws them).

Every import statement in the product's source is read, lazy ones inside functions included,
and checked against what its package may import. Third-party imports are free except litellm,
which only the gateway's pool may import (the edge agent and the core stay light).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("tandem", "gateway", "edge_agent", "registry", "simulators", "cli")

# package -> the first-party packages it may import (itself always)
ALLOWED: dict[str, set[str]] = {
    "tandem": set(),  # the core: both processes use it; it uses nothing of theirs
    "gateway": {"tandem"},
    "edge_agent": {"tandem", "registry"},
    "registry": {"tandem"},
    "simulators": {"tandem"},  # dev/test engines; nothing in the product imports them
    "cli": set(PRODUCT),  # the `tandem` command and `tandem up` sit above everything
}
LITELLM_HOME = "gateway/pool/litellm_balancer.py"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) for every absolute import in the file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def _sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "_pb2" not in p.name)


def _violations() -> list[str]:
    bad = []
    for package in PRODUCT:
        for path in _sources(package):
            rel = path.relative_to(ROOT).as_posix()
            for line, module in _imports(path):
                if module in PRODUCT and module != package and module not in ALLOWED[package]:
                    bad.append(f"{rel}:{line} imports {module}")
                if module == "litellm" and rel != LITELLM_HOME:
                    bad.append(f"{rel}:{line} imports litellm (only {LITELLM_HOME} may)")
    return bad


def test_every_package_imports_only_what_its_layer_allows() -> None:
    assert _violations() == []


def test_the_two_applications_never_import_each_other() -> None:
    crossings = [
        f"{path.relative_to(ROOT)}:{line}"
        for app, other in (("gateway", "edge_agent"), ("edge_agent", "gateway"))
        for path in _sources(app)
        for line, module in _imports(path)
        if module == other
    ]
    assert crossings == []


def test_nothing_in_the_product_imports_the_simulators() -> None:
    users = {
        path.relative_to(ROOT).as_posix()
        for package in ("tandem", "gateway", "edge_agent", "registry")
        for path in _sources(package)
        if any(module == "simulators" for _, module in _imports(path))
    }
    assert users == set()


@pytest.mark.parametrize("package", PRODUCT)
def test_each_package_is_a_folder_at_the_top(package: str) -> None:
    assert (ROOT / package / "__init__.py").is_file()


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    # The rule above must be able to fail: the parser finds lazy imports inside functions too.
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from gateway.service import GatewayService\n    import litellm\n")
    assert _imports(module) == [(2, "gateway"), (3, "litellm")]


def test_the_wheel_ships_each_top_level_package() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages_line = next(line for line in pyproject.splitlines() if line.startswith("packages = "))
    assert sorted(ast.literal_eval(packages_line.split("=", 1)[1].strip())) == sorted(PRODUCT)
