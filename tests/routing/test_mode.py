"""Mode priority: explicit beats soft switch beats the classifier."""

from __future__ import annotations

from tandem.chat import Mode
from tandem.routing.mode import decide_mode
from tests.routing.conftest import Chat

HARD = "Prove that there are infinitely many primes, and derive a bound on the gap between them."
EASY = "Translate 'good morning' into French."


def test_the_classifier_decides_when_nothing_else_does(chat: Chat) -> None:
    choice = decide_mode(chat(HARD))
    assert (choice.mode, choice.reason) == (Mode.THINKING, "classifier")
    assert 0.5 <= choice.confidence <= 1.0


def test_a_soft_switch_beats_the_classifier(chat: Chat) -> None:
    choice = decide_mode(chat(f"{HARD} /no_think"))
    assert (choice.mode, choice.reason, choice.confidence) == (Mode.NON_THINKING, "soft_switch", 1.0)


def test_an_explicit_mode_beats_a_soft_switch(chat: Chat) -> None:
    choice = decide_mode(chat(f"{EASY} /no_think", mode=Mode.THINKING, mode_source="header"))
    assert (choice.mode, choice.reason, choice.confidence) == (Mode.THINKING, "explicit", 1.0)


def test_an_explicit_mode_beats_the_classifier(chat: Chat) -> None:
    choice = decide_mode(chat(HARD, mode=Mode.NON_THINKING, mode_source="reasoning_effort"))
    assert (choice.mode, choice.reason) == (Mode.NON_THINKING, "explicit")


def test_auto_is_never_the_decided_mode(chat: Chat) -> None:
    for text in (HARD, EASY, "", "/think", "/no_think"):
        assert decide_mode(chat(text)).mode is not Mode.AUTO
