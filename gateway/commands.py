"""`tandem gateway ...`: run the central gateway, and manage its tenants and API keys.

    tandem gateway serve --config gateway.yaml
    tandem gateway keys create --tenant acme [--label ci] [--models qwen3,qwen3-32b] [--rpm 600]
    tandem gateway keys create --tenant factory-a --edge line-a-box-1   # an edge agent's key
    tandem gateway keys list [--tenant acme]
    tandem gateway keys revoke KEY_ID
    tandem gateway tenants set acme [--models ...] [--rpm N] [--tpm N] [--streams N]
    tandem gateway tenants ls

Keys and tenants live in the gateway's Redis (`redis` in the same configuration file, or
`--redis-url`, or `TANDEM_REDIS__URL`), so every replica sees a change within
`auth.cache_seconds`. A key is printed once, when it is created; only its digest is stored.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from gateway import config as gateway_config
from tandem import logs
from tandem.command_errors import BadConfiguration, CommandFailed
from tandem.errors import ConfigError
from tandem.eventloop import run_loop

if TYPE_CHECKING:
    from gateway.state import RedisState, Tenant

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


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
    """Serve gRPC (default 127.0.0.1:50051) and OpenAI HTTP (default 127.0.0.1:8080).

    API keys are required unless the configuration says `auth: {required: false}`.
    """
    started = time.monotonic()
    logs.configure()
    try:
        cfg = gateway_config.load(config_path).with_auth_required_by_default()
    except ConfigError as exc:
        raise BadConfiguration(str(exc)) from None
    if not cfg.pools:
        raise BadConfiguration("invalid configuration\n  pools: at least one pool is required")
    from gateway.server import CannotListen
    from gateway.server import serve as run

    try:
        code = run_loop(run(cfg, started_at=started))
    except CannotListen as exc:
        raise CommandFailed(str(exc)) from None
    sys.exit(code)


# --- reaching the shared state from a command ----------------------------------------------------


def state_options(f: F) -> F:
    """`--config` / `--redis-url` / `--json`, for commands that read or change shared state."""
    f = click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout, for programs.")(f)
    f = click.option("--redis-url", help="Redis URL (instead of the configuration's redis.url).")(f)
    f = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The gateway's YAML configuration (its `redis` section is used).",
    )(f)
    return f


def with_redis(
    config_path: Path | None, redis_url: str | None, body: Callable[[RedisState], Awaitable[T]]
) -> T:
    """Runs `body` against the gateway's Redis; failures become messages and exit codes."""
    try:
        cfg = gateway_config.load(config_path)
    except ConfigError as exc:
        raise BadConfiguration(str(exc)) from None
    redis_cfg = cfg.redis.model_copy(update={"url": redis_url}) if redis_url else cfg.redis
    if not redis_cfg.url:
        raise BadConfiguration(
            "no Redis configured: pass --config with redis.url, --redis-url, or set TANDEM_REDIS__URL"
        )

    async def main() -> T:
        from gateway.state import RedisState, StateHealth

        # A command waits longer than a request would.
        patient = redis_cfg.model_copy(update={"timeout_seconds": max(redis_cfg.timeout_seconds, 5.0)})
        redis = RedisState(patient, StateHealth(log_transitions=False))
        try:
            return await body(redis)
        finally:
            await redis.close()

    from gateway.state import StateUnavailable

    try:
        return asyncio.run(main())
    except StateUnavailable as exc:
        raise CommandFailed(str(exc)) from None


