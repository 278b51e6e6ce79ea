"""The gRPC wire format (`tandem.v1`): conversion between protobuf messages and the internal
types, and the one mapping of Tandem errors to gRPC status codes.

Used by the gateway's gRPC face and by the edge agent's uplink client.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from tandem import bounds
from tandem.chat import (
    ChatRequest,
    ChatResult,
    Chunk,
    Message,
    Mode,
    ResponseFormat,
    RouteDecision,
    Sampling,
    Target,
    Tool,
    ToolCall,
    Usage,
)
from tandem.errors import (
    BadRequest,
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
from tandem.v1 import gateway_pb2 as pb

_MODE_TO_PB = {
    Mode.AUTO: pb.MODE_AUTO,
    Mode.THINKING: pb.MODE_THINKING,
    Mode.NON_THINKING: pb.MODE_NON_THINKING,
}
_MODE_FROM_PB = {pb.MODE_UNSPECIFIED: Mode.AUTO, **{v: k for k, v in _MODE_TO_PB.items()}}
_ROLE_FROM_PB = {
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_USER: "user",
    pb.ROLE_ASSISTANT: "assistant",
    pb.ROLE_TOOL: "tool",
    pb.ROLE_DEVELOPER: "developer",
}
_ROLE_TO_PB = {v: k for k, v in _ROLE_FROM_PB.items()}

MAX_MESSAGES = 10_000


def _struct(d: dict[str, Any] | None, field: str) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if d:
        try:
            s.update(d)
        except (ValueError, TypeError, OverflowError) as exc:
            # Struct numbers are doubles: an integer too large for one cannot be carried.
            raise BadRequest(f"invalid field '{field}': cannot be sent on ({exc})", param=field) from None
    return s


def _dict(s: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(s)


# --- requests ------------------------------------------------------------------------------------


def request_from_pb(m: pb.ChatRequest) -> ChatRequest:
    """Converts and validates a gRPC request; raises `BadRequest` naming the problem."""
    if not m.model:
        raise BadRequest("field 'model' is required", param="model")
    if not m.messages:
        raise BadRequest("field 'messages' must hold at least one message", param="messages")
    if len(m.messages) > MAX_MESSAGES:
        raise BadRequest(f"at most {MAX_MESSAGES} messages", param="messages")
    messages = []
    for i, msg in enumerate(m.messages):
        role = _ROLE_FROM_PB.get(msg.role)
        if role is None:
            raise BadRequest(f"messages[{i}].role must be set", param=f"messages.{i}.role")
        parts = None
        if msg.parts:
            parts = []
            for p in msg.parts:
                kind = p.WhichOneof("part")
                if kind == "text":
                    parts.append({"type": "text", "text": p.text})
                elif kind == "image_url":
                    parts.append({"type": "image_url", "image_url": {"url": p.image_url}})
        text = msg.content or "".join(p.get("text", "") for p in parts or [] if p["type"] == "text")
        messages.append(
            Message(
                role=role,
                content=text,
                parts=parts,
                reasoning=msg.reasoning,
                tool_calls=[
                    ToolCall(
                        id=c.id,
                        name=c.name,
                        arguments=c.arguments_json,
                        type=c.type or "function",
                        index=c.index,
                    )
                    for c in msg.tool_calls
                ],
                tool_call_id=msg.tool_call_id,
                name=msg.name,
            )
        )
    mode = _MODE_FROM_PB.get(m.mode, Mode.AUTO)
    source = "field" if mode is not Mode.AUTO else ""
    if mode is Mode.AUTO and m.reasoning_effort:
        effort = m.reasoning_effort.lower()
        if effort not in ("none", "minimal", "low", "medium", "high"):
            raise BadRequest(
                f"reasoning_effort must be none, minimal, low, medium or high, not {effort!r}",
                param="reasoning_effort",
            )
        mode = Mode.NON_THINKING if effort in ("none", "minimal") else Mode.THINKING
        source = "reasoning_effort"
    s = m.sampling
    # proto3 `optional` fields: only those the caller set (HasField), by their shared names.
    sampling = Sampling(**{f.name: getattr(s, f.name) for f in fields(Sampling) if s.HasField(f.name)})
    fmt = None
    if m.HasField("response_format") and m.response_format.type:
        if m.response_format.type not in ("text", "json_object", "json_schema"):
            raise BadRequest(
                "response_format.type must be text, json_object or json_schema", param="response_format.type"
            )
        fmt = ResponseFormat(
            type=m.response_format.type,
            schema=_dict(m.response_format.json_schema) or None,
            name=m.response_format.schema_name,
            strict=m.response_format.strict,
        )
    choice: str | dict[str, Any] | None = None
    if m.HasField("tool_choice"):
        which = m.tool_choice.WhichOneof("choice")
        if which == "mode":
            choice = m.tool_choice.mode
        elif which == "function":
            choice = {"type": "function", "function": {"name": m.tool_choice.function}}
    req = ChatRequest(
        model=m.model,
        messages=messages,
        mode=mode,
        mode_source=source,
        stream=True,
        sampling=sampling,
        max_tokens=m.max_tokens if m.HasField("max_tokens") else None,
        stop=list(m.stop),
        response_format=fmt,
        tools=[
            Tool(name=t.name, description=t.description, parameters=_dict(t.parameters), strict=t.strict)
            for t in m.tools
        ],
        tool_choice=choice,
        n=m.n or 1,  # proto3: 0 is "not set"
        include_usage=True,
        request_id=m.request_id,
        tenant=m.tenant,
        user=m.user,
        metadata=dict(m.metadata),
    )
    bounds.check(req)  # the same bounds the HTTP faces hold requests to
    return req


def request_to_pb(r: ChatRequest) -> pb.ChatRequest:
    """The internal request as the edge agent sends it up to the gateway."""
    m = pb.ChatRequest(
        model=r.model,
        mode=_MODE_TO_PB[r.mode],
        stop=r.stop,
        request_id=r.request_id,
        tenant=r.tenant,
        user=r.user,
        metadata=r.metadata,
        include_usage=True,
    )
    for key, value in r.sampling.given().items():
        setattr(m.sampling, key, value)
    if r.max_tokens is not None:
        m.max_tokens = r.max_tokens
    for msg in r.messages:
        pm = m.messages.add(
            role=_ROLE_TO_PB.get(msg.role, pb.ROLE_USER),
            content=msg.content,
            reasoning=msg.reasoning,
            tool_call_id=msg.tool_call_id,
            name=msg.name,
        )
        for c in msg.tool_calls:
            pm.tool_calls.add(id=c.id, type=c.type, name=c.name, arguments_json=c.arguments, index=c.index)
        for p in msg.parts or []:
            if p.get("type") == "image_url":
                pm.parts.add(image_url=str((p.get("image_url") or {}).get("url", "")))
            elif p.get("type") == "text":
                pm.parts.add(text=str(p.get("text", "")))
        for img in msg.images or []:
            pm.parts.add(image_url=f"data:image/png;base64,{img}")
    for t in r.tools:
        m.tools.add(
            type=t.type,
            name=t.name,
            description=t.description,
            parameters=_struct(t.parameters, "tools.function.parameters"),
            strict=t.strict,
        )
    if isinstance(r.tool_choice, str):
        m.tool_choice.mode = r.tool_choice
    elif isinstance(r.tool_choice, dict):
        m.tool_choice.function = str((r.tool_choice.get("function") or {}).get("name", ""))
    if r.response_format is not None:
        m.response_format.CopyFrom(
            pb.ResponseFormat(
                type=r.response_format.type,
                schema_name=r.response_format.name,
                json_schema=_struct(r.response_format.schema, "response_format.json_schema.schema"),
                strict=r.response_format.strict,
            )
        )
    return m


# --- answers -------------------------------------------------------------------------------------


_TERMS = ("rules", "model", "bias", "prefer")  # RouteDecision.contributions <-> ClassifierTerms


def decision_to_pb(d: RouteDecision) -> pb.RouteDecision:
    m = pb.RouteDecision(
        mode=_MODE_TO_PB[d.mode],
        target=d.target.value,
        reason=d.reason,
        estimated_tokens=d.estimated_tokens,
        confidence=d.confidence,
        pool=d.pool,
        deployment=d.deployment,
    )
    if d.contributions:
        m.classifier.CopyFrom(
            pb.ClassifierTerms(**{t: d.contributions.get(t, 0.0) for t in _TERMS}, signals=d.signals)
        )
    return m


def decision_from_pb(m: pb.RouteDecision) -> RouteDecision:
    terms = m.classifier if m.HasField("classifier") else None
    return RouteDecision(
        mode=_MODE_FROM_PB.get(m.mode, Mode.AUTO),
        target=Target(m.target or "cloud"),
        reason=m.reason,
        estimated_tokens=m.estimated_tokens,
        confidence=m.confidence,
        pool=m.pool,
        deployment=m.deployment,
        contributions={t: getattr(terms, t) for t in _TERMS} if terms else {},
        signals=tuple(terms.signals) if terms else (),
    )


def usage_to_pb(u: Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        reasoning_tokens=u.reasoning_tokens,
        counted=u.counted,
    )


def chunk_to_pb(c: Chunk, *, response_id: str, model: str, created: int) -> pb.ChatChunk:
    m = pb.ChatChunk(
        id=response_id,
        model=model,
        content=c.content,
        reasoning=c.reasoning,
        finish_reason=c.finish_reason or "",
        created=created,
    )
    for t in c.tool_calls:
        m.tool_calls.add(id=t.id, type=t.type, name=t.name, arguments_json=t.arguments, index=t.index)
    if c.usage is not None:
        m.usage.CopyFrom(usage_to_pb(c.usage))
    return m


def chunk_from_pb(m: pb.ChatChunk) -> Chunk:
    return Chunk(
        content=m.content,
        reasoning=m.reasoning,
        tool_calls=[
            ToolCall(
                id=t.id, name=t.name, arguments=t.arguments_json, type=t.type or "function", index=t.index
            )
            for t in m.tool_calls
        ],
        finish_reason=m.finish_reason or None,
        usage=Usage(
            prompt_tokens=m.usage.prompt_tokens,
            completion_tokens=m.usage.completion_tokens,
            reasoning_tokens=m.usage.reasoning_tokens,
            counted=m.usage.counted,
        )
        if m.HasField("usage")
        else None,
    )


def result_chunks(r: ChatResult) -> Chunk:
    return Chunk(
        content=r.content,
        reasoning=r.reasoning,
        tool_calls=r.tool_calls,
        finish_reason=r.finish_reason,
        usage=r.usage,
    )


# --- errors: the one place Tandem errors become gRPC status codes ---------------------------------

_CODES: list[tuple[type[TandemError], grpc.StatusCode]] = [
    (PayloadTooLarge, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedEncoding, grpc.StatusCode.INVALID_ARGUMENT),
    (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UpstreamUnavailable, grpc.StatusCode.UNAVAILABLE),
    (UpstreamTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UpstreamFailed, grpc.StatusCode.UNAVAILABLE),
]


def error_code(err: TandemError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(err, kind):
            return code
    return grpc.StatusCode.INTERNAL


def error_trailers(err: TandemError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that lets clients act on an error: its kind and a retry hint."""
    out = [("x-tandem-error", err.kind)]
    if err.retry_after is not None:
        out.append(("retry-after", str(max(1, round(err.retry_after)))))
    return tuple(out)


_FROM_CODE: dict[grpc.StatusCode, type[TandemError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: BadRequest,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
    grpc.StatusCode.DEADLINE_EXCEEDED: UpstreamTimeout,
}


def error_from_status(code: grpc.StatusCode, details: str, retry_after: float | None = None) -> TandemError:
    """The Tandem error a gRPC status stands for (for the edge agent's uplink)."""
    if code == grpc.StatusCode.NOT_FOUND:
        err: TandemError = ModelNotFound(details)
        err.message = details
        return err
    kind = _FROM_CODE.get(code, UpstreamUnavailable)
    err = kind(details)
    err.retry_after = retry_after
    return err
