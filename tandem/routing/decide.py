"""The route decision: mode and target for one request, on the gateway or on an edge box."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tandem.chat import ChatRequest, Mode, RouteDecision, Target
from tandem.routing.classifier import Prefer
from tandem.routing.estimate import prompt_tokens
from tandem.routing.mode import ModeChoice, decide_mode


@dataclass(frozen=True, slots=True)
class EdgeView:
    """What an edge agent knows about its box when it decides."""

    local_models: Mapping[str, int] = field(default_factory=dict)  # served name -> context length
    saturated: bool = False  # the local engine's queue is at its limit: spill over to the cloud


def route(
    req: ChatRequest,
    *,
    edge: EdgeView | None = None,
    context_limit: int | None = None,
    prefer: Prefer = Prefer.BALANCED,
) -> RouteDecision:
    """Decide how `req` runs. Pure and cheap (tens of microseconds for a typical chat).

    On the gateway (`edge` None) everything runs in the cloud; the decision carries the mode and
    `estimated_tokens` (prompt plus `max_tokens`). On an edge, thinking goes up (reason: why it
    is thinking), and so does non-thinking work the box cannot take, checked in this order:
    `model_unavailable`, `context_length` (exact count near the local context), `saturated`.
    `context_limit` is the context of the cloud model: near it the cloud-bound estimate is exact
    too, so a caller can reject an oversized prompt (`ContextTooLong`) without counting again.
    `prefer` is the operator's lean for this pool or edge (thinking, balanced, fast): it moves
    the classifier's threshold, never an explicit choice or a soft switch.
    """
    choice = decide_mode(req, prefer)
    output = req.max_tokens or 0
    if edge is None or choice.mode is Mode.THINKING:
        reason = choice.reason
    elif (local_context := _local_context(edge.local_models, req.model)) is None:
        reason = "model_unavailable"
    else:
        estimated = prompt_tokens(req, limit=_prompt_limit(local_context, output)) + output
        if estimated > local_context:
            return _decision(choice, Target.CLOUD, "context_length", estimated)
        if edge.saturated:
            return _decision(choice, Target.CLOUD, "saturated", estimated)
        return _decision(choice, Target.EDGE, choice.reason, estimated)
    prompt = prompt_tokens(req, limit=_prompt_limit(context_limit, output))
    return _decision(choice, Target.CLOUD, reason, prompt + output)


def _decision(choice: ModeChoice, target: Target, reason: str, tokens: int) -> RouteDecision:
    return RouteDecision(
        mode=choice.mode,
        target=target,
        reason=reason,
        estimated_tokens=tokens,
        confidence=choice.confidence,
        contributions=choice.contributions,
        signals=choice.signals,
    )


def _prompt_limit(context: int | None, output: int) -> int | None:
    """The prompt size at which `context` overflows: where an exact count can change the answer."""
    return None if context is None else max(context - output, 1)


def _local_context(models: Mapping[str, int], name: str) -> int | None:
    """The local context length of `name`, treating Ollama's `x` and `x:latest` as one model."""
    if name in models:
        return models[name]
    base, _, tag = name.partition(":")
    if not tag:
        return models.get(f"{name}:latest")
    return models.get(base) if tag == "latest" else None