def echo_json(payload: object) -> None:
    click.echo(orjson.dumps(payload).decode())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows in aligned columns, for people (programs pass --json)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in [headers, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def ago(t: float, now: float | None = None) -> str:
    if not t:
        return "-"
    seconds = max(0, int((now or time.time()) - t))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


# --- tenants and keys ----------------------------------------------------------------------------


def tenant_options(f: F) -> F:
    f = click.option("--streams", type=click.IntRange(0), help="Requests at once (0: unlimited).")(f)
    f = click.option("--tpm", type=click.IntRange(0), help="Tokens per minute (0: unlimited).")(f)
    f = click.option("--rpm", type=click.IntRange(0), help="Requests per minute (0: unlimited).")(f)
    f = click.option("--models", help="Allowed models, comma-separated ('*': every model).")(f)
    return f


def _changed(
    current: Tenant | None,
    name: str,
    models: str | None,
    rpm: int | None,
    tpm: int | None,
    streams: int | None,
) -> Tenant | None:
    """The tenant with the given settings changed; None when nothing was given."""
    from gateway.state import Tenant
    from gateway.state.tenants import check_tenant_name

    try:
        check_tenant_name(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if models is None and rpm is None and tpm is None and streams is None:
        return None
    base = current or Tenant(name)
    allowed = base.models
    if models is not None:
        allowed = frozenset(m.strip() for m in models.split(",") if m.strip() and m.strip() != "*")
    return Tenant(
        name,
        allowed,
        base.rpm if rpm is None else rpm,
        base.tpm if tpm is None else tpm,
        base.streams if streams is None else streams,
    )


def _limit(value: int) -> str:
    return str(value) if value else "-"


def _tenant_json(t: Tenant) -> dict[str, Any]:
    return {"name": t.name, "models": sorted(t.models), "rpm": t.rpm, "tpm": t.tpm, "streams": t.streams}


@gateway.group()
def keys() -> None:
    """Create, list and revoke tenants' API keys."""


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key belongs to (created if new).")
@click.option("--label", default="", help="A note to recognise the key by (who or what uses it).")
@click.option(
    "--role",
    type=click.Choice(["tenant", "edge", "admin"]),
    default=None,
    help="tenant (default): calls the API. edge: an edge agent's key, which may also send heartbeats. "
    "admin: an operator's key, which may also read the ops page (/ops/).",
)
@click.option(
    "--edge",
    "edge",
    default="",
    metavar="EDGE_ID",
    help="An edge key for this edge only (its edge_id); implies --role edge.",
)
@tenant_options
@click.option(
    "--offline",
    is_flag=True,
    help="Store nothing: print a key and its SHA-256 digest for auth.tenants (a gateway without Redis).",
)
@state_options
def create_key(
    tenant: str,
    label: str,
    role: str | None,
    edge: str,
    models: str | None,
    rpm: int | None,
    tpm: int | None,
    streams: int | None,
    offline: bool,
    config_path: Path | None,
    redis_url: str | None,
    as_json: bool,
) -> None:
    """Create an API key for TENANT (and set the tenant's models and limits, when given).

    An edge key (--edge EDGE_ID, or --role edge for any edge) is an edge agent's credential: it
    sends heartbeats, and the work the edge forwards counts as TENANT's. The key is printed
    once; only its digest is stored.
    """
    from gateway.state.tenants import RedisTenants, check_key_role, key_digest, key_id, new_key

    if role == "tenant" and edge:
        raise click.BadParameter("--edge makes an edge key; leave out --role tenant", param_hint="--edge")
    try:
        key_role, edge = check_key_role(role or ("edge" if edge else "tenant"), edge)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--edge") from None
    if offline:
        key = new_key()
        digest = key_digest(key)
        if as_json:
            made = {"key": key, "id": key_id(digest), "sha256": digest, "tenant": tenant}
            echo_json({**made, "role": key_role, "edge": edge})
        else:
            click.echo(f"key:    {key}\nsha256: {digest}")
            where = {
                "tenant": "key_sha256",
                "admin": "admin_key_sha256",
                "edge": f"edge_keys ({{sha256: ..., edge: {edge!r}}})",
            }[key_role]
            click.echo(f"Add the sha256 to {where} of tenant {tenant!r} in auth.tenants.", err=True)
        return

    async def body(redis: RedisState) -> tuple[str, Any, Tenant | None]:
        store = RedisTenants(redis)
        changed = _changed(await store.tenant(tenant), tenant, models, rpm, tpm, streams)
        if changed is not None:
            await store.set_tenant(changed)
        key, record = await store.create_key(tenant, label, role=key_role, edge=edge)
        return key, record, await store.tenant(tenant)

    key, record, settings = with_redis(config_path, redis_url, body)
    if as_json:
        owner = _tenant_json(settings) if settings else {"name": tenant}
        echo_json({"key": key, "id": record.id, "tenant": owner, "role": record.role, "edge": record.edge})
        return
    click.echo(key)
    kind = {"tenant": "key", "admin": "admin key"}.get(record.role, f"edge key ({_edge_of(record)})")
    click.echo(
        f"created {kind} {record.id} for tenant {tenant!r} ({settings.describe() if settings else ''}); "
        "this is the only time the key is shown",
        err=True,
    )


def _edge_of(record: Any) -> str:
    return f"edge {record.edge}" if record.edge else "any edge"


def _role_of(record: Any) -> str:
    return record.role if record.role != "edge" else f"edge:{record.edge or '*'}"


@keys.command("list")
@click.option("--tenant", help="Only this tenant's keys.")
@click.option("--all", "show_all", is_flag=True, help="Revoked keys too.")
@state_options
def list_keys(
    tenant: str | None, show_all: bool, config_path: Path | None, redis_url: str | None, as_json: bool
) -> None:
    """List API keys (their ids, never the keys)."""
    from gateway.state.tenants import RedisTenants

    async def body(redis: RedisState) -> list[Any]:
        return await RedisTenants(redis).keys(tenant)

    records = [r for r in with_redis(config_path, redis_url, body) if show_all or not r.revoked]
    if as_json:
        fields = ("id", "tenant", "role", "edge", "label", "created", "revoked")
        echo_json({"keys": [{f: getattr(r, f) for f in fields} for r in records]})
        return
    rows = [
        [
            r.id,
            r.tenant,
            _role_of(r),
            r.label or "-",
            ago(r.created),
            f"revoked {ago(r.revoked)}" if r.revoked else "live",
        ]
        for r in records
    ]
    click.echo(table(["ID", "TENANT", "ROLE", "LABEL", "CREATED", "STATUS"], rows))


@keys.command("revoke")
@click.argument("key")
@state_options
def revoke_key(key: str, config_path: Path | None, redis_url: str | None, as_json: bool) -> None:
    """Revoke KEY (its id from `keys list`, or the key itself). Every replica refuses it within
    `auth.cache_seconds`."""
    from gateway.state.tenants import RedisTenants

    async def body(redis: RedisState) -> Any:
        return await RedisTenants(redis).revoke(key)

    record = with_redis(config_path, redis_url, body)
    if record is None:
        if as_json:
            echo_json({"error": "no such key", "kind": "KeyNotFound"})
            sys.exit(1)
        raise CommandFailed("no such key (give its id from `tandem gateway keys list`)")
    if as_json:
        echo_json({"id": record.id, "tenant": record.tenant, "revoked": record.revoked})
    else:
        click.echo(f"revoked key {record.id} of tenant {record.tenant!r}")


@gateway.group()
def tenants() -> None:
    """Show and change tenants' models and limits."""


@tenants.command("set")
@click.argument("name")
@tenant_options
@state_options
def set_tenant(
    name: str,
    models: str | None,
    rpm: int | None,
    tpm: int | None,
    streams: int | None,
    config_path: Path | None,
    redis_url: str | None,
    as_json: bool,
) -> None:
    """Set tenant NAME's allowed models and limits (the options given; the rest stay)."""
    from gateway.state.tenants import RedisTenants

    async def body(redis: RedisState) -> Tenant | None:
        store = RedisTenants(redis)
        changed = _changed(await store.tenant(name), name, models, rpm, tpm, streams)
        if changed is not None:
            await store.set_tenant(changed)
        return await store.tenant(name)

    settings = with_redis(config_path, redis_url, body)
    if settings is None:
        raise click.ClickException(f"no tenant {name!r}: give at least one of --models/--rpm/--tpm/--streams")
    if as_json:
        echo_json(_tenant_json(settings))
    else:
        click.echo(f"tenant {name!r}: {settings.describe()}")


@tenants.command("ls")
@state_options
def list_tenants(config_path: Path | None, redis_url: str | None, as_json: bool) -> None:
    """List tenants with their models, limits and live keys."""
    from gateway.state.tenants import RedisTenants

    async def body(redis: RedisState) -> list[tuple[Tenant, int]]:
        store = RedisTenants(redis)
        live: dict[str, int] = {}
        for record in await store.keys():
            live[record.tenant] = live.get(record.tenant, 0) + (0 if record.revoked else 1)
        return [(t, live.get(t.name, 0)) for t in await store.tenants()]

    found = with_redis(config_path, redis_url, body)
    if as_json:
        echo_json({"tenants": [{**_tenant_json(t), "live_keys": n} for t, n in found]})
        return
    rows = [
        [t.name, ",".join(sorted(t.models)) or "*", *(_limit(v) for v in (t.rpm, t.tpm, t.streams)), f"{n}"]
        for t, n in found
    ]
    click.echo(table(["TENANT", "MODELS", "RPM", "TPM", "STREAMS", "KEYS"], rows))
