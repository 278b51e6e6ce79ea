"""The rest of the Ollama API a client expects of "Ollama" (Open WebUI calls all of it), served
by the edge agent from the local Ollama or from what the edge knows:

- `GET /api/ps`: what the local Ollama has loaded (each alias listed as a copy of its model,
  as in `/api/tags`); nothing while it is down (a dead Ollama has nothing loaded).
- `POST /api/show`: a local model's details from the local Ollama; a gateway model's from the
  gateway's model list (context length, capabilities).
- `POST /api/embed`, `POST /api/embeddings`, `POST /v1/embeddings`: the local Ollama's
  embeddings (the gateway serves chat only). Every call carries the edge's `keep_alive` and
  `num_ctx`, as its chats do, so an embedding never reloads the kept-warm model.
- Load and unload (an `/api/generate` with an empty prompt, an `/api/chat` with no messages;
  `keep_alive` 0 unloads), answered as Ollama answers them. The model the edge keeps loaded
  (`ollama.model`) is not unloaded on a caller's word: that is refused with 403.
- Model management (`/api/pull`, `/api/push`, `/api/create`, `/api/copy`, `/api/delete`,
  `/api/blobs/...`): refused with 403. The fleet owns model versions: `tandem model push`
  publishes one, `tandem model rollout` places it (docs/model-distribution.md).

What is passed to the local Ollama is in flight for the edge's drain (refused once it drains),
and embeddings, loads and unloads are counted in `tandem_edge_requests` with no route.

Errors are raised as Tandem errors; the server's middleware answers them in the shape of the
face the path belongs to (Ollama's `{"error": ...}` under `/api/`, OpenAI's otherwise).
"""

from __future__ import annotations

import base64
import functools
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from edge_agent.local_engine import LocalEngine, LocalModel, LocalUnavailable
from edge_agent.service import SERVICE_KEY, EdgeService
from tandem.errors import (
    BadRequest,
    ModelNotFound,
    PayloadTooLarge,
    PermissionDenied,
    TandemError,
    UpstreamFailed,
    UpstreamUnavailable,
)
from tandem.http_io import BODY_LIMITS, json_response, read_body
from tandem.logs import get_logger
from tandem.v1 import gateway_pb2 as pb
from tandem.wire import ollama as ollama_wire
from tandem.wire import openai as openai_wire

log = get_logger("tandem.edge.local_api")

MANAGEMENT_REFUSAL = (
    "{what} is not served by the Tandem edge agent: the fleet owns model versions. Publish a "
    "version with `tandem model push` and place it on the edges with `tandem model rollout` "
    "(docs/model-distribution.md)."
)


# --- what is loaded, what a model is ------------------------------------------------------------


