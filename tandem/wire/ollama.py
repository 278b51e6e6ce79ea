"""The Ollama REST wire format, in one module: `/api/chat` and `/api/generate` bodies as callers
send them, conversion to the internal types, the NDJSON stream lines and final objects as
callers receive them, the bodies sent to a real Ollama and its stream lines read back, and the
mapping of Tandem errors to Ollama's statuses and `{"error": "..."}` bodies.

Used by the edge agent's Ollama-compatible face (toward its callers) and its local engine
(toward the local Ollama). Facts: `/work/shared/protocols.md`, Ollama's `docs/api.md`.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    ModelNotFound,
    PayloadTooLarge,
    TandemError,
)
from tandem.wire.openai import error_status as openai_error_status
from tandem.wire.openai import main_error, passable

W = TypeVar("W", bound=BaseModel)

NDJSON = "application/x-ndjson"
# The field Tandem adds to a final object: the route decision, as in the `x-tandem-route`
# header. Ollama's clients ignore fields they do not know.
ROUTE_FIELD = "tandem_route"

# --- the request as callers send it -------------------------------------------------------


class _Lenient(BaseModel):
    # Ollama ignores fields it does not know; so do we, so newer clients keep working.
    model_config = ConfigDict(extra="ignore")


class WireToolFunction(_Lenient):
    name: str = ""
    arguments: Annotated[dict[str, Any], AfterValidator(passable)] = Field(default_factory=dict)


class WireToolCall(_Lenient):
    id: str = ""
    function: WireToolFunction


class WireMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[WireToolCall] | None = None
    tool_name: str | None = None


class WireFunction(_Lenient):
    name: str = Field(min_length=1, max_length=256)
    description: str = ""
    parameters: Annotated[dict[str, Any], AfterValidator(passable)] = Field(default_factory=dict)


class WireTool(_Lenient):
    type: Literal["function"] = "function"
    function: WireFunction


class WireOptions(_Lenient):
    """The options Tandem maps; others (num_ctx, num_gpu, mirostat, ...) are the engine's.
    Their ranges are `tandem.bounds`, the same on every face (`_NAMES` gives Ollama's names)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    num_predict: int | None = None
    stop: list[str] | None = Field(None, max_length=16)


Think = bool | Literal["low", "medium", "high"]
Format = Literal["", "json"] | Annotated[dict[str, Any], AfterValidator(passable)]


class _WireGenerateBase(_Lenient):
    model: str = Field(min_length=1, max_length=256)
    stream: bool = True  # Ollama streams unless told not to
    think: Think | None = None
    format: Format | None = None
    options: WireOptions | None = None
    keep_alive: str | float | None = None


class WireChatRequest(_WireGenerateBase):
    messages: list[WireMessage] = Field(default_factory=list, max_length=10_000)
    tools: list[WireTool] | None = None


class WireGenerateRequest(_WireGenerateBase):
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    raw: bool = False
    images: list[str] | None = None

    @field_validator("images")
    @classmethod
    def _bounded_images(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(v) > 64:
            raise ValueError("at most 64 images")
        return v


@dataclass(slots=True)
class GenerateRequest:
    """An `/api/generate` call: the same request as a chat (for routing and for the gateway),
    plus what only a local Ollama's generate endpoint understands."""

    chat: ChatRequest
    prompt: str
    system: str = ""
    suffix: str = ""
    template: str = ""
    raw: bool = False
    images: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Residency:
    """An `/api/chat` with no messages or an `/api/generate` with an empty prompt: Ollama loads
    the model and answers at once (`done_reason: "load"`), or, with `keep_alive` 0, unloads
    it (`"unload"`). Ollama's server decides exactly so (server/routes.go)."""

    model: str
    unload: bool


def parse_chat(body: bytes, *, mode_header: str | None = None, max_bytes: int | None = None) -> ChatRequest:
    """Validates an `/api/chat` body; raises `BadRequest` naming the problem, or `PayloadTooLarge`."""
    req = parse_chat_call(body, mode_header=mode_header, max_bytes=max_bytes)
    if isinstance(req, Residency):
        raise BadRequest("messages is required", param="messages")
    return req


def parse_chat_call(
    body: bytes, *, mode_header: str | None = None, max_bytes: int | None = None
) -> ChatRequest | Residency:
    """`parse_chat`, with a load or unload request (no messages) returned as a `Residency`."""
    wire = validate_body(WireChatRequest, body, max_bytes)
    if not wire.messages:
        return _residency(wire)
    messages = [_message(m) for m in wire.messages]
    return _request(wire, messages, mode_header)


def parse_generate(
    body: bytes, *, mode_header: str | None = None, max_bytes: int | None = None
) -> GenerateRequest:
    """Validates an `/api/generate` body; the chat it stands for is a system and a user turn."""
    gen = parse_generate_call(body, mode_header=mode_header, max_bytes=max_bytes)
    if isinstance(gen, Residency):
        raise BadRequest("prompt is required", param="prompt")
    return gen


def parse_generate_call(
    body: bytes, *, mode_header: str | None = None, max_bytes: int | None = None
) -> GenerateRequest | Residency:
    """`parse_generate`, with a load or unload request (empty prompt, images or not: Ollama
    does not look at them then) returned as a `Residency`."""
    wire = validate_body(WireGenerateRequest, body, max_bytes)
    if not wire.prompt:
        return _residency(wire)
    messages = []
    if wire.system:
        messages.append(Message(role="system", content=wire.system))
    messages.append(Message(role="user", content=wire.prompt, images=wire.images or None))
    return GenerateRequest(
        chat=_request(wire, messages, mode_header),
        prompt=wire.prompt,
        system=wire.system,
        suffix=wire.suffix,
        template=wire.template,
        raw=wire.raw,
        images=wire.images or [],
    )


def _residency(wire: _WireGenerateBase) -> Residency:
    try:
        unload = wire.keep_alive is not None and parse_keep_alive(wire.keep_alive, 300.0) == 0
    except ValueError as exc:
        raise BadRequest(f"invalid field 'keep_alive': {exc}", param="keep_alive") from None
    return Residency(model=wire.model, unload=unload)


_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any, default: float) -> float:
    """Seconds a model stays loaded after a request (math.inf = forever), as Ollama reads
    `keep_alive`: a number of seconds or a Go duration string ("5m", "1h30m"); negative means
    forever. Raises `ValueError` with Go's words for what Ollama refuses."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise ValueError("json: cannot unmarshal bool into Go value of type time.Duration")
    if isinstance(value, int | float):
        return math.inf if value < 0 else float(value)
    if not isinstance(value, str):
        raise ValueError("json: cannot unmarshal into Go value of type time.Duration")
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f'time: invalid duration "{value}"')
    if body.replace(".", "", 1).isdigit():
        raise ValueError(f'time: missing unit in duration "{value}"')
    pos, seconds = 0, 0.0
    for match in _DURATION.finditer(body):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body):
        raise ValueError(f'time: invalid duration "{value}"')
    return math.inf if sign < 0 else seconds


def validate_body(kind: type[W], body: bytes, max_bytes: int | None) -> W:
    """`body` as a `kind`; `PayloadTooLarge`, or `BadRequest` naming the field at fault."""
    if max_bytes is not None and len(body) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    if not body.strip():
        raise BadRequest("missing request body")
    try:
        return kind.model_validate_json(body)
    except ValidationError as exc:
        err, loc = main_error(exc)
        if err["type"] == "json_invalid":
            raise BadRequest(f"request body is not valid JSON: {err['msg']}") from None
        loc = loc or "body"
        if err["type"] == "missing":
            raise BadRequest(f"{loc} is required", param=loc) from None
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise BadRequest(f"invalid field '{loc}': {err['msg']}{more}", param=loc) from None


def explicit_mode(think: Think | None, mode_header: str | None) -> tuple[Mode, str]:
    """The mode the caller asked for (`think`, then `x-tandem-mode`) and where it came from."""
    if think is not None:
        return (Mode.NON_THINKING if think is False else Mode.THINKING), "think"
    if mode_header:
        value = mode_header.strip().lower()
        if value in ("thinking", "non_thinking"):
            return Mode(value), "header"
        if value != "auto":
            raise BadRequest(
                f"header x-tandem-mode must be thinking, non_thinking or auto, not {value!r}",
                param="x-tandem-mode",
            )
    return Mode.AUTO, ""


def _message(m: WireMessage) -> Message:
    return Message(
        role=m.role,
        content=m.content or "",
        images=m.images or None,
        reasoning=m.thinking or "",
        tool_calls=[
            ToolCall(
                id=c.id,
                name=c.function.name,
                arguments=orjson.dumps(c.function.arguments).decode(),
                index=i,
            )
            for i, c in enumerate(m.tool_calls or [])
        ],
        name=m.tool_name or "",
    )


def _format(fmt: Format | None) -> ResponseFormat | None:
    if not fmt:
        return None
    if fmt == "json":
        return ResponseFormat(type="json_object")
    assert isinstance(fmt, dict)
    return ResponseFormat(type="json_schema", schema=fmt, name="response")


def _request(wire: _WireGenerateBase, messages: list[Message], mode_header: str | None) -> ChatRequest:
    mode, source = explicit_mode(wire.think, mode_header)
    o = wire.options or WireOptions()
    req = ChatRequest(
        model=wire.model,
        messages=messages,
        mode=mode,
        mode_source=source,
        stream=wire.stream,
        sampling=Sampling(
            temperature=o.temperature,
            top_p=o.top_p,
            top_k=o.top_k,
            min_p=o.min_p,
            presence_penalty=o.presence_penalty,
            frequency_penalty=o.frequency_penalty,
            repetition_penalty=o.repeat_penalty,
            seed=o.seed,
        ),
        # num_predict -1 (unbounded) and -2 (fill the context) both mean "no limit asked".
        max_tokens=o.num_predict if o.num_predict and o.num_predict > 0 else None,
        stop=list(o.stop or []),
        response_format=_format(wire.format),
        tools=[
            Tool(name=t.function.name, description=t.function.description, parameters=t.function.parameters)
            for t in (wire.tools if isinstance(wire, WireChatRequest) else None) or []
        ],
        include_usage=True,
    )
    bounds.check(req, _NAMES)
    return req


# The callers' names for the bounded fields.
_NAMES = {
    **{ours: f"options.{theirs}" for ours, theirs in (
        ("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"), ("min_p", "min_p"),
        ("presence_penalty", "presence_penalty"), ("frequency_penalty", "frequency_penalty"),
        ("repetition_penalty", "repeat_penalty"), ("seed", "seed"),
    )},
    "max_tokens": "options.num_predict",
}  # fmt: skip


# --- the request toward a real Ollama ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What the edge sets on every call to its Ollama, whatever the caller asked."""

    keep_alive: str | float
    num_ctx: int | None
    sampling_defaults: dict[str, float]


_SAMPLING_OPTIONS = (
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("min_p", "min_p"),
    ("presence_penalty", "presence_penalty"),
    ("frequency_penalty", "frequency_penalty"),
    ("repetition_penalty", "repeat_penalty"),
    ("seed", "seed"),
)


def _options(req: ChatRequest, settings: EngineSettings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    # The same num_ctx on every call: a different one makes Ollama reload the model.
    if settings.num_ctx is not None:
        options["num_ctx"] = settings.num_ctx
    if req.sampling.is_default():
        options.update(settings.sampling_defaults)
    else:
        for ours, theirs in _SAMPLING_OPTIONS:
            value = getattr(req.sampling, ours)
            if value is not None:
                options[theirs] = value
    if req.max_tokens is not None:
        options["num_predict"] = req.max_tokens
    if req.stop:
        options["stop"] = req.stop
    return options


def _engine_format(fmt: ResponseFormat | None) -> str | dict[str, Any] | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.schema:
        return fmt.schema
    return "json"


def _image(url: str) -> str | None:
    # Ollama takes bare base64; OpenAI callers send data: URLs (remote URLs cannot be passed on).
    if url.startswith("data:") and "," in url:
        return url.split(",", 1)[1]
    return None


def _engine_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    images = list(m.images or [])
    for part in m.parts or []:
        if part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if isinstance(url, str) and (img := _image(url)) is not None:
                images.append(img)
    if images:
        out["images"] = images
    if m.reasoning:
        out["thinking"] = m.reasoning
    if m.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": c.name, "arguments": _arguments(c.arguments)}} for c in m.tool_calls
        ]
    if m.role == "tool" and m.name:
        out["tool_name"] = m.name
    return out


def _arguments(text: str) -> Any:
    try:
        return orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}


