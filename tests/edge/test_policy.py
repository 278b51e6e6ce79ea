"""The edge's plan for a request, from a snapshot of its parts (pure: no servers)."""

from __future__ import annotations

from typing import Any

from edge_agent.config import Policy
from edge_agent.policy import Action, Situation, plan
from tandem.chat import ChatRequest, Message, Mode, Target
from tandem.errors import UpstreamUnavailable

MODELS = {"qwen3:14b": 4096, "llama3.2:3b": 4096}
THINKERS = {"qwen3:14b"}


def situation(**changes: Any) -> Situation:
    fields: dict[str, Any] = {
        "local_models": MODELS,
        "thinkers": THINKERS,
        "local_up": True,
        "saturated": False,
        "uplink_up": True,
        "uplink_retry_after": 7.0,
    }
    fields.update(changes)
    return Situation(**fields)


def request(mode: Mode = Mode.NON_THINKING, model: str = "qwen3:14b", **changes: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content="hello")], mode=mode, **changes)


def test_non_thinking_work_that_fits_runs_locally() -> None:
    p = plan(request(), situation(), Policy())
    assert p.action is Action.LOCAL and not p.thinking and p.decision.target is Target.EDGE


def test_thinking_work_is_forwarded() -> None:
    p = plan(request(Mode.THINKING), situation(), Policy())
    assert p.action is Action.FORWARD and p.decision.reason == "explicit"


def test_ollama_down_forwards_by_policy() -> None:
    p = plan(request(), situation(local_up=False), Policy(ollama_down="forward"))
    assert p.action is Action.FORWARD and p.decision.reason == "local_unavailable"


def test_ollama_down_rejects_by_policy() -> None:
    p = plan(request(), situation(local_up=False), Policy(ollama_down="reject"))
    assert p.action is Action.REJECT and isinstance(p.error, UpstreamUnavailable)


def test_ollama_refusing_spills_over_whatever_the_policy() -> None:
    s = situation(local_up=False, local_down_reason="saturated")
    p = plan(request(), s, Policy(ollama_down="reject"))
    assert p.action is Action.FORWARD and p.decision.reason == "saturated"


def test_wan_down_degrades_thinking_to_local_thinking() -> None:
    p = plan(request(Mode.THINKING), situation(uplink_up=False), Policy(wan_down="degrade"))
    assert p.action is Action.LOCAL and p.thinking
    assert p.decision.header() == "target=edge; mode=thinking; reason=degraded"


def test_degrading_on_a_model_that_cannot_think_runs_it_without_thinking() -> None:
    p = plan(
        request(Mode.THINKING, model="llama3.2:3b"), situation(uplink_up=False), Policy(wan_down="degrade")
    )
    assert p.action is Action.LOCAL and not p.thinking and p.decision.mode is Mode.NON_THINKING


def test_wan_down_rejects_by_policy_with_a_retry_hint() -> None:
    p = plan(request(Mode.THINKING), situation(uplink_up=False), Policy(wan_down="reject"))
    assert p.action is Action.REJECT and p.error is not None and p.error.retry_after == 7.0


def test_degrade_rejects_a_model_the_box_lacks() -> None:
    p = plan(
        request(Mode.THINKING, model="qwen3-32b"), situation(uplink_up=False), Policy(wan_down="degrade")
    )
    assert p.action is Action.REJECT and p.error is not None and "not served on this box" in p.error.message


def test_degrade_rejects_what_does_not_fit_the_local_context() -> None:
    p = plan(request(Mode.THINKING, max_tokens=8000), situation(uplink_up=False), Policy(wan_down="degrade"))
    assert p.action is Action.REJECT and p.error is not None and "context" in p.error.message


def test_degrade_queues_locally_rather_than_failing_when_saturated() -> None:
    p = plan(request(), situation(uplink_up=False, saturated=True), Policy(wan_down="degrade"))
    assert p.action is Action.LOCAL and p.decision.reason == "degraded"


def test_both_down_is_a_reject() -> None:
    p = plan(request(), situation(uplink_up=False, local_up=False), Policy())
    assert p.action is Action.REJECT and p.error is not None and "gateway is unreachable" in p.error.message
