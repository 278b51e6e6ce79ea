"""`tandem batch`: submit an OpenAI-format batch file to the gateway and follow it.

    tandem batch submit docs.jsonl --wait --output results.jsonl

Uploads the file (`POST /v1/files`, purpose=batch), creates the batch (`POST /v1/batches`),
and with `--wait` follows it with a progress bar until it ends, then can save the output file.
People get the progress bar and a summary; programs pass `--json` (the final Batch object, or
the created one without `--wait`) and read the exit status: 0 when the batch completed (or was
created, without `--wait`), 1 otherwise. The API key is read from an environment variable
(`--api-key-env`, TANDEM_API_KEY by default), never from the command line, where other users
of the machine could see it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tandem.transport import Transport, Unreachable

FINISHED = ("completed", "failed", "expired", "cancelled")


class BatchClient:
    """The gateway's Batch API over Tandem's one outbound transport."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.transport = Transport()

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        try:
            resp = await self.transport.request(
                method, f"{self.base_url}{path}", body, {**self.headers, **(headers or {})}, total_s=300
            )
            data = await resp.read()
        except (Unreachable, TimeoutError) as exc:
            raise click.ClickException(f"the gateway at {self.base_url} cannot be reached: {exc}") from None
        if resp.status >= 400:
            raise click.ClickException(f"{method} {path}: {resp.status}: {_error_message(data)}")
        return data if path.endswith("/content") else orjson.loads(data)

    async def upload(self, path: Path) -> dict[str, Any]:
        data = await asyncio.to_thread(path.read_bytes)
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", data, filename=path.name, content_type="application/jsonl")
        payload = form()
        headers = {"Content-Type": payload.content_type}
        result: dict[str, Any] = await self.call("POST", "/files", payload, headers)
        return result

    async def create(self, file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        if metadata:
            body["metadata"] = metadata  # type: ignore[assignment]
        result: dict[str, Any] = await self.call(
            "POST", "/batches", orjson.dumps(body), {"Content-Type": "application/json"}
        )
        return result

    async def close(self) -> None:
        await self.transport.close()


def _error_message(data: bytes) -> str:
    try:
        return str(orjson.loads(data)["error"]["message"])
    except Exception:
        return data.decode(errors="replace")[:500]


@click.group()
def batch() -> None:
    """Submit OpenAI-format batch files (JSONL of /v1/chat/completions requests) to the gateway."""


@batch.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--url",
    default=lambda: os.environ.get("TANDEM_GATEWAY_URL", "http://127.0.0.1:8080/v1"),
    show_default="$TANDEM_GATEWAY_URL or http://127.0.0.1:8080/v1",
    help="The gateway's OpenAI base URL.",
)
@click.option(
    "--api-key-env",
    default="TANDEM_API_KEY",
    show_default=True,
    help="Environment variable holding the API key.",
)
@click.option(
    "--metadata", "-m", multiple=True, metavar="KEY=VALUE", help="Metadata of the batch (repeatable)."
)
@click.option("--wait", is_flag=True, help="Follow the batch with a progress bar until it ends.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --wait: save the output file here.",
)
@click.option(
    "--poll", default=1.0, show_default=True, type=click.FloatRange(min=0.05), help="Seconds between checks."
)
@click.option("--json", "as_json", is_flag=True, help="Print the Batch object as JSON, for programs.")
def submit(
    file: Path,
    url: str,
    api_key_env: str,
    metadata: tuple[str, ...],
    wait: bool,
    output: Path | None,
    poll: float,
    as_json: bool,
) -> None:
    """Uploads FILE and starts a batch over it."""
    pairs: dict[str, str] = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--metadata")
        pairs[key] = value
    if output is not None and not wait:
        raise click.BadParameter("--output needs --wait (the output exists once the batch ends)")
    final = asyncio.run(_submit(file, url, os.environ.get(api_key_env), pairs, wait, output, poll, as_json))
    if wait and final["status"] != "completed":
        sys.exit(1)


async def _submit(
    file: Path,
    url: str,
    api_key: str | None,
    metadata: dict[str, str],
    wait: bool,
    output: Path | None,
    poll: float,
    as_json: bool,
) -> dict[str, Any]:
    console = Console(stderr=True)
    client = BatchClient(url, api_key)
    try:
        uploaded = await client.upload(file)
        created = await client.create(uploaded["id"], metadata)
        if not as_json:
            console.print(f"batch [bold]{created['id']}[/] ({created['status']}) over {uploaded['id']}")
        final = await _follow(client, created, poll, console, quiet=as_json) if wait else created
        if output is not None and final.get("output_file_id"):
            content = await client.call("GET", f"/files/{final['output_file_id']}/content")
            await asyncio.to_thread(output.write_bytes, content)
    finally:
        await client.close()
    if as_json:
        click.echo(orjson.dumps(final).decode())
    elif wait:
        counts = final["request_counts"]
        click.echo(
            f"{final['id']} {final['status']}: {counts['completed']} completed, {counts['failed']} failed "
            f"of {counts['total']}; output {final.get('output_file_id') or '-'}, "
            f"errors {final.get('error_file_id') or '-'}"
            + (f"; saved to {output}" if output is not None and final.get("output_file_id") else "")
        )
        for problem in (final.get("errors") or {}).get("data", []):
            click.echo(f"  line {problem.get('line')}: {problem.get('message')}", err=True)
    else:
        click.echo(created["id"])
    return final


async def _follow(
    client: BatchClient, batch_obj: dict[str, Any], poll: float, console: Console, *, quiet: bool
) -> dict[str, Any]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=quiet, transient=False) as progress:
        task = progress.add_task(batch_obj["status"], total=None)
        started = time.monotonic()
        while True:
            counts = batch_obj["request_counts"]
            progress.update(
                task,
                description=batch_obj["status"],
                total=counts["total"] or None,
                completed=counts["completed"] + counts["failed"],
            )
            if batch_obj["status"] in FINISHED:
                return batch_obj
            await asyncio.sleep(poll if time.monotonic() - started > 2 else min(poll, 0.2))
            batch_obj = await client.call("GET", f"/batches/{batch_obj['id']}")