def _common(req: ChatRequest, model: str, thinking: bool, settings: EngineSettings) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "think": thinking,
        "keep_alive": settings.keep_alive,
        "options": _options(req, settings),
    }
    fmt = _engine_format(req.response_format)
    if fmt is not None:
        body["format"] = fmt
    return body


def engine_chat_body(
    req: ChatRequest, *, model: str, thinking: bool, settings: EngineSettings
) -> dict[str, Any]:
    """The body for a real Ollama's `/api/chat`: always streamed, thinking switched explicitly."""
    body = _common(req, model, thinking, settings)
    body["messages"] = [_engine_message(m) for m in req.messages]
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in req.tools
        ]
    return body


def engine_generate_body(
    gen: GenerateRequest, *, model: str, thinking: bool, settings: EngineSettings
) -> dict[str, Any]:
    """The body for a real Ollama's `/api/generate`, keeping what only generate understands."""
    body = _common(gen.chat, model, thinking, settings)
    body["prompt"] = gen.prompt
    for key in ("system", "suffix", "template"):
        if value := getattr(gen, key):
            body[key] = value
    if gen.raw:
        body["raw"] = True
    if gen.images:
        body["images"] = gen.images
    return body


def warm_body(model: str, settings: EngineSettings) -> dict[str, Any]:
    """An `/api/generate` call with no prompt: Ollama loads the model and sets its keep-alive."""
    body: dict[str, Any] = {"model": model, "keep_alive": settings.keep_alive, "stream": False}
    if settings.num_ctx is not None:
        body["options"] = {"num_ctx": settings.num_ctx}
    return body


