"""`tandem edge ...`: run the edge agent on a factory box."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from edge_agent import config as edge_config
from tandem import logs
from tandem.command_errors import BadConfiguration, CommandFailed
from tandem.errors import ConfigError
from tandem.eventloop import run_loop


@click.group()
def edge() -> None:
    """Run the edge agent on a factory box."""


@edge.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML configuration file (TANDEM_* variables override it).",
)
def serve(config_path: Path | None) -> None:
    """Serve OpenAI and Ollama APIs on 127.0.0.1:11435: local Ollama, or the gateway."""
    started = time.monotonic()
    logs.configure()
    try:
        cfg = edge_config.load(config_path)
    except ConfigError as exc:
        raise BadConfiguration(str(exc)) from None
    from edge_agent.server import serve as run

    try:
        code = run_loop(run(cfg, started_at=started))
    except OSError as exc:  # the port is taken, most often
        raise CommandFailed(f"cannot listen on {cfg.listen.host}:{cfg.listen.port}: {exc}") from None
    sys.exit(code)
