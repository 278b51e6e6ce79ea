"""The lines of a batch's output and error files, in OpenAI's format:

    {"id": "batch_req_...", "custom_id": "doc-17",
     "response": {"status_code": 200, "request_id": "...", "body": {<chat.completion>},
                  "route": {"target": "cloud", "mode": "thinking", "reason": "...", "pool": "..."}},
     "error": null}

A request the engine or Tandem refused is in the error file with its status and error body; a
request the 24 h window left unrun has `response: null` and `error.code: batch_expired`.
`route` is Tandem's: how the line ran (the `x-tandem-route` of an interactive answer).
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from tandem.chat import ChatResult
from tandem.errors import TandemError
from tandem.wire import openai as wire


def request_id() -> str:
    return "batch_req_" + secrets.token_hex(12)


def succeeded(custom_id: str, rid: str, result: ChatResult) -> bytes:
    route = result.route
    response = {
        "status_code": 200,
        "request_id": rid,
        "body": orjson.Fragment(wire.completion_body(result)),
        "route": {
            "target": route.target.value,
            "mode": route.mode.value,
            "reason": route.reason,
            "pool": route.pool,
        },
    }
    return _line(rid, custom_id, response, None)


def failed(custom_id: str, rid: str, err: TandemError) -> bytes:
    response = {"status_code": wire.error_status(err), "request_id": rid, "body": wire.error_body(err)}
    return _line(rid, custom_id, response, None)


def expired(custom_id: str) -> bytes:
    error = {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    }
    return _line(request_id(), custom_id, None, error)


def _line(rid: str, custom_id: str, response: Any, error: Any) -> bytes:
    return orjson.dumps({"id": rid, "custom_id": custom_id, "response": response, "error": error})


def stored(number: int, ok: bool, line: bytes) -> bytes:
    """A result as kept in Redis until the batch is finalized: the line and where it goes."""
    return orjson.dumps({"n": number, "ok": ok, "line": orjson.Fragment(line)})


def assemble(results: dict[str, bytes]) -> tuple[bytes, bytes, int, int]:
    """(output file, error file, completed, failed) from the stored results, in input order."""
    ok: list[tuple[int, bytes]] = []
    bad: list[tuple[int, bytes]] = []
    for raw in results.values():
        item = orjson.loads(raw)
        (ok if item["ok"] else bad).append((item["n"], orjson.dumps(item["line"])))
    ok.sort()
    bad.sort()
    out = b"".join(line + b"\n" for _, line in ok)
    err = b"".join(line + b"\n" for _, line in bad)
    return out, err, len(ok), len(bad)
