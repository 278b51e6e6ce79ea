"""The Batch API on the gateway's HTTP face, as the official `openai` SDK calls it:

    POST   /v1/files                 multipart: purpose=batch, file=<JSONL>   files.create
    GET    /v1/files?purpose=&limit=&order=&after=                            files.list
    GET    /v1/files/{id}                                                     files.retrieve
    GET    /v1/files/{id}/content                                             files.content
    DELETE /v1/files/{id}                                                     files.delete
    POST   /v1/batches               input_file_id, endpoint, completion_window, metadata
    GET    /v1/batches/{id}                                                   batches.retrieve
    GET    /v1/batches?after=&limit=                                          batches.list
    POST   /v1/batches/{id}/cancel                                            batches.cancel

Every route authenticates the caller first; a tenant sees only its own files and batches
(another tenant's id answers 404, as a missing one does). Errors are OpenAI error bodies (the
HTTP face's middleware renders a raised `TandemError`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import BodyPartReader, web

from gateway.batch.batches import Batches, check_metadata, tenant_name
from gateway.batch.files import PURPOSES
from gateway.batch.lines import parse_lines
from gateway.state.redis_conn import StateUnavailable
from tandem.errors import BadRequest, PayloadTooLarge, UpstreamUnavailable
from tandem.http_io import BODY_LIMITS, json_response, read_body

if TYPE_CHECKING:
    from gateway.state import Tenant

BATCHES_KEY = web.AppKey("batches", Batches)
MAX_LIST = 100
MAX_FILE_LIST = 10_000  # OpenAI's limit (and default) for GET /v1/files


def add_routes(app: web.Application, batches: Batches) -> None:
    app[BATCHES_KEY] = batches
    app.router.add_post("/v1/files", _shared(create_file))
    app.router.add_get("/v1/files", _shared(list_files))
    app.router.add_get("/v1/files/{file_id}", _shared(retrieve_file))
    app.router.add_get("/v1/files/{file_id}/content", _shared(file_content))
    app.router.add_delete("/v1/files/{file_id}", _shared(delete_file))
    app.router.add_post("/v1/batches", _shared(create_batch))
    app.router.add_get("/v1/batches", _shared(list_batches))
    app.router.add_get("/v1/batches/{batch_id}", _shared(retrieve_batch))
    app.router.add_post("/v1/batches/{batch_id}/cancel", _shared(cancel_batch))


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _shared(handler: Handler) -> Handler:
    """Redis unreachable is a 503 with a retry hint: batches live there and nowhere else."""

    @functools.wraps(handler)
    async def run(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except StateUnavailable:
            raise UpstreamUnavailable(
                "batches and files are kept in shared state, which is unreachable now", retry_after=1
            ) from None

    return run


async def _caller(request: web.Request) -> tuple[Batches, Tenant | None]:
    # Imported here: http_face builds the app and imports this module.
    from gateway.http_face import SERVICE_KEY, authenticate

    return request.app[BATCHES_KEY], await authenticate(request, request.app[SERVICE_KEY])


def _json(body: Any, status: int = 200) -> web.Response:
    return json_response(orjson.dumps(body), status)


# --- files -----------------------------------------------------------------------------------


async def create_file(request: web.Request) -> web.Response:
    batches, tenant = await _caller(request)
    limit = batches.config.max_file_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise PayloadTooLarge(
            f"the upload is {request.content_length} bytes; the limit is {limit} (batch.max_file_bytes)"
        )
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send the file as multipart/form-data with fields 'purpose' and 'file'")
    purpose: str | None = None
    filename, data = "", b""
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not accepted")
        if part.name == "purpose":
            purpose = (await _read_part(part, 64, "purpose")).decode(errors="replace").strip()
        elif part.name == "file":
            filename = part.filename or "batch.jsonl"
            data = await _read_part(part, limit, "file")
        else:
            await part.release()
    if purpose is None:
        raise BadRequest("missing field 'purpose' (it must be 'batch')", param="purpose")
    if purpose != "batch":
        raise BadRequest(f"purpose must be 'batch', got {purpose!r}", param="purpose")
    if not data:
        raise BadRequest("missing field 'file': the JSONL of requests", param="file")
    lines = parse_lines(data, max_lines=batches.config.max_lines)
    stored = await batches.files.put(tenant_name(tenant), filename, purpose, data, lines=len(lines))
    return _json(stored.to_openai())


async def _read_part(part: BodyPartReader, limit: int, name: str) -> bytes:
    out = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        out += chunk
        if len(out) > limit:
            if name == "file":
                raise PayloadTooLarge(f"the file is larger than {limit} bytes (batch.max_file_bytes)")
            raise BadRequest(f"field {name!r} is too long", param=name)
    return bytes(out)


async def list_files(request: web.Request) -> web.Response:
    """The caller's files, newest first unless `order=asc`, as OpenAI lists them."""
    batches, tenant = await _caller(request)
    query = request.query
    limit = _limit(query.get("limit", str(MAX_FILE_LIST)), MAX_FILE_LIST)
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest(f"order must be 'asc' or 'desc', got {order!r}", param="order")
    purpose = query.get("purpose") or None
    if purpose is not None and purpose not in PURPOSES:
        raise BadRequest(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}", param="purpose")
    files, more = await batches.files.page(
        tenant_name(tenant),
        after=query.get("after"),
        limit=limit,
        newest_first=order == "desc",
        purpose=purpose,
    )
    return _json(_page([f.to_openai() for f in files], more))


