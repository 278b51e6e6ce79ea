"""The OpenAI chat-completions wire format, in one module: the request as callers send it,
conversion to and from the internal types, the response and stream chunk bodies, and the
mapping of Tandem errors to HTTP statuses and OpenAI error bodies.

Used by the gateway's HTTP face and the edge agent's OpenAI face (both speak it to callers),
and by the relay toward vLLM (which speaks it too, with `reasoning` where callers expect
`reasoning_content`).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from tandem import bounds
from tandem.chat import (
    ChatRequest,
    ChatResult,
    Chunk,
    Message,
    Mode,
    ResponseFormat,
    Sampling,
    Tool,
    ToolCall,
    Usage,
)
from tandem.errors import (
    BadRequest,
    ContextTooLong,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    TandemError,
    Unauthenticated,
    UnsupportedEncoding,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)

# --- the request as callers send it -------------------------------------------------------


class _Lenient(BaseModel):
    # Unknown fields are accepted and ignored, as the OpenAI API and vLLM do; a client that
    # sends a newer field must keep working.
    model_config = ConfigDict(extra="ignore")


def passable(value: Any) -> Any:
    """A free-form JSON value that is passed on as it is must be one the engine body and
    protobuf can carry (`bounds.free_json_problem`)."""
    if problem := bounds.free_json_problem(value):
        raise PydanticCustomError("json", problem)
    return value


class WireFunction(_Lenient):
    name: str = Field(min_length=1, max_length=256)
    description: str = ""
    parameters: Annotated[dict[str, Any], AfterValidator(passable)] = Field(default_factory=dict)
    strict: bool = False


class WireTool(_Lenient):
    type: Literal["function"] = "function"
    function: WireFunction


class WireToolCallFunction(_Lenient):
    name: str = ""
    arguments: str = ""


class WireToolCall(_Lenient):
    id: str = ""
    type: str = "function"
    function: WireToolCallFunction


def _checked_parts(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Content parts are passed on as sent (to vLLM, or over gRPC), so the two kinds Tandem
    reads are held to their shape here; other kinds (audio, files) are the engine's to judge."""
    for i, part in enumerate(parts):
        kind = part.get("type")
        if not isinstance(kind, str):
            raise PydanticCustomError("part", "part {i} needs a string 'type'", {"i": i})
        if kind == "text" and not isinstance(part.get("text"), str):
            raise PydanticCustomError("part", "part {i} (text) needs a string 'text'", {"i": i})
        if kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise PydanticCustomError(
                    "part",
                    "part {i} (image_url) needs 'image_url' as an object with a string 'url'",
                    {"i": i},
                )
    passable(parts)
    return parts


class WireMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[WireToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    @field_validator("content")
    @classmethod
    def _parts(cls, v: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        return _checked_parts(v) if isinstance(v, list) else v


class WireStreamOptions(_Lenient):
    include_usage: bool = False


class WireJsonSchema(_Lenient):
    name: str = ""
    description: str = ""
    schema_: Annotated[dict[str, Any], AfterValidator(passable)] | None = Field(None, alias="schema")
    strict: bool | None = None


class WireResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: WireJsonSchema | None = None


class WireToolChoiceFunction(_Lenient):
    name: str = Field(min_length=1, max_length=256)


class WireToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: WireToolChoiceFunction


class WireChatRequest(_Lenient):
    model: str = Field(min_length=1, max_length=256)
    messages: list[WireMessage] = Field(min_length=1, max_length=10_000)
    stream: bool = False
    stream_options: WireStreamOptions | None = None
    # Ranges (and widths) of the numbers: `tandem.bounds`, shared with the other faces.
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    tools: list[WireTool] | None = None
    tool_choice: str | WireToolChoice | None = None
    response_format: WireResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    # Tandem extension: "auto" | "thinking" | "non_thinking".
    mode: Literal["auto", "thinking", "non_thinking"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        return v


MODE_HEADER = "x-tandem-mode"
ROUTE_HEADER = "x-tandem-route"


def parse_request(
    body: bytes, *, mode_header: str | None = None, max_bytes: int | None = None
) -> ChatRequest:
    """Validates an OpenAI chat-completions body and converts it to a `ChatRequest`.

    Raises `BadRequest` naming the offending field, or `PayloadTooLarge`.
    """
    if max_bytes is not None and len(body) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    if not body.strip():
        raise BadRequest("missing request body")
    try:
        wire = WireChatRequest.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(_validation_message(exc), param=_validation_param(exc)) from None
    return to_internal(wire, mode_header=mode_header)


# Errors Tandem's own validators raise: more telling than a union's other branches' errors.
_OWN_ERRORS = ("part", "json")


def main_error(exc: ValidationError) -> tuple[ErrorDetails, str]:
    """The error to report and the field it names (dotted, without pydantic's union-branch tags
    such as `str` or `list[...]`)."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] in _OWN_ERRORS), errors[0])
    return err, ".".join(str(p) for p in err["loc"] if not _branch_tag(p))


def _branch_tag(part: str | int) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool"))


def _validation_message(exc: ValidationError) -> str:
    err, loc = main_error(exc)
    if err["type"] == "json_invalid":
        return f"request body is not valid JSON: {err['msg']}"
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"invalid field '{loc or 'body'}': {err['msg']}{more}"


def _validation_param(exc: ValidationError) -> str | None:
    return main_error(exc)[1] or None


_EFFORT_MODE = {"none": Mode.NON_THINKING, "minimal": Mode.NON_THINKING}


def explicit_mode(wire: WireChatRequest, mode_header: str | None) -> tuple[Mode, str]:
    """The mode the caller asked for and where it came from; (AUTO, "") when it did not ask."""
    if wire.mode and wire.mode != "auto":
        return Mode(wire.mode), "field"
    if wire.reasoning_effort:
        return _EFFORT_MODE.get(wire.reasoning_effort, Mode.THINKING), "reasoning_effort"
    kwargs = wire.chat_template_kwargs or {}
    if isinstance(kwargs.get("enable_thinking"), bool):
        return (Mode.THINKING if kwargs["enable_thinking"] else Mode.NON_THINKING), "chat_template_kwargs"
    if mode_header:
        value = mode_header.strip().lower()
        if value in ("thinking", "non_thinking"):
            return Mode(value), "header"
        if value != "auto":
            raise BadRequest(
                f"header {MODE_HEADER} must be thinking, non_thinking or auto, not {value!r}",
                param=MODE_HEADER,
            )
    return Mode.AUTO, ""


def _message(m: WireMessage) -> Message:
    parts = None
    if isinstance(m.content, list):
        parts = m.content
        text = "".join(p.get("text", "") for p in m.content if p.get("type") == "text")
    else:
        text = m.content or ""
    calls = [
        ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments, type=c.type, index=i)
        for i, c in enumerate(m.tool_calls or [])
    ]
    return Message(
        role=m.role,
        content=text,
        parts=parts,
        reasoning=m.reasoning_content or "",
        tool_calls=calls,
        tool_call_id=m.tool_call_id or "",
        name=m.name or "",
    )


def to_internal(wire: WireChatRequest, *, mode_header: str | None = None) -> ChatRequest:
    mode, source = explicit_mode(wire, mode_header)
    fmt = None
    if wire.response_format is not None:
        schema = wire.response_format.json_schema or WireJsonSchema()
        fmt = ResponseFormat(
            type=wire.response_format.type,
            schema=schema.schema_,
            name=schema.name,
            strict=bool(schema.strict),
        )
    stop = [wire.stop] if isinstance(wire.stop, str) else list(wire.stop or [])
    choice = wire.tool_choice
    req = ChatRequest(
        model=wire.model,
        messages=[_message(m) for m in wire.messages],
        mode=mode,
        mode_source=source,
        stream=wire.stream,
        sampling=Sampling(
            temperature=wire.temperature,
            top_p=wire.top_p,
            top_k=wire.top_k,
            min_p=wire.min_p,
            presence_penalty=wire.presence_penalty,
            frequency_penalty=wire.frequency_penalty,
            repetition_penalty=wire.repetition_penalty,
            seed=wire.seed,
        ),
        max_tokens=wire.max_completion_tokens if wire.max_completion_tokens is not None else wire.max_tokens,
        stop=stop,
        response_format=fmt,
        tools=[
            Tool(
                name=t.function.name,
                description=t.function.description,
                parameters=t.function.parameters,
                strict=t.function.strict,
            )
            for t in wire.tools or []
        ],
        tool_choice=choice.model_dump() if isinstance(choice, WireToolChoice) else choice,
        n=wire.n,
        include_usage=bool(wire.stream_options and wire.stream_options.include_usage),
        user=wire.user or "",
        metadata=dict(wire.metadata or {}),
    )
    bounds.check(req, _NAMES if wire.max_completion_tokens is not None else None)
    return req


# The caller's name for a bounded field, where it differs from the internal one.
_NAMES = {"max_tokens": "max_completion_tokens"}


# --- the request toward an OpenAI-compatible engine (vLLM) -----------------------------------


def _wire_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.parts if m.parts is not None else m.content}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": c.type, "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def engine_body(
    req: ChatRequest,
    *,
    model: str,
    thinking: bool,
    sampling_defaults: dict[str, float],
    stream: bool,
) -> dict[str, Any]:
    """The body for vLLM's /v1/chat/completions, with thinking switched per request.

    Qwen3's recommended sampling for the mode applies when the caller set no sampling at all.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [_wire_message(m) for m in req.messages],
        "stream": stream,
        # Must be nested: a bare top-level enable_thinking is ignored by vLLM.
        "chat_template_kwargs": {"enable_thinking": thinking},
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    given = req.sampling.given()
    body.update(given or sampling_defaults)
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    if req.stop:
        body["stop"] = req.stop
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                    "strict": t.strict,
                },
            }
            for t in req.tools
        ]
    if req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice
    if req.response_format is not None and req.response_format.type != "text":
        rf: dict[str, Any] = {"type": req.response_format.type}
        if req.response_format.type == "json_schema":
            rf["json_schema"] = {
                "name": req.response_format.name or "response",
                "schema": req.response_format.schema or {},
                "strict": req.response_format.strict,
            }
        body["response_format"] = rf
    if req.user:
        body["user"] = req.user
    return body


