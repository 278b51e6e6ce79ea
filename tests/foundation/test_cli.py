"""The `tandem` command: help, version, and honest answers for subsystems not yet built."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from cli.main import SUBCOMMANDS, main


def test_help_lists_every_subsystem() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("gateway", "edge", "model", "sim", "up"):
        assert name in result.output and name in SUBCOMMANDS


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("tandem, version ")


def test_help_does_not_import_litellm() -> None:
    code = (
        "import sys; from cli.main import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "assert 'litellm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