async def retrieve_file(request: web.Request) -> web.Response:
    batches, tenant = await _caller(request)
    stored = await batches.files.get(tenant_name(tenant), request.match_info["file_id"])
    return _json(stored.to_openai())


async def file_content(request: web.Request) -> web.Response:
    batches, tenant = await _caller(request)
    data = await batches.files.content(tenant_name(tenant), request.match_info["file_id"])
    return web.Response(body=data, content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    batches, tenant = await _caller(request)
    file_id = request.match_info["file_id"]
    await batches.files.delete(tenant_name(tenant), file_id)
    return _json({"id": file_id, "object": "file", "deleted": True})


# --- batches ---------------------------------------------------------------------------------


async def create_batch(request: web.Request) -> web.Response:
    batches, tenant = await _caller(request)
    body = await read_body(request, request.app[BODY_LIMITS])
    try:
        args = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise BadRequest("request body must be a JSON object")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(args.get(name), str):
            raise BadRequest(f"missing or invalid field '{name}': a string is required", param=name)
    record = await batches.create(
        tenant,
        input_file_id=args["input_file_id"],
        endpoint=args["endpoint"],
        completion_window=args["completion_window"],
        metadata=check_metadata(args.get("metadata")),
    )
    return _json(record.to_openai())


async def retrieve_batch(request: web.Request) -> web.Response:
    batches, tenant = await _caller(request)
    record = await batches.jobs.get(tenant_name(tenant), request.match_info["batch_id"])
    return _json(record.to_openai())


async def list_batches(request: web.Request) -> web.Response:
    batches, tenant = await _caller(request)
    limit = _limit(request.query.get("limit", "20"), MAX_LIST)
    records, more = await batches.jobs.page(tenant_name(tenant), request.query.get("after"), limit)
    return _json(_page([r.to_openai() for r in records], more))


def _limit(raw: str, most: int) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise BadRequest(f"limit must be a whole number from 1 to {most}, got {raw!r}", param="limit")
    return int(raw)


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """One page of an OpenAI list (the SDK pages on with `after=last_id` while `has_more`)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


async def cancel_batch(request: web.Request) -> web.Response:
    batches, tenant = await _caller(request)
    record = await batches.cancel(tenant, request.match_info["batch_id"])
    return _json(record.to_openai())


def add_unavailable_routes(app: web.Application, reason: str) -> None:
    """The same paths answering why there is no Batch API here (rather than a bare 404)."""

    async def unavailable(request: web.Request) -> web.Response:
        raise BadRequest(reason)

    for path in ("/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content", "/v1/batches",
                 "/v1/batches/{batch_id}", "/v1/batches/{batch_id}/cancel"):  # fmt: skip
        app.router.add_route("*", path, unavailable)
