"""The ops page's HTTP routes on the gateway's HTTP listener.

    GET /ops/             the page (static HTML; it holds no data)
    GET /ops/ops.js       its script, GET /ops/ops.css its style
    GET /ops/api/state    everything the page shows, as JSON (`OpsView.snapshot`)

The page itself is open, so it can ask for a key; the JSON needs an admin key (`Authorization:
Bearer <key>` or `x-api-key`, role `admin`: `tandem gateway keys create --role admin`) when
the gateway requires keys, and nothing when it does not (`tandem up` on loopback). A missing or
unknown key gets 401, a key of another role 403, in the OpenAI error shape as everywhere else.
The page polls the JSON every two seconds.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from aiohttp import web

from gateway.auth import credential
from gateway.ops.snapshot import OpsView
from gateway.service import GatewayService
from tandem.errors import PermissionDenied, TandemError
from tandem.http_io import json_response
from tandem.wire import openai as wire

STATIC = Path(__file__).parent / "static"
_FILES = {
    "/ops/": ("index.html", "text/html; charset=utf-8"),
    "/ops/ops.js": ("ops.js", "text/javascript; charset=utf-8"),
    "/ops/ops.css": ("ops.css", "text/css; charset=utf-8"),
}
# Nothing but this origin: the page loads no script, style or font from anywhere else, and no
# other site may frame it.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
NEEDS_ADMIN = (
    "the ops page needs an admin key (role admin: `tandem gateway keys create --tenant T --role admin`)"
)

VIEW_KEY = web.AppKey("ops_view", OpsView)


async def require_admin(request: web.Request, service: GatewayService) -> None:
    """Raises `Unauthenticated` (401) without a valid key and `PermissionDenied` (403) for a
    key that is not an admin's; passes everyone when the gateway checks no keys."""
    if not service.auth.required:
        return
    key = credential(request.headers.get("Authorization"), request.headers.get("x-api-key"))
    principal = await service.auth.identify(key)
    if principal is None or not principal.is_admin:
        raise PermissionDenied(NEEDS_ADMIN)


def _static(body: bytes, content_type: str) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": content_type, **_PAGE_HEADERS})


def add_routes(app: web.Application, view: OpsView) -> None:
    app[VIEW_KEY] = view
    for path, (name, content_type) in _FILES.items():
        body = (STATIC / name).read_bytes()

        async def serve(request: web.Request, body: bytes = body, kind: str = content_type) -> web.Response:
            return _static(body, kind)

        app.router.add_get(path, serve)
    app.router.add_get("/ops", redirect)
    app.router.add_get("/ops/api/state", state)


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/ops/")


async def state(request: web.Request) -> web.Response:
    view = request.app[VIEW_KEY]
    try:
        await require_admin(request, view.service)
    except TandemError as err:
        status, body, extra = wire.error_response(err)
        return json_response(body, status, {**extra, "Cache-Control": "no-store"})
    snapshot = await view.snapshot()
    return json_response(orjson.dumps(snapshot), headers={"Cache-Control": "no-store"})