# --- responses toward callers ------------------------------------------------------------------


def _wire_tool_calls(calls: list[ToolCall], *, delta: bool) -> list[dict[str, Any]]:
    out = []
    for c in calls:
        item: dict[str, Any] = {
            "id": c.id,
            "type": c.type,
            "function": {"name": c.name, "arguments": c.arguments},
        }
        if delta:
            item["index"] = c.index
        out.append(item)
    return out


def usage_body(u: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }
    if u.reasoning_tokens:
        body["completion_tokens_details"] = {"reasoning_tokens": u.reasoning_tokens}
    if u.counted:  # the engine reported none: Tandem counted it (docs/engines.md says how)
        body["tandem_counted"] = True
    return body


def completion_body(result: ChatResult) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": result.content}
    if result.reasoning:
        message["reasoning_content"] = result.reasoning
    if result.tool_calls:
        message["tool_calls"] = _wire_tool_calls(result.tool_calls, delta=False)
    return orjson.dumps(
        {
            "id": result.id,
            "object": "chat.completion",
            "created": result.created,
            "model": result.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": result.finish_reason}
            ],
            "usage": usage_body(result.usage),
        }
    )


class StreamEncoder:
    """Renders internal chunks as OpenAI SSE events for one response."""

    __slots__ = ("_head", "_id", "_model", "created")

    def __init__(self, response_id: str, model: str, created: int | None = None) -> None:
        self._id = response_id
        self._model = model
        self.created = created or int(time.time())
        # Everything before "choices" is the same for every event of the stream.
        self._head = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
        }

    def role(self) -> bytes:
        return self._event(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )

    def chunk(self, c: Chunk) -> bytes:
        delta: dict[str, Any] = {}
        if c.reasoning:
            delta["reasoning_content"] = c.reasoning
        if c.content or not (c.reasoning or c.tool_calls):
            delta["content"] = c.content
        if c.tool_calls:
            delta["tool_calls"] = _wire_tool_calls(c.tool_calls, delta=True)
        return self._event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": c.finish_reason}])

    def usage(self, u: Usage) -> bytes:
        return b"data: " + orjson.dumps({**self._head, "choices": [], "usage": usage_body(u)}) + b"\n\n"

    def batch(self, chunks: list[Chunk], *, include_usage: bool) -> bytes:
        """The events of a batch of chunks; usage only when the caller asked for it
        (`stream_options.include_usage`)."""
        out = []
        for c in chunks:
            if c.content or c.reasoning or c.tool_calls or c.finish_reason:
                out.append(self.chunk(c))
            if c.usage is not None and include_usage:
                out.append(self.usage(c.usage))
        return b"".join(out)

    def _event(self, choices: list[dict[str, Any]]) -> bytes:
        return b"data: " + orjson.dumps({**self._head, "choices": choices}) + b"\n\n"


DONE = b"data: [DONE]\n\n"
HEARTBEAT = b": keep-alive\n\n"


# --- errors: the one place Tandem errors become HTTP statuses for OpenAI callers --------------

_STATUS: list[tuple[type[TandemError], int]] = [
    (PayloadTooLarge, 413),
    (UnsupportedEncoding, 415),
    (ContextTooLong, 400),
    (BadRequest, 400),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (ModelNotFound, 404),
    (NotFound, 404),
    (RateLimited, 429),
    (UpstreamUnavailable, 503),
    (UpstreamTimeout, 504),
    (UpstreamFailed, 502),
]


def error_status(err: TandemError) -> int:
    for kind, status in _STATUS:
        if isinstance(err, kind):
            return status
    return 500


def error_body(err: TandemError, status: int | None = None) -> dict[str, Any]:
    """OpenAI's error object. `code` is the HTTP status (as vLLM says it), except where OpenAI
    names the error: context_length_exceeded, which clients match on to shorten a chat."""
    param = getattr(err, "param", None)
    code: int | str = "context_length_exceeded" if isinstance(err, ContextTooLong) else error_status(err)
    if status is not None:
        code = status
    return {"error": {"message": err.message, "type": err.kind, "param": param, "code": code}}


def error_response(err: TandemError) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and extra headers (Retry-After) for an error answered before streaming."""
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return error_status(err), orjson.dumps(error_body(err)), headers


def error_event(err: TandemError) -> bytes:
    """An error after the stream has started: a data event with the error, then [DONE]."""
    return b"data: " + orjson.dumps(error_body(err)) + b"\n\n" + DONE