async def ps(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    local = service.local
    try:
        status, raw = await local.exchange("GET", "/api/ps")
    except LocalUnavailable as exc:
        log.info("local_ps_unavailable", error=str(exc))
        return json_response(b'{"models":[]}')
    if status != 200:
        return json_response(raw, status)
    listing = _object(raw, "/api/ps")
    models = listing.get("models")
    if isinstance(models, list):
        listing["models"] = models + _alias_copies(local, models)
    return json_response(orjson.dumps(listing))


def _alias_copies(local: LocalEngine, entries: list[Any]) -> list[dict[str, Any]]:
    by_name = {e.get("model") or e.get("name"): e for e in entries if isinstance(e, dict)}
    copies = []
    for alias, target in local.config.aliases.items():
        model = local.model(target)
        entry = by_name.get(model.name) if model is not None else None
        if entry is not None:
            copies.append({**entry, "name": alias, "model": alias})
    return copies


async def show(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    body = await _json_body(request)
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required", param="model")
    model = service.local.model(name)
    if model is not None:
        status, raw = await _exchange(
            service, "POST", "/api/show", {**body, "model": model.name}, runs_model=False
        )
        return json_response(raw, status)
    cloud = await _cloud_model(service, name)
    if cloud is None:
        raise ModelNotFound(name)
    return json_response(orjson.dumps(_cloud_show(cloud)))


def _cloud_show(m: pb.ModelInfo) -> dict[str, Any]:
    """`/api/show` for a model the gateway serves, from its model list. `model_info` carries
    the context length under `<architecture>.context_length`, where clients look for it."""
    info: dict[str, Any] = {"general.architecture": "tandem", "general.basename": m.id}
    if m.context_length:
        info["tandem.context_length"] = m.context_length
    return {
        "modelfile": f"# {m.id} is served by the Tandem gateway; the fleet owns its versions.\n",
        "parameters": "",
        "template": "",
        "details": {
            "parent_model": "",
            "format": "",
            "family": "",
            "families": None,
            "parameter_size": "",
            "quantization_level": "",
        },
        "model_info": info,
        "capabilities": list(m.capabilities) or ["completion"],
        "remote_model": m.id,
        "remote_host": "tandem-gateway",
        "modified_at": ollama_wire.created_at(),
    }


async def _cloud_model(service: EdgeService, name: str) -> pb.ModelInfo | None:
    forwarded = service.config.uplink.models.get(name, name)
    return next((m for m in await service.cloud_models() if m.id in (name, forwarded)), None)


# --- embeddings ---------------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _counted(face: str) -> Callable[[Handler], Handler]:
    """Counts each call in `tandem_edge_requests{face=...}` with its status (no route: the
    local Ollama answers it as it is), refusals included."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def counted(request: web.Request) -> web.Response:
            status = 500
            try:
                resp = await handler(request)
                status = resp.status
                return resp
            except TandemError as err:
                status = openai_wire.error_status(err)
                raise
            finally:
                request.app[SERVICE_KEY].count(face, None, str(status))

        return counted

    return wrap


@_counted("ollama_embed")
async def embed(request: web.Request) -> web.Response:
    """`/api/embed` and `/api/embeddings`, passed to the local Ollama under the edge's settings."""
    service = request.app[SERVICE_KEY]
    body = await _json_body(request)
    name, model = await _embedding_model(service, body.get("model"))
    status, raw = await _exchange(
        service, "POST", request.path, _engine_embed_body(service.local, model, body)
    )
    if status == 200 and name != model.name and request.path == "/api/embed":
        answer = _object(raw, request.path)
        answer["model"] = name  # the name the caller used, as Ollama echoes it
        raw = orjson.dumps(answer)
    return json_response(raw, status)


@_counted("openai_embeddings")
async def openai_embeddings(request: web.Request) -> web.Response:
    """`/v1/embeddings`: the local Ollama's `/api/embed` (under the edge's settings), in
    OpenAI's shape. `encoding_format: "base64"` (the openai SDK's default) is little-endian
    float32, as Ollama and OpenAI send it."""
    service = request.app[SERVICE_KEY]
    body = await _json_body(request)
    name, model = await _embedding_model(service, body.get("model"))
    inputs = body.get("input")
    if inputs == "":
        inputs = [""]  # Ollama embeds an empty string; an empty list is refused below
    if not (isinstance(inputs, str) or (isinstance(inputs, list) and inputs)):
        raise BadRequest("invalid field 'input': a string or a non-empty list of strings", param="input")
    if isinstance(inputs, list) and not all(isinstance(i, str) for i in inputs):
        raise BadRequest("invalid field 'input': token ids are not supported; send text", param="input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise BadRequest(
            "invalid field 'encoding_format': must be 'float' or 'base64'", param="encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise BadRequest("invalid field 'dimensions': must be a positive integer", param="dimensions")
    call: dict[str, Any] = {"model": model.name, "input": inputs}
    if dimensions:
        call["dimensions"] = dimensions
    status, raw = await _exchange(
        service, "POST", "/api/embed", _engine_embed_body(service.local, model, call)
    )
    if status != 200:
        raise _refusal(status, raw, name)
    answer = _object(raw, "/api/embed")
    vectors = answer.get("embeddings") or []
    tokens = int(answer.get("prompt_eval_count") or 0)
    data = [
        {"object": "embedding", "embedding": _base64(v) if fmt == "base64" else v, "index": i}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_response(orjson.dumps({"object": "list", "data": data, "model": name, "usage": usage}))


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def _embedding_model(service: EdgeService, name: Any) -> tuple[str, LocalModel]:
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required", param="model")
    model = service.local.model(name)
    if model is not None:
        return name, model
    if await _cloud_model(service, name) is not None:
        local = ", ".join(sorted(service.local.contexts)) or "none"
        raise BadRequest(
            f"model '{name}' is served by the gateway, which does not serve embeddings; "
            f"embeddings come from this box's Ollama (its models: {local})",
            param="model",
        )
    raise ModelNotFound(name)


def _engine_embed_body(local: LocalEngine, model: LocalModel, body: dict[str, Any]) -> dict[str, Any]:
    settings = local.settings(model)
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise BadRequest("invalid field 'options': must be an object", param="options")
    if settings.num_ctx is not None:
        options = {**options, "num_ctx": settings.num_ctx}
    return {**body, "model": model.name, "keep_alive": settings.keep_alive, "options": options}


# --- load and unload ----------------------------------------------------------------------------


async def residency(request: web.Request, call: ollama_wire.Residency, *, chat: bool) -> web.Response:
    """An empty `/api/generate` or `/api/chat`: load the model (as the edge's own calls load
    it), or unload it; a gateway model has nothing to load or unload here."""
    service = request.app[SERVICE_KEY]
    local = service.local
    model = local.model(call.model)
    if model is None:
        if await _cloud_model(service, call.model) is None:
            raise ModelNotFound(call.model)
    else:
        if call.unload and local.config.model and local.model(local.config.model) == model:
            raise PermissionDenied(
                f"model '{call.model}' is kept loaded by the Tandem edge agent (ollama.model in "
                "its configuration); it is not unloaded on a caller's request"
            )
        status, raw = await _exchange(
            service, "POST", "/api/generate", local.load_body(model, unload=call.unload)
        )
        if status != 200:
            return json_response(raw, status)
        log.info("local_model_unloaded" if call.unload else "local_model_loaded", model=model.name)
    return json_response(ollama_wire.residency_answer(call.model, chat=chat, unload=call.unload))


# --- model management ---------------------------------------------------------------------------


async def management(request: web.Request) -> web.Response:
    """Refused without reading the body: this box's models are the fleet's to change."""
    raise PermissionDenied(MANAGEMENT_REFUSAL.format(what=f"{request.method} {request.path}"))


# --- helpers ------------------------------------------------------------------------------------


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request, request.app[BODY_LIMITS])
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


async def _exchange(
    service: EdgeService, method: str, path: str, body: dict[str, Any], *, runs_model: bool = True
) -> tuple[int, bytes]:
    """A call to the local Ollama (by default one that runs a model), in flight for the edge's
    drain; its refusals are returned as it gave them, for the caller to pass on."""
    try:
        with service.passing_through():
            return await service.local.exchange(method, path, body, runs_model=runs_model)
    except LocalUnavailable as exc:
        raise UpstreamUnavailable(str(exc), retry_after=service.config.ollama.refresh_seconds) from None


def _refusal(status: int, raw: bytes, name: str) -> TandemError:
    """The local Ollama's refusal of an OpenAI-shaped call, as the Tandem error of its status
    (Ollama's own words kept)."""
    message = ollama_wire.engine_error_message(raw) or f"HTTP {status}"
    if status == 404:
        return ModelNotFound(name)
    if status == 400:
        return BadRequest(f"the local Ollama refused the request: {message}")
    if status == 413:
        return PayloadTooLarge(message)
    if status in (429, 503):
        return UpstreamUnavailable(f"the local Ollama is busy: {message}", retry_after=1)
    return UpstreamFailed(f"the local Ollama failed (HTTP {status}): {message}")


def _object(raw: bytes, path: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamUnavailable(f"the local Ollama's {path} answer is not a JSON object")
    return parsed


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embed)
    app.router.add_post("/v1/embeddings", openai_embeddings)
    for path in ("/api/pull", "/api/push", "/api/create", "/api/copy"):
        app.router.add_post(path, management)
    app.router.add_delete("/api/delete", management)
    app.router.add_route("*", "/api/blobs/{digest}", management)
