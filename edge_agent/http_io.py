"""The edge agent's HTTP glue: the service's key in the app; the rest is `gateway.http_io`."""

from __future__ import annotations

from aiohttp import web

from edge_agent.service import EdgeService
from gateway.http_io import StreamFormat, json_response, openai_stream_format, read_body, write_stream

__all__ = [
    "SERVICE_KEY",
    "StreamFormat",
    "json_response",
    "openai_stream_format",
    "read_body",
    "write_stream",
]

SERVICE_KEY = web.AppKey("edge_service", EdgeService)
