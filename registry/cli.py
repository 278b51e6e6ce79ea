"""`tandem model`: push, pull, inspect, list and tag model versions.

People get a plan, a rich progress display and readable errors; programs pass `--json` and
get one JSON object on stdout (errors too: `{"error": ..., "kind": ...}`), with a non-zero
exit code that says what kind of failure it was (see `registry.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from registry.errors import RegistryError
from registry.reference import Reference, parse_reference
from tandem import logs
from tandem.command_errors import CommandFailed

if TYPE_CHECKING:  # aiohttp is imported by the commands that use it: `push` starts faster
    from tandem.transport import Transport

F = TypeVar("F", bound=Callable[..., Any])
INTERNAL_ERROR = 70  # EX_SOFTWARE

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.I)


def parse_size(text: str) -> int:
    """`64MiB`, `64M`, `512k`, `1048576` -> bytes (binary multiples)."""
    m = _SIZE.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 64MiB, 512k, 1048576)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


class SizeParam(click.ParamType):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


SIZE = SizeParam()


def default_store() -> Path:
    env = os.environ.get("TANDEM_MODEL_STORE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(base) / "tandem" / "models"


def _quiet_logs() -> None:
    # Log lines go to stderr and only when they matter: stdout belongs to --json output. Always
    # set, not only when unconfigured: structlog's defaults (and a configuration left by a
    # library or an earlier caller in the same process) print to stdout.
    logs.configure(level=os.environ.get("TANDEM_LOG_LEVEL", "WARNING"), stream=sys.stderr)


@contextlib.asynccontextmanager
async def _transport() -> AsyncIterator[Transport]:
    """The command's one outbound transport (proxies from HTTPS_PROXY / NO_PROXY), closed after."""
    from tandem.transport import HttpClient, Transport

    transport = Transport(HttpClient())
    try:
        yield transport
    finally:
        await transport.close()


def _ref(text: str, **kw: Any) -> Reference:
    return parse_reference(text, **kw)


def _emit(as_json: bool, payload: dict[str, Any], human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=None, sort_keys=False))
    else:
        human()


def _run(as_json: bool, fn: Callable[[], None]) -> None:
    """Runs a command body; a named error becomes a message and its exit code, not a traceback."""
    try:
        fn()
    except RegistryError as exc:
        if as_json:
            click.echo(json.dumps({"error": exc.message, "kind": type(exc).__name__}))
            sys.exit(exc.exit_code)
        raise CommandFailed(exc.message, exit_code=exc.exit_code) from None
    except KeyboardInterrupt:
        click.echo("interrupted; a later pull resumes where this one stopped", err=True)
        sys.exit(130)
    except click.ClickException:
        raise  # a usage error: click reports it
    except Exception as exc:  # a bug of ours or a library's: one line, the details in the log
        logs.get_logger("registry.cli").debug("internal_error", exc_info=True)
        message = f"internal error: {type(exc).__name__}: {exc} (details: TANDEM_LOG_LEVEL=DEBUG)"
        if as_json:
            click.echo(json.dumps({"error": message, "kind": "InternalError"}))
            sys.exit(INTERNAL_ERROR)
        raise CommandFailed(message, exit_code=INTERNAL_ERROR) from None


def common(f: F) -> F:
    f = click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout, for programs.")(f)
    f = click.option(
        "--plain-http", is_flag=True, help="Plain HTTP (a registry on loopback); default HTTPS."
    )(f)
    return f


@click.group(name="model")
def model() -> None:
    """Push, pull, inspect and tag model versions (OCI artifacts in a registry).

    References look like REGISTRY/models/NAME:TAG, e.g. registry.local:5000/models/qwen3:14b-q4.
    Credentials: TANDEM_REGISTRY_USERNAME/PASSWORD, or a docker-style config (~/.docker/config.json).
    """
    _quiet_logs()


