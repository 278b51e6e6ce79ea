"""Local, forward, degrade or reject: what the edge does with one request.

The route decision itself is the gateway's shared rule (`tandem.routing.decide.route`, with
an `EdgeView` of this box): thinking goes up, and so does non-thinking work for a model the box
lacks, too long for the local context, or beyond the local queue. This module adds what only
the edge has to decide, from a snapshot of its parts (`Situation`):

- the target is this box but its Ollama is down: forward (`reason=local_unavailable`) or
  reject, by `policy.ollama_down`; when Ollama is up but refuses (queue full, model gone) the
  request spills over with that reason whatever the policy;
- the target is the gateway but the uplink is down: degrade (run it here, thinking on when
  the request thinks and the model can; `reason=degraded`) or reject, by `policy.wan_down`.
  Degrading needs a local model that fits the request; otherwise the answer is a 503;
- the target is the gateway and the uplink is up, but the last heartbeat reply said the pool
  it goes to is cold: forward it anyway (the gateway holds it until a replica is ready) or
  degrade as above (`reason=cloud_cold`), by `policy.cloud_cold`. What cannot run here
  (model not on this box, too long for the local context) is forwarded either way.

Pure and cheap: the edge calls it again with an updated snapshot when an attempt fails
before its first token, so each target is tried at most once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Set
from dataclasses import dataclass, replace

from edge_agent.config import Policy
from tandem.chat import ChatRequest, Mode, RouteDecision, Target
from tandem.errors import TandemError, UpstreamUnavailable
from tandem.routing.decide import EdgeView, route

LOCAL_UNAVAILABLE = "local_unavailable"
DEGRADED = "degraded"
CLOUD_COLD = "cloud_cold"


class Action(enum.StrEnum):
    LOCAL = "local"
    FORWARD = "forward"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Situation:
    """What the edge knows about its parts when it decides."""

    local_models: Mapping[str, int]  # names served here (aliases too) -> context length
    thinkers: Set[str]  # the names among them whose model can think
    local_up: bool
    saturated: bool
    uplink_up: bool
    # The gateway's pool for this request was cold at the last heartbeat reply (a fresh one).
    cloud_cold: bool = False
    # Why the local engine cannot take this request: it is down, or it refused this one
    # (`saturated`, `model_unavailable`).
    local_down_reason: str = LOCAL_UNAVAILABLE
    # Why the gateway cannot take it, in words for the caller.
    uplink_down_why: str = "the gateway is unreachable"
    uplink_retry_after: float = 5.0
    local_retry_after: float = 5.0


@dataclass(slots=True)
class Plan:
    action: Action
    decision: RouteDecision
    thinking: bool = False  # LOCAL: switch the local model's thinking on
    error: TandemError | None = None  # REJECT: the answer


def plan(req: ChatRequest, s: Situation, policy: Policy) -> Plan:
    """What to do with `req` now."""
    view = EdgeView(local_models=s.local_models, saturated=s.saturated)
    decision = route(req, edge=view, prefer=policy.prefer)
    if decision.target is Target.EDGE:
        return Plan(Action.LOCAL, decision) if s.local_up else _local_down(decision, s, policy)
    if not s.uplink_up:
        return _wan_down(req, decision, s, policy)
    if s.cloud_cold and policy.cloud_cold == "degrade":
        here = _here(req, decision, s, CLOUD_COLD)
        if isinstance(here, Plan):
            return here
    return Plan(Action.FORWARD, decision)


def _local_down(decision: RouteDecision, s: Situation, policy: Policy) -> Plan:
    engine_down = s.local_down_reason == LOCAL_UNAVAILABLE
    if engine_down and policy.ollama_down == "reject":
        return _reject(decision, "the local Ollama is unavailable", s.local_retry_after)
    if not s.uplink_up:
        why = "is unavailable" if engine_down else f"cannot take it ({s.local_down_reason})"
        return _reject(decision, f"the local Ollama {why} and {s.uplink_down_why}", s.uplink_retry_after)
    decision.target = Target.CLOUD
    decision.reason = s.local_down_reason
    return Plan(Action.FORWARD, decision)


def _wan_down(req: ChatRequest, decision: RouteDecision, s: Situation, policy: Policy) -> Plan:
    if policy.wan_down == "reject":
        return _reject(decision, s.uplink_down_why, s.uplink_retry_after)
    here = _here(req, decision, s, DEGRADED)
    if isinstance(here, Plan):
        return here
    return _reject(decision, f"{s.uplink_down_why} and {here}", s.uplink_retry_after)


def _here(req: ChatRequest, decision: RouteDecision, s: Situation, reason: str) -> Plan | str:
    """`req` run on this box instead of the gateway (thinking on when it thinks and the local
    model can), or why it cannot run here."""
    if not s.local_up:
        return "the local Ollama is unavailable"
    # Would this box take the request if it did not think? The same rules answer (model here,
    # context fits); the local queue is no reason to refuse now: waiting beats failing.
    fit = route(replace(req, mode=Mode.NON_THINKING), edge=EdgeView(local_models=s.local_models))
    if fit.target is not Target.EDGE:
        if fit.reason == "model_unavailable":
            return f"model '{req.model}' is not served on this box"
        return "it needs more context than the local model has"
    can_think = req.model in s.thinkers or f"{req.model}:latest" in s.thinkers
    thinking = decision.mode is Mode.THINKING and can_think
    return Plan(
        Action.LOCAL,
        RouteDecision(
            mode=Mode.THINKING if thinking else Mode.NON_THINKING,
            target=Target.EDGE,
            reason=reason,
            estimated_tokens=fit.estimated_tokens,
            confidence=decision.confidence,
            contributions=decision.contributions,
            signals=decision.signals,
        ),
        thinking=thinking,
    )


def _reject(decision: RouteDecision, why: str, retry_after: float) -> Plan:
    return Plan(
        Action.REJECT, decision, error=UpstreamUnavailable(f"{why}; retry later", retry_after=retry_after)
    )
