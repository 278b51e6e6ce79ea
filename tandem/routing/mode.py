"""Which mode a request runs in: explicit, then Qwen3 soft switch, then the classifier."""

from __future__ import annotations

from dataclasses import dataclass, field

from tandem.chat import ChatRequest, Mode
from tandem.routing.classifier import Prefer, classify
from tandem.routing.soft_switch import soft_switch


@dataclass(frozen=True, slots=True)
class ModeChoice:
    """A decided mode (never AUTO), why (`explicit`, `soft_switch`, `classifier`) and how sure;
    from the classifier, also the terms of its decision and the rules' signals."""

    mode: Mode
    reason: str
    confidence: float
    contributions: dict[str, float] = field(default_factory=dict)
    signals: tuple[str, ...] = ()


def decide_mode(req: ChatRequest, prefer: Prefer = Prefer.BALANCED) -> ModeChoice:
    """The mode for `req`, by priority.

    1. explicit: the caller set `req.mode` (reasoning_effort, Ollama think, x-tandem-mode, the
       gRPC field; the wire layers already translated them);
    2. soft_switch: `/think` or `/no_think` in the latest user or system message holding one;
    3. classifier: the rules and the n-gram model (`tandem.routing.classifier`), with the
       operator's `prefer` shifting its threshold.
    """
    if req.mode is not Mode.AUTO:
        return ModeChoice(req.mode, "explicit", 1.0)
    switched = soft_switch(req.messages)
    if switched is not None:
        return ModeChoice(switched, "soft_switch", 1.0)
    verdict = classify(req, prefer)
    return ModeChoice(
        verdict.mode, "classifier", verdict.confidence, verdict.contributions.as_dict(), verdict.signals
    )
