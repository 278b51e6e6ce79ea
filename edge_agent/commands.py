"""`tandem edge ...`: run the edge agent on a factory box."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
import orjson

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
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise CommandFailed(f"cannot listen on {cfg.listen.host}:{cfg.listen.port}: {reason}") from None
    sys.exit(code)


@edge.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The edge agent's YAML configuration (TANDEM_* variables override it).",
)
@click.option(
    "--disk",
    "disk_paths",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A directory that holds model files (repeatable); default: model sync's store and Ollama's.",
)
@click.option("--timeout", "deadline_s", default=5.0, show_default=True, help="Seconds per network check.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout, for programs.")
def doctor(config_path: Path | None, disk_paths: tuple[Path, ...], deadline_s: float, as_json: bool) -> None:
    """Check this box: Ollama reachable, the model present, the gateway reachable with this
    edge's key, the clock in step with the gateway's, disk room for two model versions.

    Exits 0 when every check passes, 1 otherwise.
    """
    try:
        cfg = edge_config.load(config_path)
    except ConfigError as exc:
        raise BadConfiguration(str(exc)) from None
    from edge_agent.doctor import run as diagnose

    checks = diagnose(cfg, disk_paths=disk_paths, deadline_s=deadline_s)
    failed = any(c.outcome == "FAIL" for c in checks)
    if as_json:
        rows = [{"name": c.name, "outcome": c.outcome, "detail": c.detail} for c in checks]
        click.echo(orjson.dumps({"ok": not failed, "checks": rows}))
    else:
        for check in checks:
            click.echo(check.line())
    sys.exit(1 if failed else 0)