# --- a real Ollama's stream lines, read back ----------------------------------------------------


class EngineError(Exception):
    """An `{"error": ...}` line in an Ollama stream."""


def engine_chunk(obj: dict[str, Any]) -> Chunk:
    """One NDJSON object of an Ollama `/api/chat` or `/api/generate` stream as a `Chunk`."""
    if "error" in obj:
        raise EngineError(str(obj["error"]))
    message = obj.get("message")
    if isinstance(message, dict):
        content = message.get("content") or ""
        reasoning = message.get("thinking") or ""
        calls = _engine_tool_calls(message.get("tool_calls"))
    else:
        content = obj.get("response") or ""
        reasoning = obj.get("thinking") or ""
        calls = []
    chunk = Chunk(content=content, reasoning=reasoning, tool_calls=calls)
    if obj.get("done"):
        chunk.finish_reason = obj.get("done_reason") or "stop"
        chunk.usage = Usage(
            prompt_tokens=int(obj.get("prompt_eval_count") or 0),
            completion_tokens=int(obj.get("eval_count") or 0),
        )
    return chunk


def _engine_tool_calls(raw: Any) -> list[ToolCall]:
    calls = []
    for i, c in enumerate(raw if isinstance(raw, list) else []):
        fn = c.get("function") or {}
        args = fn.get("arguments")
        calls.append(
            ToolCall(
                id=str(c.get("id") or f"call_{i}"),
                name=str(fn.get("name") or ""),
                arguments=args if isinstance(args, str) else orjson.dumps(args or {}).decode(),
                index=int(fn.get("index", i)),
            )
        )
    return calls