@model.command()
@click.argument("reference")
@click.option("--gguf", "gguf_path", required=True, type=click.Path(path_type=Path), help="The weights file.")
@click.option("--template", type=click.Path(path_type=Path), help="Ollama prompt template (text).")
@click.option("--system", type=click.Path(path_type=Path), help="System prompt (text).")
@click.option("--params", type=click.Path(path_type=Path), help="Ollama parameters (JSON object).")
@click.option("--license", "license_", type=click.Path(path_type=Path), help="License text.")
@click.option("--adapter", type=click.Path(path_type=Path), help="A LoRA adapter (GGUF).")
@click.option("--chunk-size", type=SIZE, default="64MiB", show_default=True, help="Largest weights layer.")
@click.option(
    "--upload-chunk", type=SIZE, default="64MiB", show_default=True, help="Bytes per upload request."
)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option(
    "--force",
    is_flag=True,
    help="Upload every blob even if the registry says it has it (to repair a damaged one).",
)
@click.option(
    "--sign-key",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Sign the version with this EC private key (PEM; password in TANDEM_SIGN_KEY_PASSWORD).",
)
@common
def push(
    reference: str,
    gguf_path: Path,
    template: Path | None,
    system: Path | None,
    params: Path | None,
    license_: Path | None,
    adapter: Path | None,
    chunk_size: int,
    upload_chunk: int,
    concurrency: int,
    force: bool,
    sign_key: Path | None,
    plain_http: bool,
    as_json: bool,
) -> None:
    """Pack a GGUF model (and its Ollama settings) and push it as REFERENCE."""
    from registry.progress import NullProgress, Progress, RichProgress
    from registry.push import ModelFiles, push_model

    def body() -> None:
        ref = _ref(reference)
        files = ModelFiles(gguf_path, template, system, params, license_, adapter)
        console = Console(stderr=True)
        # Hashing and uploading overlap (`push_model`), so progress counts the file's bytes
        # as they are checked or sent.
        total = gguf_path.stat().st_size if gguf_path.is_file() else 0
        progress: Progress = NullProgress() if as_json else RichProgress(total, f"push {ref}")
        with progress if isinstance(progress, RichProgress) else contextlib.nullcontext():
            result = push_model(
                ref,
                files,
                plain_http=plain_http,
                max_chunk=chunk_size,
                upload_chunk=upload_chunk,
                concurrency=concurrency,
                progress=progress,
                sign_key=sign_key,
                sign_key_password=os.environ.get("TANDEM_SIGN_KEY_PASSWORD"),
                force=force,
            )

        def human() -> None:
            console.print(
                f"[green]pushed[/] {result.reference} {result.manifest_digest}\n"
                f"  uploaded {result.uploaded_blobs} blobs ({result.uploaded_bytes} bytes), "
                f"skipped {result.skipped_blobs} already there ({result.skipped_bytes} bytes)"
                + ("" if result.tag_written else "; tag already pointed here")
                + (f"\n  signed: {result.signature}" if result.signature else ""),
                highlight=False,
                soft_wrap=True,
            )

        _emit(as_json, result.summary(), human)

    _run(as_json, body)


@model.command()
@click.argument("reference")
@click.option("--store", "store_dir", type=click.Path(path_type=Path), default=None, help="Local blob store.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--max-rate", type=SIZE, default=None, help="Bandwidth cap in bytes/s (e.g. 20MiB).")
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    help="http(s)://HOST[:PORT] of a mirror to try first (repeatable, in order); then REFERENCE's registry.",
)
@click.option("--dry-run", is_flag=True, help="Show what would move, move nothing.")
@click.option(
    "--full-check", is_flag=True, help="Hash reused blobs and files again (default: size and stamp)."
)
@click.option("--require-signature", is_flag=True, help="Refuse a version not signed with --public-key.")
@click.option(
    "--public-key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="EC public key (PEM) the version's signature must verify with.",
)
@common
def pull(
    reference: str,
    store_dir: Path | None,
    concurrency: int,
    max_rate: int | None,
    mirrors: tuple[str, ...],
    dry_run: bool,
    full_check: bool,
    require_signature: bool,
    public_key: Path | None,
    plain_http: bool,
    as_json: bool,
) -> None:
    """Pull REFERENCE into the local store: only missing layers, verified, resumable."""
    if require_signature and public_key is None:
        raise click.UsageError("--require-signature needs --public-key")
    from registry.progress import NullProgress, Progress, RichProgress
    from registry.pull import execute_pull, first_source, sources
    from registry.store import Store

    async def go() -> tuple[dict[str, Any], list[str]]:
        ref = _ref(reference)
        store = Store(store_dir or default_store())
        async with (
            _transport() as transport,
            first_source(
                sources(ref, list(mirrors), plain_http=plain_http),
                store,
                full_check=full_check,
                transport=transport,
                max_rate=max_rate,
            ) as (client, plan),
        ):
            lines = plan.describe()
            if client.ref.registry != ref.registry:
                lines.insert(0, f"from mirror {client.ref.registry}")
            plan_json = {
                "layers": len(plan.blobs),
                "bytes_total": plan.total_bytes,
                "bytes_present": plan.reused_bytes,
                "bytes_to_fetch": plan.to_download_bytes,
                "bytes_resumed": plan.resumed_bytes,
            }
            if dry_run:
                return {"reference": str(ref), "digest": plan.manifest_digest, "plan": plan_json}, lines
            console = Console(stderr=True)
            if not as_json:
                console.print("\n".join(lines), highlight=False, soft_wrap=True)
            progress: Progress = (
                NullProgress()
                if as_json
                else RichProgress(plan.to_download_bytes, f"pull {ref.name}", console)
            )
            with progress if isinstance(progress, RichProgress) else contextlib.nullcontext():
                result = await execute_pull(
                    plan,
                    client,
                    store,
                    concurrency=concurrency,
                    progress=progress,
                    public_key=public_key if require_signature else None,
                    full_check=full_check,
                )
            return {**result.summary(), "plan": plan_json}, lines

    def body() -> None:
        summary, lines = asyncio.run(go())

        def human() -> None:
            console = Console(stderr=True)
            if dry_run:
                console.print("\n".join(lines), highlight=False, soft_wrap=True)
                return
            b = summary["bytes"]
            console.print(
                f"[green]pulled[/] {summary['reference']} {summary['digest']}\n"
                f"  downloaded {summary['layers']['downloaded']} layers ({b['downloaded']} bytes), "
                f"reused {summary['layers']['reused']} ({b['reused']} bytes) in {summary['seconds']} s "
                f"({summary['throughput_bytes_per_s'] / 2**20:.1f} MiB/s)\n  weights: {summary['weights']}"
                + (f"\n  signature verified: {summary['signature']}" if summary["signature"] else ""),
                highlight=False,
                soft_wrap=True,
            )

        _emit(as_json, summary, human)

    _run(as_json, body)


