"""`tandem gateway ...`: run the central gateway."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click

from gateway import config as gateway_config
from gateway import logs
from gateway.errors import ConfigError


def run_loop(main: object) -> int:
    """Runs a coroutine on uvloop when available (faster I/O), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]


@click.group()
def gateway() -> None:
    """Run and manage the central gateway."""


@gateway.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML configuration file (TANDEM_* variables override it).",
)
def serve(config_path: Path | None) -> None:
    """Serve gRPC (default 127.0.0.1:50051) and OpenAI HTTP (default 127.0.0.1:8080)."""
    started = time.monotonic()
    logs.configure()
    try:
        cfg = gateway_config.load(config_path)
    except ConfigError as exc:
        click.echo(f"tandem gateway: {exc}", err=True)
        sys.exit(2)
    if not cfg.pools:
        click.echo("tandem gateway: invalid configuration\n  pools: at least one pool is required", err=True)
        sys.exit(2)
    from gateway.server import serve as run

    sys.exit(run_loop(run(cfg, started_at=started)))
