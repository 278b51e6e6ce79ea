"""The internal chat types every wire format converts to and from.

OpenAI JSON, Ollama JSON and protobuf are translated at the edges (`tandem/wire/`); the core
(routing, pools, relays) sees only these. They are plain slotted dataclasses: cheap to build
on the hot path and easy to read in a test.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any


class Mode(enum.StrEnum):
    """How the model should answer. AUTO is only ever requested, never decided."""

    AUTO = "auto"
    THINKING = "thinking"
    NON_THINKING = "non_thinking"


class Target(enum.StrEnum):
    EDGE = "edge"
    CLOUD = "cloud"


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON object text, exactly as the model produced it
    type: str = "function"
    index: int = 0


@dataclass(slots=True)
class Message:
    role: str  # system | user | assistant | tool | developer
    content: str = ""
    # Multi-part content as the caller sent it (OpenAI parts); `content` holds the joined text.
    parts: list[dict[str, Any]] | None = None
    images: list[str] | None = None  # base64 images (Ollama)
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str = ""
    name: str = ""


@dataclass(slots=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    strict: bool = False
    type: str = "function"


@dataclass(slots=True)
class ResponseFormat:
    type: str = "text"  # text | json_object | json_schema
    schema: dict[str, Any] | None = None
    name: str = ""
    strict: bool = False


@dataclass(slots=True)
class Sampling:
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    def given(self) -> dict[str, float | int]:
        """The parameters the caller set, by name (the same names on every wire format)."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}

    def is_default(self) -> bool:
        """True when the caller set no sampling parameter (so mode defaults apply)."""
        return not self.given()


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[Message]
    mode: Mode = Mode.AUTO
    # Where `mode` came from when it was set explicitly ("reasoning_effort", "think", "header",
    # "field"); empty when the caller left it to Tandem.
    mode_source: str = ""
    stream: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    response_format: ResponseFormat | None = None
    tools: list[Tool] = field(default_factory=list)
    tool_choice: str | dict[str, Any] | None = None
    n: int = 1
    include_usage: bool = False
    request_id: str = ""
    tenant: str = ""
    user: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    # Counted by the gateway because the engine reported none (`gateway/usage.py`).
    counted: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class RouteDecision:
    """How a request runs, decided before any engine sees it, and returned to the caller."""

    mode: Mode
    target: Target
    reason: str
    estimated_tokens: int
    confidence: float = 1.0
    pool: str = ""
    deployment: str = ""
    # When the classifier chose the mode: its terms in log-odds of thinking (`rules`, `model`,
    # `bias`, `prefer`; thinking when they sum above 0) and the rules' signals that fired.
    contributions: dict[str, float] = field(default_factory=dict)
    signals: tuple[str, ...] = ()

    def header(self) -> str:
        """The `x-tandem-route` value, identical on every face of both processes."""
        return f"target={self.target.value}; mode={self.mode.value}; reason={self.reason}"


@dataclass(slots=True)
class Chunk:
    """One piece of a streamed answer. Text, reasoning and tool calls never share a field."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    # Set on a source's last chunk when the source knows nothing follows it, so that a face
    # can end its reply in the same write as the last batch (one send instead of two or three).
    final: bool = False


def assemble(chunks: Iterable[Chunk]) -> Chunk:
    """The whole answer a stream's chunks add up to: text and reasoning joined; tool-call deltas
    joined per index (id, name and type from the first delta that has them, the arguments'
    pieces in order); the last finish reason and usage."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, ToolCall] = {}
    arguments: dict[int, list[str]] = {}
    out = Chunk()
    for chunk in chunks:
        content.append(chunk.content)
        reasoning.append(chunk.reasoning)
        for delta in chunk.tool_calls:
            call = calls.get(delta.index)
            if call is None:
                call = calls[delta.index] = ToolCall(id="", name="", arguments="", index=delta.index)
                arguments[delta.index] = []
            call.id = call.id or delta.id
            call.name = call.name or delta.name
            call.type = delta.type or call.type
            arguments[delta.index].append(delta.arguments)
        out.finish_reason = chunk.finish_reason or out.finish_reason
        out.usage = chunk.usage or out.usage
    for index, call in calls.items():
        call.arguments = "".join(arguments[index])
    out.content = "".join(content)
    out.reasoning = "".join(reasoning)
    out.tool_calls = [calls[i] for i in sorted(calls)]
    return out


@dataclass(slots=True)
class ChatResult:
    """A whole (non-streamed) answer."""

    id: str
    model: str
    content: str
    reasoning: str
    tool_calls: list[ToolCall]
    finish_reason: str
    usage: Usage
    created: int
    route: RouteDecision
