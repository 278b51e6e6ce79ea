"""The `tandem` command.

Each subcommand group lives with the code it drives and is imported only when invoked, so
`tandem edge serve` never imports litellm (the gateway's pool does) and `tandem --help` is
instant. The map below is the whole command tree at a glance.
"""

from __future__ import annotations

import importlib

import click

from tandem.version import tandem_version

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "gateway": ("gateway.commands:gateway", "Run and manage the central gateway."),
    "edge": ("edge_agent.commands:edge", "Run the edge agent on a factory box."),
    "model": ("registry.cli:model", "Push, pull, inspect and roll out model versions."),
    "fleet": ("gateway.fleet_commands:fleet", "Show the edge fleet and its model versions."),
    "sim": ("simulators.cli:sim", "Run the Ollama and vLLM engine simulators, or an autoscaled vLLM fleet."),
    "up": ("cli.up:up", "Run the whole stack on this machine."),
    "batch": ("cli.batch:batch", "Submit OpenAI-format batch files to the gateway and follow them."),
}

# Commands one subsystem adds to another's group, loaded with that group. The registry owns
# `tandem model` and never imports the gateway; rolling a version out to the fleet is the
# gateway's business (its heartbeat replies carry it), so the gateway contributes these two.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "model": ("gateway.fleet_commands:rollout", "gateway.fleet_commands:rollback"),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only a missing subsystem means "not built yet"; a missing dependency is a real error.
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            return _unavailable(cmd_name, target[1])
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        if isinstance(command, click.Group):
            _extend(command, EXTENSIONS.get(cmd_name, ()))
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help from the static map: listing commands must not import every subsystem.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in sorted(SUBCOMMANDS.items())])


def _extend(group: click.Group, targets: tuple[str, ...]) -> None:
    """Adds the commands `targets` name to `group`, unless it already has one by that name."""
    for target in targets:
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command) and command.name
        if command.name not in group.commands:
            group.add_command(command)


def _unavailable(name: str, help_: str) -> click.Command:
    @click.command(
        name=name,
        help=f"{help_} (not available in this build yet)",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    def command() -> None:
        raise click.ClickException(f"'tandem {name}' is not available in this build yet")

    return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tandem_version(), "--version", "-V", prog_name="tandem")
def main() -> None:
    """Tandem: one hybrid edge/cloud gateway for self-hosted Qwen3-class models.

    Devices call the edge agent on localhost; it answers fast requests from the local Ollama
    and forwards thinking work to the central gateway, which drives a cloud vLLM pool.
    """