@model.command()
@click.option("--store", "store_dir", type=click.Path(path_type=Path), default=None, help="Local blob store.")
@click.option("--quick", is_flag=True, help="Trust files whose size and stamp match (no hashing).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout, for programs.")
def verify(store_dir: Path | None, quick: bool, as_json: bool) -> None:
    """Check every blob and reassembled file in the store against its digest.

    Damaged ones are removed (the next pull fetches them again); exit code 4 if any were.
    """
    from registry.errors import DigestMismatch
    from registry.store import Store

    def body() -> None:
        store = Store(store_dir or default_store())
        with store.lock(wait=False):
            store.clean_temporaries()
            problems = store.verify(full=not quick)
        if problems:
            raise DigestMismatch(f"{len(problems)} damaged in {store.root}: " + "; ".join(problems))
        _emit(
            as_json,
            {"store": str(store.root), "problems": []},
            lambda: Console(stderr=True).print(f"[green]ok[/] {store.root}", highlight=False),
        )

    _run(as_json, body)


@model.command()
@click.option("--store", "store_dir", type=click.Path(path_type=Path), default=None, help="Local blob store.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout, for programs.")
def gc(store_dir: Path | None, as_json: bool) -> None:
    """Delete what the current and previous version of each model no longer need.

    Kept: per repository, the two versions pulled last (and, in an edge's store, the current
    and previous versions its sync state names); everything else, partial downloads and
    temporary files of killed pulls included, is deleted.
    """
    from registry.store import Store

    def body() -> None:
        store = Store(store_dir or default_store())
        keep = {d for versions in store.pulls().values() for d in versions[:2]}
        keep |= _sync_state_versions(store.root / "sync-state.json")
        with store.lock(wait=False):
            freed = store.clean_temporaries() + store.gc(keep)
        _emit(
            as_json,
            {"store": str(store.root), "kept": sorted(keep), "freed_bytes": freed},
            lambda: Console(stderr=True).print(
                f"[green]gc[/] {store.root}: kept {len(keep)} versions, freed {freed} bytes", highlight=False
            ),
        )

    _run(as_json, body)


@model.command()
@click.option(
    "--store", "store_dir", type=click.Path(path_type=Path), default=None, help="The mirror's store."
)
@click.option("--upstream", required=True, help="http(s)://HOST[:PORT] of the central registry.")
@click.option("--listen", default="0.0.0.0:5000", show_default=True, help="HOST:PORT to serve on.")
@click.option("--max-rate", type=SIZE, default=None, help="Cap on the upstream bandwidth, bytes/s.")
def mirror(store_dir: Path | None, upstream: str, listen: str, max_rate: int | None) -> None:
    """Serve the factory's edges from a local store, filled from UPSTREAM on demand.

    Read-only OCI registry API; each blob crosses the WAN once however many edges ask
    together. Edges list it first: model_sync.mirrors or `pull --mirror http://HOST:PORT`.
    """
    from registry.errors import BadReference
    from registry.mirror import StoreMirror, serve
    from registry.pull import parse_mirror
    from registry.store import Store

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    try:
        parse_mirror(upstream)
    except BadReference as exc:
        message = exc.message.replace("mirror", "upstream", 1)
        raise click.BadParameter(message, param_hint="--upstream") from None

    async def go() -> None:
        async with _transport() as transport:
            mirror = StoreMirror(
                Store(store_dir or default_store()), upstream, transport=transport, max_rate=max_rate
            )
            await serve(mirror, host.strip("[]"), int(port))

    _run(False, lambda: asyncio.run(go()))


