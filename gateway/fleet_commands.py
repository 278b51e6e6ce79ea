"""`tandem fleet ls`, and `tandem model rollout|rollback`: the edge fleet and its model versions.

    tandem fleet ls [--group G]
    tandem model rollout REGISTRY/models/NAME:TAG --group G [--canary PCT] [--digest sha256:...]
    tandem model rollback --group G

Both read and change the gateway's shared state (Redis): a rollout sets the group's desired
version, which every gateway replica hands to the group's edges in their next heartbeat reply;
the edges' model sync pulls and switches. `rollout` and `rollback` belong to `tandem model`,
which the registry package owns and which never imports the gateway, so the root command adds
them to that group when it loads it (`cli.main.EXTENSIONS`). This module imports nothing
heavy: `tandem model push` loads it too.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gateway import fleet as fleet_rules
from gateway.commands import ago, echo_json, state_options, table, with_redis
from gateway.fleet import Desired, EdgeStatus, RolloutError

if TYPE_CHECKING:
    from gateway.state import RedisState


def _store(redis: RedisState) -> Any:
    from gateway.state.fleet_redis import RedisFleet

    return RedisFleet(redis)


def _desired_json(group: str, d: Desired) -> dict[str, Any]:
    return {
        "group": group,
        "reference": d.reference,
        "digest": d.digest,
        "canary_percent": d.canary_percent,
        "previous_reference": d.previous_reference,
        "previous_digest": d.previous_digest,
        "updated_at": d.updated_at,
    }


def _describe(group: str, d: Desired) -> str:
    text = f"group {group!r}: {d.reference}"
    if d.canary_percent < 100:
        before = d.previous_reference or "what they have"
        text += f" on {d.canary_percent}% of edges (canary); the others stay on {before}"
    else:
        text += " on every edge"
    if d.previous_reference and d.canary_percent >= 100:
        text += f" (rollback: {d.previous_reference})"
    return text


@click.command()
@click.argument("reference")
@click.option("--group", default=fleet_rules.DEFAULT_GROUP, show_default=True, help="The edge group.")
@click.option(
    "--canary",
    type=click.IntRange(0, 100),
    default=100,
    show_default=True,
    help="Percent of the group's edges that get it now (raise it later with the same command).",
)
@click.option("--digest", default="", help="Pin the manifest digest (sha256:...), as REF@sha256:... does.")
@state_options
def rollout(
    reference: str,
    group: str,
    canary: int,
    digest: str,
    config_path: Path | None,
    redis_url: str | None,
    as_json: bool,
) -> None:
    """Make REFERENCE the model version an edge group should serve, for a canary share first.

    Edges learn it from their next heartbeat reply. The version the group served before is
    kept for `tandem model rollback`.
    """
    try:
        ref, pinned = fleet_rules.check_reference(reference, digest)
    except RolloutError as exc:
        raise click.BadParameter(str(exc), param_hint="REFERENCE") from None

    async def body(redis: RedisState) -> Desired:
        result: Desired = await _store(redis).rollout(group, ref, pinned, canary)
        return result

    try:
        desired = with_redis(config_path, redis_url, body)
    except RolloutError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(_desired_json(group, desired))
    else:
        click.echo(_describe(group, desired))


@click.command()
@click.option("--group", default=fleet_rules.DEFAULT_GROUP, show_default=True, help="The edge group.")
@state_options
def rollback(group: str, config_path: Path | None, redis_url: str | None, as_json: bool) -> None:
    """Return an edge group, every edge of it, to the version it served before the last rollout."""

    async def body(redis: RedisState) -> Desired:
        result: Desired = await _store(redis).rollback(group)
        return result

    try:
        desired = with_redis(config_path, redis_url, body)
    except RolloutError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(_desired_json(group, desired))
    else:
        click.echo(f"rolled back {_describe(group, desired)}")


@click.group()
def fleet() -> None:
    """Show the edge fleet and its model versions."""


@fleet.command("ls")
@click.option("--group", help="Only this edge group.")
@state_options
def ls(group: str | None, config_path: Path | None, redis_url: str | None, as_json: bool) -> None:
    """Each edge heard from within the heartbeat TTL: its models, load, last heartbeat, and
    whether it serves the version its group's rollout assigns it."""

    async def body(redis: RedisState) -> tuple[list[EdgeStatus], dict[str, Desired]]:
        store = _store(redis)
        return await store.edges(), await store.desired_all()

    edges, desired = with_redis(config_path, redis_url, body)
    if group is not None:
        edges = [e for e in edges if e.group == group]
        desired = {g: d for g, d in desired.items() if g == group}
    now = time.time()
    rows = []
    for edge in edges:
        want = desired.get(edge.group)
        ref, digest = fleet_rules.assignment(edge.edge_id, edge.group, want)
        canary = bool(want and want.canary_percent < 100 and ref == want.reference)
        rows.append((edge, ref, digest, canary, fleet_rules.matches(edge, ref, digest)))
    if as_json:
        echo_json(
            {
                "edges": [
                    {
                        "edge_id": e.edge_id,
                        "group": e.group,
                        "healthy": e.healthy,
                        "in_flight": e.in_flight,
                        "queued": e.queued,
                        "version": e.version,
                        "models": [asdict(m) for m in e.models],
                        "last_seen": e.last_seen,
                        "desired_reference": ref,
                        "desired_digest": digest,
                        "canary": canary,
                        "matches": match,
                    }
                    for e, ref, digest, canary, match in rows
                ],
                "desired": [_desired_json(g, d) for g, d in desired.items()],
            }
        )
        return
    for g, d in desired.items():
        click.echo(_describe(g, d))
    if desired:
        click.echo()
    lines = [
        [
            e.edge_id,
            e.group,
            "ok" if e.healthy else "unhealthy",
            f"{e.in_flight}/{e.queued}",
            ", ".join(_served(m.name, m.digest, m.reference) for m in e.models) or "-",
            (ref or "-") + (" (canary)" if canary else ""),
            {True: "yes", False: "no", None: "-"}[match],
            ago(e.last_seen, now),
        ]
        for e, ref, _, canary, match in rows
    ]
    click.echo(table(["EDGE", "GROUP", "HEALTH", "LOAD", "SERVES", "DESIRED", "MATCH", "HEARD"], lines))
    if not rows:
        click.echo("(no edge has sent a heartbeat within the TTL)", err=True)


def _served(name: str, digest: str, reference: str) -> str:
    if reference:
        return reference
    return f"{name}@{digest.removeprefix('sha256:')[:12]}" if digest else name
