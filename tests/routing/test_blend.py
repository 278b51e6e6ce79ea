"""The classifier's decision: rules and n-gram model added as calibrated log-odds, and the
operator's `prefer` moving the threshold, never an explicit choice or a soft switch."""

from __future__ import annotations

import math

import pytest

from tandem.chat import ChatRequest, Mode, Target
from tandem.routing import EdgeView, Prefer, corpus, route
from tandem.routing.classifier import BLEND, MODEL, PREFER_SHIFT, classify
from tandem.routing.rules import score
from tests.routing.conftest import Chat

PROOF = "Prove that the product of two odd integers is odd."
GREETING = "Thanks, that fixed it!"


def borderline() -> ChatRequest:
    """The first training request whose calibrated log-odds lie inside the prefer shifts."""
    for example in corpus.load(corpus.TRAIN):
        if abs(classify(example.request).contributions.calibrated) < 0.9:
            return example.request
    raise AssertionError("no borderline request in the training split")


@pytest.mark.parametrize("text", [PROOF, GREETING, "把这句话翻译成英文：设备运行中禁止打开防护门。"])
def test_the_terms_are_the_blend_of_the_two_opinions(chat: Chat, text: str) -> None:
    req = chat(text)
    terms = classify(req).contributions
    assert terms.rules == pytest.approx(BLEND.rules * score(req))
    assert terms.model == pytest.approx(BLEND.model * MODEL.logit(req))
    assert terms.bias == BLEND.bias and terms.prefer == 0.0
    assert terms.calibrated == pytest.approx(terms.rules + terms.model + terms.bias)


@pytest.mark.parametrize(("text", "mode"), [(PROOF, Mode.THINKING), (GREETING, Mode.NON_THINKING)])
def test_the_confidence_is_the_calibrated_probability_of_the_mode_chosen(
    chat: Chat, text: str, mode: Mode
) -> None:
    verdict = classify(chat(text))
    p_thinking = 1 / (1 + math.exp(-verdict.contributions.calibrated))
    assert verdict.mode is mode
    assert verdict.confidence == pytest.approx(p_thinking if mode is Mode.THINKING else 1 - p_thinking)
    assert verdict.confidence > 0.8


def test_prefer_moves_a_borderline_request_and_leaves_clear_ones() -> None:
    req = borderline()
    assert classify(req, Prefer.THINKING).mode is Mode.THINKING
    assert classify(req, Prefer.FAST).mode is Mode.NON_THINKING
    assert classify(req, Prefer.FAST).contributions.prefer == PREFER_SHIFT[Prefer.FAST] == -1.0


@pytest.mark.parametrize(("text", "mode"), [(PROOF, Mode.THINKING), (GREETING, Mode.NON_THINKING)])
def test_prefer_leaves_a_clear_request_alone(chat: Chat, text: str, mode: Mode) -> None:
    assert {classify(chat(text), p).mode for p in Prefer} == {mode}


def test_the_lean_changes_the_mode_not_the_probability() -> None:
    req = borderline()
    lean_thinking, lean_fast = classify(req, Prefer.THINKING), classify(req, Prefer.FAST)
    # The probability is the same; the mode differs, so each reports its own side's share.
    assert lean_thinking.confidence + lean_fast.confidence == pytest.approx(1.0)


def test_prefer_never_overrides_an_explicit_mode_or_a_soft_switch(chat: Chat) -> None:
    explicit = route(chat(PROOF, mode=Mode.NON_THINKING), prefer=Prefer.THINKING)
    switched = route(chat("Say hi /think"), prefer=Prefer.FAST)
    assert (explicit.mode, explicit.reason, explicit.contributions) == (Mode.NON_THINKING, "explicit", {})
    assert (switched.mode, switched.reason, switched.contributions) == (Mode.THINKING, "soft_switch", {})


def test_the_decision_carries_the_terms_and_the_rules_signals_on_the_edge_too(chat: Chat) -> None:
    decision = route(chat(PROOF), edge=EdgeView({"qwen3:14b": 8192}), prefer=Prefer.FAST)
    assert decision.reason == "classifier" and decision.target is Target.CLOUD
    assert set(decision.contributions) == {"rules", "model", "bias", "prefer"}
    assert decision.contributions["prefer"] == -1.0 and "proof" in decision.signals
