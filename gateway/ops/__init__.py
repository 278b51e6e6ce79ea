"""The ops page: the gateway's view of the fleet, the pools, routes over time, rollouts and
batches, at `/ops/` on its HTTP listener (docs/ops-page.md).

`install(app, service)` adds the routes and starts the route history: it listens to the
service for each request's route and each edge's heartbeat. The JSON is built by
`snapshot.OpsView`, served by `api`; the page is static HTML, CSS and JavaScript
(`static/`), with no build step and nothing fetched from anywhere else.
"""

from __future__ import annotations

from aiohttp import web

from gateway.ops.api import add_routes
from gateway.ops.batches import BatchSource, BatchSummary, NoBatches
from gateway.ops.history import RouteHistory
from gateway.ops.snapshot import OpsView
from gateway.service import GatewayService

__all__ = ["BatchSource", "BatchSummary", "NoBatches", "OpsView", "RouteHistory", "install"]


def install(app: web.Application, service: GatewayService, batches: BatchSource | None = None) -> OpsView:
    """Serves the ops page from `app`, over `service` and its fleet; returns its view."""
    history = RouteHistory()
    service.route_listeners.append(history.decided)
    service.heartbeat_listeners.append(history.heard)
    view = OpsView(service, service.state.fleet, history, batches or NoBatches())
    add_routes(app, view)
    return view
