"""Structured logging for every Tandem process.

JSON lines in production (when stderr is not a terminal, or `TANDEM_LOG_FORMAT=json`),
readable colored lines in a terminal. A request id bound with `bind_request` appears on every
line logged while that request runs (structlog's contextvars). Secrets never reach a log:
`redact` blanks values under secret-looking keys and bearer tokens or key-like strings
anywhere in a value. Standard-library loggers (aiohttp, grpc, litellm) go through the same
pipeline, so their lines are redacted and formatted too.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"

_SECRET_KEY = re.compile(r"(authorization|api[_-]?key|password|passwd|secret|token|credential|cookie)", re.I)
_SECRET_VALUE = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"  # Authorization: Bearer xyz
    r"|(?i:basic\s+)[A-Za-z0-9+/=]{8,}"  # Authorization: Basic base64
    r"|\b(sk|tdm|rk|pk)-[A-Za-z0-9_-]{8,}"  # API-key shaped strings
    r"|(?<=://)[^/@\s:]+:[^/@\s]+(?=@)"  # user:password@ in URLs
)


def _scrub(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        return (m.group(1) or "") + REDACTED

    return _SECRET_VALUE.sub(repl, text)


def _redact_value(key: str, value: Any) -> Any:
    # Numbers under "token"-ish keys are counts (prompt_tokens), not credentials.
    is_count = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(key, str) and _SECRET_KEY.search(key) and not is_count:
        return REDACTED
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, dict):
        return {k: _redact_value(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value("", v) for v in value]
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: removes secrets from every field of a log line."""
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def configure(*, fmt: str | None = None, level: str | None = None, stream: Any = None) -> None:
    """Sets up structlog and the standard logging module for this process. Idempotent."""
    fmt = (fmt or os.environ.get("TANDEM_LOG_FORMAT") or "").lower()
    out = stream or sys.stderr
    if fmt not in ("json", "console"):
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    lvl = getattr(logging, (level or os.environ.get("TANDEM_LOG_LEVEL") or "INFO").upper(), logging.INFO)

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=True)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Not cached: a logger cached on first use keeps the pipeline of that moment, and a later
        # configuration (a command run in the same process, a test's capture) would miss it.
        # Lines are logged per event, not per token; building the logger costs microseconds.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # Libraries that are chatty at INFO about things the gateway logs itself.
    for noisy in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))


def adopt_library_loggers(*names: str) -> None:
    """Sends the named libraries' loggers through this process's handler only.

    Some libraries attach a handler of their own at import (litellm prints plain text to stderr
    from "LiteLLM", "LiteLLM Router" and "LiteLLM Proxy"): those lines would bypass the JSON
    format and the redaction, and appear twice. Call this after importing such a library.
    """
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def outside_requests(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls `fn` with no request bound: for process-level events (state lost or recovered)
    that a request merely happened to notice, so their log lines carry no request's id."""
    return contextvars.Context().run(fn, *args, **kwargs)


def bind_request(request_id: str, **fields: Any) -> None:
    """Binds a request id (and any other fields) to every log line of the current task."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, **fields)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


_ids = itertools.count()
_ID_PREFIX = os.urandom(4).hex()


def new_request_id() -> str:
    """A request id unique to this process start; `x-request-id` from the caller wins over it."""
    # Cheap: no uuid4 (an os.urandom syscall) per request.
    return f"{_ID_PREFIX}{next(_ids):010x}"


# Ids a caller chooses travel back in headers or metadata and into every log line: short,
# printable ASCII; anything else (bytes that are not UTF-8 included) is replaced by a new id.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._~:/+=@-]{1,128}")


def callers_request_id(given: object) -> str | None:
    """`given` when it is an id a caller may choose, else None."""
    return given if isinstance(given, str) and _VALID_REQUEST_ID.fullmatch(given) else None