def _sync_state_versions(path: Path) -> set[str]:
    """The current and previous versions an edge's `ModelSync` serves from this store."""
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return set()
    out: set[str] = set()
    for key in ("current", "previous"):
        version = state.get(key) if isinstance(state, dict) else None
        if isinstance(version, dict) and isinstance(version.get("digest"), str):
            out.add(version["digest"])
    return out


@model.command()
@click.argument("reference")
@common
def inspect(reference: str, plain_http: bool, as_json: bool) -> None:
    """Show a version's config and layers without downloading them."""
    from registry.artifact import chunk_label
    from registry.pull import RegistryClient, fetch_artifact

    async def go() -> tuple[str, Any, Any]:
        ref = _ref(reference)
        async with (
            _transport() as transport,
            RegistryClient(ref, transport=transport, plain_http=plain_http) as client,
        ):
            _, digest, manifest, config, _ = await fetch_artifact(client, ref.target)
        return digest, manifest, config

    def body() -> None:
        digest, manifest, config = asyncio.run(go())
        labels = {c.digest: c for c in config.tandem.chunks}
        payload = {
            "reference": reference,
            "digest": digest,
            "config": config.wire(),
            "layers": [layer.wire() for layer in manifest.layers],
        }

        def human() -> None:
            console = Console()
            w = config.tandem.weights
            console.print(f"[bold]{reference}[/]  {digest}", highlight=False, soft_wrap=True)
            console.print(
                f"  {config.descriptor.get('name')} family={config.descriptor.get('family')} "
                f"params={config.config.get('paramSize')} quant={config.config.get('quantization')} "
                f"context={config.tandem.context_length}",
                highlight=False,
                soft_wrap=True,
            )
            console.print(
                f"  weights {w.filename} {w.size} bytes {w.digest} ({w.chunking})",
                highlight=False,
                soft_wrap=True,
            )
            table = Table("#", "role", "size", "offset", "digest", "holds")
            for i, layer in enumerate(manifest.layers):
                chunk = labels.get(layer.digest)
                holds = "" if chunk is None else chunk_label(chunk.kind, chunk.first, chunk.last)
                offset = "" if layer.offset is None else str(layer.offset)
                table.add_row(str(i), layer.role, str(layer.size), offset, layer.digest[7:19], holds)
            console.print(table)

        _emit(as_json, payload, human)

    _run(as_json, body)


@model.command(name="ls")
@click.argument("repository")
@common
def ls(repository: str, plain_http: bool, as_json: bool) -> None:
    """List the tags of REGISTRY/models/NAME with their digests."""
    from registry.auth import resolve_credentials
    from registry.push import RemoteRepository

    def body() -> None:
        ref = _ref(repository, allow_bare=True)
        repo = RemoteRepository(ref, resolve_credentials(ref.registry), plain_http=plain_http)
        rows = [{"tag": tag, "digest": repo.manifest_digest(tag)} for tag in repo.tags()]

        def human() -> None:
            table = Table("tag", "digest")
            for row in rows:
                table.add_row(row["tag"], row["digest"] or "?")
            Console().print(table)

        _emit(as_json, {"repository": ref.repository_ref, "tags": rows}, human)

    _run(as_json, body)


@model.command()
@click.argument("reference")
@click.argument("new_tag")
@common
def tag(reference: str, new_tag: str, plain_http: bool, as_json: bool) -> None:
    """Point NEW_TAG at the version REFERENCE names (no blob moves)."""
    from registry.artifact import parse_manifest
    from registry.auth import resolve_credentials
    from registry.push import RemoteRepository

    def body() -> None:
        ref = _ref(reference)
        target = ref.with_tag(new_tag)
        repo = RemoteRepository(ref, resolve_credentials(ref.registry), plain_http=plain_http)
        raw, media_type = repo.get_manifest(ref.target)
        parse_manifest(raw)  # only model manifests get tagged
        repo.put_manifest(new_tag, raw, media_type.split(";")[0].strip())
        digest = repo.manifest_digest(new_tag)
        _emit(
            as_json,
            {"reference": str(target), "digest": digest},
            lambda: Console(stderr=True).print(
                f"[green]tagged[/] {target} -> {digest}", highlight=False, soft_wrap=True
            ),
        )

    _run(as_json, body)


def main() -> None:  # `python -m registry.cli`
    model()


if __name__ == "__main__":
    main()