def engine_error_message(raw: bytes) -> str:
    """The message of an Ollama error body (`{"error": "..."}`), or the raw text."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:500].decode("utf-8", "replace")
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])
    return raw[:500].decode("utf-8", "replace")


# --- responses toward callers ------------------------------------------------------------------


def created_at() -> str:
    """Ollama's timestamp form (RFC 3339, UTC)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Timings:
    """Nanosecond durations for a final object, measured where the answer was produced."""

    started_ns: int = field(default_factory=time.perf_counter_ns)
    first_token_ns: int = 0

    def mark_token(self) -> None:
        if not self.first_token_ns:
            self.first_token_ns = time.perf_counter_ns()

    def fields(self) -> dict[str, int]:
        end = time.perf_counter_ns()
        first = self.first_token_ns or end
        return {
            "total_duration": end - self.started_ns,
            "load_duration": 0,
            "prompt_eval_duration": first - self.started_ns,
            "eval_duration": end - first,
        }


def _wire_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "function": {"index": c.index, "name": c.name, "arguments": _arguments(c.arguments)}}
        for c in calls
    ]


def residency_answer(model: str, *, chat: bool, unload: bool) -> bytes:
    """Ollama's answer to a load or unload: one object (whether or not the caller streams)."""
    reason = "unload" if unload else "load"
    if chat:
        body: dict[str, Any] = {
            "model": model,
            "created_at": created_at(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": reason,
            "done": True,
        }
    else:
        body = {
            "model": model,
            "created_at": created_at(),
            "response": "",
            "done": True,
            "done_reason": reason,
        }
    return orjson.dumps(body)


class NdjsonEncoder:
    """Renders internal chunks as Ollama stream lines (chat or generate) for one response."""

    __slots__ = ("_chat", "_model", "timings")

    def __init__(self, model: str, *, chat: bool) -> None:
        self._model = model
        self._chat = chat
        self.timings = Timings()

    def _body(self, content: str, reasoning: str, calls: list[ToolCall]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._model, "created_at": created_at()}
        if self._chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if reasoning:
                message["thinking"] = reasoning
            if calls:
                message["tool_calls"] = _wire_tool_calls(calls)
            body["message"] = message
        else:
            body["response"] = content
            if reasoning:
                body["thinking"] = reasoning
        return body

    def chunk(self, c: Chunk) -> bytes:
        """A `done: false` line, or b"" for a chunk with nothing to show."""
        if not (c.content or c.reasoning or c.tool_calls):
            return b""
        self.timings.mark_token()
        body = self._body(c.content, c.reasoning, c.tool_calls)
        body["done"] = False
        return orjson.dumps(body) + b"\n"

    def keepalive(self) -> bytes:
        """An empty `done: false` line: a silent phase must not look like a dead connection."""
        body = self._body("", "", [])
        body["done"] = False
        return orjson.dumps(body) + b"\n"

    def final(self, finish_reason: str | None, usage: Usage | None, route: str) -> bytes:
        """The `done: true` line with durations (ns), counts, `done_reason` and the route."""
        return orjson.dumps(self._final(self._body("", "", []), finish_reason, usage, route)) + b"\n"

    def whole(self, result: ChatResult) -> bytes:
        """A non-streamed answer: one object with everything."""
        body = self._body(result.content, result.reasoning, result.tool_calls)
        return orjson.dumps(self._final(body, result.finish_reason, result.usage, result.route.header()))

    def _final(
        self, body: dict[str, Any], finish_reason: str | None, usage: Usage | None, route: str
    ) -> dict[str, Any]:
        u = usage or Usage()
        body["done"] = True
        # Ollama says "stop" or "length"; a tool call ends with "stop" too.
        body["done_reason"] = "length" if finish_reason == "length" else "stop"
        body.update(self.timings.fields())
        body["prompt_eval_count"] = u.prompt_tokens
        body["eval_count"] = u.completion_tokens
        body[ROUTE_FIELD] = route
        return body


# --- errors: the one place Tandem errors become Ollama statuses and bodies -------------------

# Ollama answers with the same HTTP statuses as the OpenAI face: one table for both.
error_status = openai_error_status


def error_message(err: TandemError) -> str:
    if isinstance(err, ModelNotFound):
        return f"model '{err.model}' not found"  # Ollama's own words, which its clients show
    return err.message


def error_response(err: TandemError) -> tuple[int, bytes, dict[str, str]]:
    """Status, `{"error": ...}` body and extra headers (Retry-After) for an error before streaming."""
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return error_status(err), orjson.dumps({"error": error_message(err)}), headers


def error_line(err: TandemError) -> bytes:
    """An error after the stream has started: one `{"error": ...}` line (under status 200)."""
    return orjson.dumps({"error": error_message(err)}) + b"\n"
