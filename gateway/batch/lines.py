"""The lines of a batch input file: one `/v1/chat/completions` request per line, checked at
upload so a bad file is refused at once with the line that is wrong.

A line is OpenAI's batch request shape:

    {"custom_id": "doc-17", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

`custom_id` is unique within the file; `body` is a chat-completions body, validated by the same
parser as an interactive request (`tandem.wire.openai.parse_request`).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from tandem.errors import BadRequest, PayloadTooLarge
from tandem.wire import openai as wire

ENDPOINT = "/v1/chat/completions"
MAX_CUSTOM_ID = 512


@dataclass(frozen=True, slots=True)
class Line:
    """One request of a batch: its number in the file (1-based), id and raw chat body."""

    number: int
    custom_id: str
    body: bytes


def parse_lines(data: bytes, *, max_lines: int) -> list[Line]:
    """Every request of a JSONL batch file; raises `BadRequest` naming the first bad line.

    Blank lines are skipped (a trailing newline is not an empty request)."""
    out: list[Line] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if len(out) >= max_lines:
            raise PayloadTooLarge(f"the file has more than {max_lines} requests (batch.max_lines)")
        line = parse_line(number, raw)
        if line.custom_id in seen:
            raise BadRequest(f"line {number}: custom_id {line.custom_id!r} is used twice", param="custom_id")
        seen.add(line.custom_id)
        out.append(line)
    if not out:
        raise BadRequest("the file holds no requests: expected one JSON object per line")
    return out


def parse_line(number: int, raw: bytes) -> Line:
    def bad(problem: str, param: str | None = None) -> BadRequest:
        return BadRequest(f"line {number}: {problem}", param=param)

    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad(f"not valid JSON: {exc}") from None
    if not isinstance(item, dict):
        raise bad("must be a JSON object with custom_id, method, url and body")
    unknown = sorted(set(item) - {"custom_id", "method", "url", "body"})
    if unknown:
        raise bad(f"unknown field {unknown[0]!r}", unknown[0])
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        raise bad(f"custom_id must be a non-empty string of at most {MAX_CUSTOM_ID} characters", "custom_id")
    if item.get("method") != "POST":
        raise bad(f"method must be 'POST', got {item.get('method')!r}", "method")
    if item.get("url") != ENDPOINT:
        raise bad(f"url must be {ENDPOINT!r} (the only endpoint batches run), got {item.get('url')!r}", "url")
    body = item.get("body")
    if not isinstance(body, dict):
        raise bad("body must be a JSON object: a chat-completions request", "body")
    encoded = orjson.dumps(body)
    try:
        wire.parse_request(encoded)
    except BadRequest as exc:
        raise bad(f"body: {exc.message}", f"body.{exc.param}" if exc.param else "body") from None
    return Line(number, custom_id, encoded)
